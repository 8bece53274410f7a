"""Guinier B-factor estimation and sharpening."""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.backend import asarray, to_numpy
from cryolive.resolution import choose_bfactor, guinier_bfactor, guinier_curve, sharpen


@pytest.fixture(autouse=True)
def _every_backend(xp_backend):
    """Run each test once per available backend (NumPy; CuPy too when a GPU is usable)."""
    return xp_backend


N, PIXEL, B_TRUE = 64, 1.0, 100.0


def _blurred_white_noise(bfactor: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    v = np.random.default_rng(seed).standard_normal((N, N, N)).astype(np.float32)
    k = np.fft.fftfreq(N) / PIXEL
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    blurred = np.real(np.fft.ifftn(np.fft.fftn(v) * np.exp(-bfactor * s2 / 4))).astype(np.float32)
    return v, blurred


def test_guinier_bfactor_recovers_applied_b() -> None:
    white, blurred = _blurred_white_noise(B_TRUE)
    assert guinier_bfactor(asarray(blurred), PIXEL, 2.5, 10.0) == pytest.approx(B_TRUE, rel=0.10)
    assert abs(guinier_bfactor(asarray(white), PIXEL, 2.5, 10.0)) < 10.0


def test_choose_bfactor_fits_takes_the_given_value_or_says_why_not() -> None:
    _white, blurred = _blurred_white_noise(B_TRUE)
    b, line = choose_bfactor(asarray(blurred), PIXEL, 3.0)
    assert b == pytest.approx(B_TRUE, rel=0.10) and line.startswith("Guinier B-factor")
    assert choose_bfactor(asarray(blurred), PIXEL, 3.0, given=-50.0) == (-50.0, "B-factor -50.0 Å^2 (given)")
    b, line = choose_bfactor(asarray(blurred), PIXEL, 12.0)  # too coarse for a fit beyond 10 Å
    assert b == 0.0 and "coarser than 8 Å" in line and line.endswith("B = 0")


def test_guinier_curve_is_a_line_of_slope_minus_b_over_4() -> None:
    _, blurred = _blurred_white_noise(B_TRUE, seed=1)
    s2, ln_amp = guinier_curve(asarray(blurred), PIXEL)
    assert s2.shape == ln_amp.shape == (N // 2,)
    assert np.all(np.diff(s2) > 0)
    sel = (s2 > 1 / 10.0**2) & (s2 < 1 / 2.5**2)
    slope = np.polyfit(s2[sel], ln_amp[sel], 1)[0]
    assert -4 * slope == pytest.approx(B_TRUE, rel=0.10)


def test_sharpen_undoes_the_blur() -> None:
    white, blurred = _blurred_white_noise(B_TRUE, seed=2)
    res = 2.5
    sharp = sharpen(asarray(blurred), PIXEL, B_TRUE, res)
    assert sharp.dtype == np.float32
    # flat spectrum again between 10 Å and 3 Å
    assert abs(guinier_bfactor(sharp, PIXEL, 3.0, 10.0)) < 5.0
    s2, ln_w = guinier_curve(asarray(white), PIXEL)
    _, ln_s = guinier_curve(sharp, PIXEL)
    band = (s2 > 1 / 10.0**2) & (s2 < 1 / 3.0**2)
    np.testing.assert_allclose(ln_s[band], ln_w[band], atol=0.05)
    # and nothing beyond the low-pass edge
    beyond = s2 > (1 / res + 3 / (N * PIXEL)) ** 2
    assert np.all(ln_s[beyond] < ln_w[beyond] - 10)


def test_sharpen_with_fsc_weight() -> None:
    white, blurred = _blurred_white_noise(B_TRUE, seed=3)
    curve = np.full(N // 2 + 1, 0.5)
    sharp = to_numpy(sharpen(asarray(blurred), PIXEL, B_TRUE, 2.5, fsc_curve=curve))
    plain = to_numpy(sharpen(asarray(blurred), PIXEL, B_TRUE, 2.5))
    np.testing.assert_allclose(sharp, plain * np.sqrt(2 * 0.5 / 1.5), atol=1e-3 * np.abs(plain).max())


def test_guinier_rejects_bad_ranges() -> None:
    _, blurred = _blurred_white_noise(B_TRUE)
    with pytest.raises(ValueError, match="finer"):
        guinier_bfactor(asarray(blurred), PIXEL, 10.0, 5.0)
    with pytest.raises(ValueError, match="shells"):
        guinier_bfactor(asarray(blurred), PIXEL, 9.5, 10.0)
