"""Radial Fourier filters: per-shell curves, soft low-pass, FSC weighting."""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.backend import asarray, to_numpy
from cryolive.resolution import fsc_filter, fsc_weight, lowpass, radial_filter


@pytest.fixture(autouse=True)
def _every_backend(xp_backend):
    """Run each test once per available backend (NumPy; CuPy too when a GPU is usable)."""
    return xp_backend


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)


def _power_by_frequency(vol: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    n = vol.shape[0]
    k = np.fft.fftfreq(n) / pixel_size
    s = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return s, np.abs(np.fft.fftn(vol)) ** 2


@pytest.mark.parametrize("pixel_size", [2.0, 1.5])
def test_lowpass_removes_high_and_keeps_low_frequencies(pixel_size: float) -> None:
    n = 64
    v = _noise(n, 1)
    out = to_numpy(lowpass(asarray(v), 10.0, pixel_size))
    assert out.dtype == np.float32 and out.shape == v.shape
    s, p_in = _power_by_frequency(v, pixel_size)
    _, p_out = _power_by_frequency(out, pixel_size)
    high = s > 1 / 8.0
    low = s < 1 / 12.0
    assert p_out[high].sum() < 0.01 * p_in[high].sum()
    assert p_out[low].sum() > 0.95 * p_in[low].sum()


def test_lowpass_edge_is_centred_on_the_cutoff() -> None:
    n, p = 64, 1.0
    v = _noise(n, 2)
    out = to_numpy(lowpass(asarray(v), 8.0, p, edge_width_per_A=0.05))
    s, p_in = _power_by_frequency(v, p)
    _, p_out = _power_by_frequency(out, p)
    at_cut = np.abs(s - 1 / 8.0) < 0.002
    # amplitude factor 0.5 at the cutoff -> power factor 0.25
    assert p_out[at_cut].sum() / p_in[at_cut].sum() == pytest.approx(0.25, abs=0.03)
    hard = to_numpy(lowpass(asarray(v), 8.0, p, edge_width_shells=0))
    _, p_hard = _power_by_frequency(hard, p)
    assert p_hard[s > 1 / 8.0 + 1 / n].sum() < 1e-6 * p_in.sum()


def test_radial_filter_follows_the_curve() -> None:
    n = 32
    v = _noise(n, 3)
    ones = to_numpy(radial_filter(asarray(v), np.ones(n)))  # covers the corners too
    np.testing.assert_allclose(ones, v, atol=1e-4)
    curve = np.linspace(1.0, 0.0, n // 2 + 1)  # 1 at DC, 0 at Nyquist
    out = to_numpy(radial_filter(asarray(v), curve))
    k = np.fft.fftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    expected = np.interp(r, np.arange(curve.size), curve, right=0.0)
    got = np.fft.fftn(out)
    want = np.fft.fftn(v) * expected
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())


def test_fsc_filter_is_radial_filter_with_the_weight() -> None:
    n = 24
    v = asarray(_noise(n, 4))
    curve = np.linspace(1.0, -0.2, n // 2 + 1)
    np.testing.assert_allclose(
        to_numpy(fsc_filter(v, curve)), to_numpy(radial_filter(v, fsc_weight(curve))), atol=1e-6
    )


def test_filters_reject_bad_input() -> None:
    v = asarray(np.zeros((8, 8, 9), np.float32))
    with pytest.raises(ValueError, match="cubic"):
        lowpass(v, 10.0, 1.0)
    cube = asarray(np.zeros((8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="resolution_A"):
        lowpass(cube, -1.0, 1.0)
    with pytest.raises(ValueError, match="edge_width"):
        lowpass(cube, 10.0, 1.0, edge_width_shells=-1)
    with pytest.raises(ValueError, match="NaN"):
        radial_filter(cube, np.array([1.0, np.nan]))
