"""Pieces of 3D classification with answers known in advance: mask composition, warnings, ARI, posteriors,
Fourier resampling (projection-slice consistency across boxes)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cryolive.backend import to_numpy
from cryolive.classification import (
    adjusted_rand_index,
    compose_class_volume,
    effective_classes,
    mask_warnings,
    posteriors_from_scores,
)
from cryolive.image.fourier import rfft2c
from cryolive.image.resample import resample_rfft2, resample_volume
from cryolive.masks import sphere_at
from cryolive.projection import Projector
from cryolive.resolution.filters import lowpass
from cryolive.rotations.euler import euler_to_matrix
from cryolive.simulator.phantom import make_phantom, render


def test_composition_uses_consensus_outside_focus_and_clips_to_solvent():
    n = 16
    vk, cons = np.full((n,) * 3, 2.0, np.float32), np.full((n,) * 3, 5.0, np.float32)
    solvent = np.zeros((n,) * 3, np.float32)
    solvent[2:14] = 1.0
    focus = np.zeros((n,) * 3, np.float32)
    focus[:, :8] = 1.0
    out = to_numpy(compose_class_volume(vk, cons, solvent, focus))
    assert out[5, 2, 5] == 2.0  # inside F and S: the class
    assert out[5, 12, 5] == 5.0  # inside S, outside F: the consensus
    assert out[0, 2, 5] == 0.0 and out[15, 12, 5] == 0.0  # outside S: nothing
    half = 0.5 * focus + 0.0
    assert to_numpy(compose_class_volume(vk, cons, solvent, half))[5, 2, 5] == pytest.approx(3.5)
    assert np.array_equal(to_numpy(compose_class_volume(vk, cons, solvent)), vk * solvent)


def test_focus_only_and_focus_outside_solvent_warnings():
    n, apix = 32, 2.0
    c = n // 2
    solvent = to_numpy(sphere_at(n, (c, c, c), 16.0, apix, 0.0))
    inside = to_numpy(sphere_at(n, (c, c, c), 8.0, apix, 0.0))
    assert mask_warnings(True, inside, solvent) == []
    only = mask_warnings(False, inside, solvent)
    assert len(only) == 1 and "only a focus mask" in only[0]
    # a focus sphere centred on the solvent mask's flat edge (x = 15.5 px): half of it lies outside
    half_box = np.zeros((n,) * 3, np.float32)
    half_box[:, :, : c] = 1.0
    edge = to_numpy(sphere_at(n, (c, c, c - 0.5), 10.0, apix, 0.0))
    (msg,) = mask_warnings(True, edge, half_box)
    pct = float(re.search(r"(\d+) %", msg).group(1))
    assert 48 <= pct <= 52, msg


def test_adjusted_rand_index_known_values():
    assert adjusted_rand_index([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 9, 9]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)  # scikit-learn's example
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 20000), rng.integers(0, 3, 20000)
    assert abs(adjusted_rand_index(a, b)) < 0.01
    with pytest.raises(ValueError):
        adjusted_rand_index([0, 1], [0, 1, 1])


def test_posteriors_temperature_and_prior():
    ll = np.array([[0.0, 2.0], [10.0, 0.0]])
    flat = posteriors_from_scores(ll, np.log([0.5, 0.5]), beta=1.0)
    assert flat[0, 1] == pytest.approx(np.exp(2) / (1 + np.exp(2)))
    assert np.allclose(flat.sum(1), 1)
    hot = posteriors_from_scores(ll, np.log([0.5, 0.5]), beta=0.5)
    assert hot[0, 1] == pytest.approx(np.exp(1) / (1 + np.exp(1)))  # similarity 0.5 halves the contrast
    prior = posteriors_from_scores(np.zeros((1, 2)), np.log([0.2, 0.8]), beta=1.0)
    assert prior[0] == pytest.approx([0.2, 0.8])
    assert effective_classes(np.array([[1.0, 0.0], [0.5, 0.5]])) == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("m", [24, 48])
def test_resampled_projection_matches_projection_of_resampled_map(m):
    """The projection-slice theorem holds across boxes: resampling a particle image's transform to box ``m``
    equals projecting the map resampled to box ``m`` (up to interpolation error)."""
    n = 32
    vol = render(make_phantom(n, 3.0, seed=2), n, 3.0)
    rot = euler_to_matrix(np.array([0.3]), np.array([1.1]), np.array([-0.7]))
    img = Projector(vol).project_real(rot)
    f = resample_rfft2(rfft2c(img), n, m)
    g = Projector(resample_volume(vol, m)).project(rot)
    k = min(n, m) // 2 - 2  # compare inside both boxes' Nyquist
    ky = np.fft.fftfreq(m)[:, None] * m
    kx = np.fft.rfftfreq(m)[None, :] * m
    sel = np.hypot(kx, ky) < k
    a, b = to_numpy(f)[0][sel], to_numpy(g)[0][sel]
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.03
    if m > n:  # padding then cropping returns the map exactly, but for its Nyquist planes (dropped)
        smooth = to_numpy(lowpass(vol, 4 * 3.0, 3.0))
        back = to_numpy(resample_volume(resample_volume(smooth, m), n))
        assert np.abs(back - smooth).max() < 1e-3 * np.abs(smooth).max()
