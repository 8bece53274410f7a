"""Soft spheres, threshold masks with dilation and soft edges, mask overlap."""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.backend import asarray, to_numpy
from cryolive.masks import (
    FOCUS_OUTSIDE_WARN_FRACTION,
    focus_outside_region,
    focus_outside_solvent,
    fraction_outside,
    mask_volume_fraction,
    soft_edge_from_binary,
    soft_sphere,
    solvent_mask_from_map,
    sphere_at,
    threshold_mask,
)
from cryolive.resolution.filters import lowpass


@pytest.fixture(autouse=True)
def _every_backend(xp_backend):
    """Run each test once per available backend (NumPy; CuPy too when a GPU is usable)."""
    return xp_backend


@pytest.mark.parametrize("n", [48, 33])
def test_soft_sphere_profile(n: int) -> None:
    p, radius, soft = 2.0, 20.0, 8.0  # 10 px radius, 4 px edge
    m = to_numpy(soft_sphere(n, radius, p, soft))
    c = n // 2
    assert m.dtype == np.float32 and m.shape == (n, n, n)
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert m[c, c, c] == 1.0
    assert m[c, c, c + 10] == pytest.approx(1.0)  # at the radius
    assert m[c, c, c + 12] == pytest.approx(0.5, abs=1e-5)  # radius + soft/2
    assert m[c + 12, c, c] == pytest.approx(0.5, abs=1e-5)
    assert m[c, c, c + 11] == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)), abs=1e-5)
    zz, yy, xx = np.mgrid[:n, :n, :n] - c
    r_px = np.sqrt(zz**2 + yy**2 + xx**2)
    assert np.all(m[r_px * p >= radius + soft] == 0.0)
    assert np.all(m[r_px * p <= radius] == 1.0)


def test_sphere_at_offcentre_and_hard() -> None:
    m = to_numpy(sphere_at(32, (10.0, 12.5, 20.0), 3.0, 1.0, 0.0))
    assert m[10, 12, 20] == 1.0 and m[10, 13, 20] == 1.0
    zz, yy, xx = np.mgrid[:32, :32, :32]
    r = np.sqrt((zz - 10) ** 2 + (yy - 12.5) ** 2 + (xx - 20) ** 2)
    np.testing.assert_array_equal(m, (r <= 3.0).astype(np.float32))


def test_threshold_mask_of_gaussian_blob() -> None:
    n, p, sigma_px = 48, 1.5, 4.0
    frac, dilate, soft = 0.3, 3.0, 6.0  # dilate 2 px, soft edge 4 px
    zz, yy, xx = np.mgrid[:n, :n, :n] - n // 2
    r_px = np.sqrt(zz**2 + yy**2 + xx**2)
    blob = np.exp(-(r_px**2) / (2 * sigma_px**2)).astype(np.float32)
    m = to_numpy(threshold_mask(asarray(blob), frac, dilate, soft, p))
    assert m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    r_thr = sigma_px * np.sqrt(-2 * np.log(frac))  # analytic threshold radius (px)
    r_full = r_thr + dilate / p
    full = m >= 1.0 - 1e-6
    r_eff = (3 * full.sum() / (4 * np.pi)) ** (1 / 3)
    assert r_eff == pytest.approx(r_full, abs=1.0)
    assert r_px[full].max() == pytest.approx(r_full, abs=1.0)
    assert r_px[m > 0].max() == pytest.approx(r_full + soft / p, abs=1.0)
    # the edge falls monotonically with the radius along an axis
    c = n // 2
    profile = m[c, c, c:]
    assert np.all(np.diff(profile) <= 1e-6)


def test_threshold_mask_without_dilation_is_the_binary_region() -> None:
    rng = np.random.default_rng(0)
    v = rng.random((16, 16, 16)).astype(np.float32)
    m = to_numpy(threshold_mask(asarray(v), 0.7, 0.0, 0.0, 1.0))
    np.testing.assert_array_equal(m, (v >= 0.7 * v.max()).astype(np.float32))


def test_soft_edge_from_binary_single_voxel() -> None:
    b = np.zeros((21, 21, 21), bool)
    b[10, 10, 10] = True
    m = to_numpy(soft_edge_from_binary(asarray(b), 2.0, 4.0, 0.5))  # 4 px dilation, 8 px edge
    ref = to_numpy(soft_sphere(21, 2.0, 0.5, 4.0))
    np.testing.assert_allclose(m, ref, atol=1e-5)
    empty = to_numpy(soft_edge_from_binary(asarray(np.zeros((8, 8, 8), bool)), 2.0, 2.0, 1.0))
    assert not empty.any()


def test_fraction_outside() -> None:
    n, p = 64, 1.0
    big = soft_sphere(n, 20.5, p, 4.0)  # 0.5 level at 22.5 Å from the centre
    c = n // 2
    on_edge = sphere_at(n, (c, c, c + 22.5), 4.0, p, 0.0)  # centred on the 0.5 surface
    # continuous answer: 1/2 + 3r/(16R) = 0.533 for r = 4, R = 22.5
    assert fraction_outside(on_edge, big) == pytest.approx(0.5, abs=0.05)
    soft_focus = sphere_at(n, (c + 22.5, c, c), 4.0, p, 2.0)
    assert fraction_outside(soft_focus, big) == pytest.approx(0.5, abs=0.05)
    inside = sphere_at(n, (c, c, c + 5), 4.0, p, 2.0)
    outside = sphere_at(n, (c, c, c + 28), 3.0, p, 0.0)
    assert fraction_outside(inside, big) == 0.0
    assert fraction_outside(outside, big) == 1.0


def test_solvent_mask_from_map_is_lowpass_then_threshold() -> None:
    rng = np.random.default_rng(1)
    n, p = 32, 2.0
    blob = to_numpy(soft_sphere(n, 12.0, p, 6.0)) + 0.1 * rng.standard_normal((n, n, n)).astype(np.float32)
    v = asarray(blob.astype(np.float32))
    np.testing.assert_array_equal(to_numpy(solvent_mask_from_map(v, p, 0.3, 4.0, 6.0)),
                                  to_numpy(threshold_mask(v, 0.3, 4.0, 6.0, p)))
    np.testing.assert_array_equal(to_numpy(solvent_mask_from_map(v, p, 0.3, 4.0, 6.0, lowpass_A=10.0)),
                                  to_numpy(threshold_mask(lowpass(v, 10.0, p), 0.3, 4.0, 6.0, p)))


def test_focus_outside_solvent_one_threshold() -> None:
    n = 32
    solvent = np.zeros((n, n, n), np.float32)
    solvent[:, :, :16] = 1.0
    for outside, warned in ((0, False), (10, False), (11, True)):  # 0, 0.99 and 1.09 % of the focus region
        focus = np.zeros((n, n, n), np.float32)
        focus[5:15, 5:15, 5:15] = 1.0  # 1000 voxels inside
        focus[20, :outside, 20] = 0.8  # beyond x = 16
        overlap = focus_outside_solvent(asarray(focus), asarray(solvent))
        assert overlap.fraction == pytest.approx(outside / (1000 + outside))
        assert overlap.reaches_outside is warned
        assert to_numpy(focus_outside_region(asarray(focus), asarray(solvent))).sum() == outside
    assert FOCUS_OUTSIDE_WARN_FRACTION == 0.01


def test_mask_volume_fraction() -> None:
    n = 40
    m = soft_sphere(n, 10.0, 1.0, 0.0)
    expected = (to_numpy(m) > 0).sum() / n**3
    assert mask_volume_fraction(m) == pytest.approx(expected)
    assert mask_volume_fraction(m) == pytest.approx(4 / 3 * np.pi * 10**3 / n**3, rel=0.05)


def test_mask_input_validation() -> None:
    good = asarray(np.ones((8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="cubic"):
        threshold_mask(asarray(np.ones((8, 8, 9), np.float32)), 0.5, 1.0, 1.0, 1.0)
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        threshold_mask(asarray(nan), 0.5, 1.0, 1.0, 1.0)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold_fraction"):
            threshold_mask(good, bad, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="dilate_A"):
        threshold_mask(good, 0.5, -1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="soft_A"):
        threshold_mask(good, 0.5, 1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="soft_A"):
        soft_sphere(8, 2.0, 1.0, -1.0)
    with pytest.raises(ValueError, match="radius_A"):
        soft_sphere(8, -2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="pixel_size"):
        soft_sphere(8, 2.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="maximum"):
        threshold_mask(-good, 0.5, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        fraction_outside(good, asarray(np.ones((9, 9, 9), np.float32)))
    with pytest.raises(ValueError, match="no voxel"):
        fraction_outside(0 * good, good)
    with pytest.raises(ValueError, match="cubic"):
        mask_volume_fraction(asarray(np.ones((4, 4), np.float32)))
