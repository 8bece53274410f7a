"""2D classification against the truth: a phantom at 4 distinct views (box 40, 3 Å/px, SNR 0.1, random in-plane
angles, origins up to 3 px, CTF 1-2.5 µm) with 20 % junk, K = 8 classes.

Every view must come out as a class whose average correlates >= 0.9 with the true CTF-free projection after the
best in-plane rotation and shift (both low-passed to the class's own resolution estimate and masked by the same
disc); the classes that match a view must hold >= 95 % of the good particles and <= 10 % of the junk; the in-plane
angles of the good particles must agree with the truth (up to one rotation per class) within a few fine steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.class2d import Class2DParams, classify2d
from cryolive.class2d.evaluate import correlation_matrix
from cryolive.io import read_star
from cryolive.jobs import drain

BOX, APIX, K = 40, 3.0, 8


@pytest.fixture(scope="module")
def run(tmp_path_factory, views_maker):
    star, truth = views_maker(tmp_path_factory.mktemp("views") / "data", BOX, APIX, 4, 100, 0.1)
    steps, result = drain(classify2d(read_star(star), Class2DParams(k=K, max_iter=8, seed=0)))
    corr = correlation_matrix(result.averages, truth.projections, APIX, result.resolution_A)
    return truth, steps, result, corr


def test_every_view_is_a_class(run):
    truth, _, result, corr = run
    best = corr.max(axis=0)
    assert (best >= 0.9).all(), f"best correlation per view {np.round(best, 3)}"
    # the matching classes reach better than 15 Å (Nyquist is 6 Å)
    matched = corr.argmax(axis=0)
    assert (result.resolution_A[matched] < 15.0).all(), result.resolution_A[matched]


def test_selecting_view_classes_keeps_good_drops_junk(run):
    truth, _, result, corr = run
    selected = np.nonzero(corr.max(axis=1) >= 0.9)[0]
    chosen = np.isin(result.assignments, selected)
    good = truth.view >= 0
    kept_good = chosen[good].mean()
    kept_junk = chosen[~good].mean()
    assert kept_good >= 0.95, kept_good
    assert kept_junk <= 0.10, kept_junk
    # and every selected class holds one view: its particles are >= 95 % of that view
    for k in selected:
        views = truth.view[(result.assignments == k) & good]
        assert np.bincount(views).max() >= 0.95 * len(views)


def test_in_plane_angles_match_the_truth(run):
    truth, _, result, corr = run
    errors = []
    for k in np.nonzero(corr.max(axis=1) >= 0.9)[0]:
        sel = (result.assignments == k) & (truth.view == corr[k].argmax())
        d = np.radians(result.psi_deg[sel] - truth.psi_deg[sel])
        offset = np.angle(np.exp(1j * d).mean())  # the class's own in-plane orientation
        errors.append(np.degrees(np.abs(np.angle(np.exp(1j * (d - offset))))))
    err = np.concatenate(errors)
    assert np.median(err) <= 4.0, np.median(err)  # fine step 5 deg
    assert np.percentile(err, 95) <= 10.0, np.percentile(err, 95)


def test_iterations_stream_consistent_numbers(run):
    truth, steps, result, _ = run
    n = len(truth.view)
    assert [s.iteration for s in steps] == list(range(1, 9))
    for s in steps:
        assert s.averages.shape == (K, BOX, BOX) and s.averages.dtype == np.float32
        assert s.sizes.sum() == n and 0.0 <= s.changed_fraction <= 1.0
        assert 0.0 < s.mean_max_prob <= 1.0 and s.seconds > 0
    assert steps[-1].changed_fraction < 0.02
    assert steps[-1].mean_max_prob > steps[0].mean_max_prob
    assert result.assignments.shape == (n,) and result.assignments.min() >= 0 and result.assignments.max() < K
    assert np.array_equal(np.bincount(result.assignments, minlength=K), result.sizes)
    assert result.shifts_A.shape == (n, 2) and np.abs(result.shifts_A).max() <= 4 * APIX + 1e-6
    assert ((result.psi_deg > -180) & (result.psi_deg <= 180)).all()
