"""Minibatch (ab-initio) reconstruction: its schedule, working box and running statistics."""

from __future__ import annotations

import numpy as np

from cryolive.image.resample import box_for_resolution as working_box
from cryolive.projection import Reconstructor
from cryolive.refinement.sgd import SGDParams, _schedule


def test_working_box_has_nyquist_finer_than_the_final_resolution():
    for n, apix, res in ((64, 2.0, 15.0), (40, 3.0, 15.0), (256, 1.0, 12.0), (32, 3.5, 8.0)):
        m = working_box(n, apix, res)
        assert m % 2 == 0 and 16 <= m <= n
        assert m == n or 2 * n * apix / m <= res / 1.2 + 1e-9
        assert m == 16 or 2 * n * apix / (m - 2) > res / 1.2  # the smallest such box
    assert working_box(64, 2.0, 15.0) == 22


def test_schedule_anneals_resolution_and_temperature():
    p = SGDParams(steps=100, start_resolution_A=40.0, final_resolution_A=10.0, anneal=0.5, beta_start=0.2)
    res, beta = zip(*[_schedule(p, s) for s in range(1, 101)], strict=True)
    assert res[0] == 40.0 and beta[0] == 0.2
    assert np.all(np.diff(res) <= 0) and np.all(np.diff(beta) >= 0)
    assert res[50] == 10.0 and res[-1] == 10.0 and beta[-1] == 1.0
    # linear in 1 / resolution: halfway through the annealing, 1/res is halfway
    assert abs(1 / res[25] - 0.5 * (1 / 40 + 1 / 10)) < 0.002


def test_blend_is_a_running_average():
    rng = np.random.default_rng(0)
    a, b = Reconstructor(8), Reconstructor(8)
    for r in (a, b):
        r.numerator[:] = rng.normal(size=r.numerator.shape) + 1j * rng.normal(size=r.numerator.shape)
        r.denominator[:] = rng.uniform(size=r.denominator.shape)
        r.n_images = 100
    num0, den0 = a.numerator.copy(), a.denominator.copy()
    a.blend(b, 0.25)
    np.testing.assert_allclose(a.numerator, 0.75 * num0 + 0.25 * b.numerator, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.denominator, 0.75 * den0 + 0.25 * b.denominator, rtol=1e-5, atol=1e-6)
    assert a.n_images == 100
