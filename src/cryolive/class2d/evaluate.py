"""Compare class averages with known projections (tests, benchmarks): best correlation over in-plane rotations
and origins, both images low-passed to a common resolution and masked by the same soft disc. NumPy (CPU) only."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates


def _lowpass(img: np.ndarray, pixel_size: float, resolution_A: float | None) -> np.ndarray:
    """Images ``(..., n, n)`` with frequencies beyond ``resolution_A`` removed (raised-cosine edge of 2 shells)."""
    if not resolution_A:
        return img
    n = img.shape[-1]
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    r = np.sqrt(kx**2 + ky**2) * n
    r0 = n * pixel_size / resolution_A
    filt = np.clip(0.5 + 0.5 * np.cos(np.pi * np.clip((r - r0 + 1) / 2, 0, 1)), 0, 1)
    return np.fft.irfft2(np.fft.rfft2(img) * filt, s=(n, n)).astype(np.float32)


def _disc(n: int, radius_px: float) -> np.ndarray:
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    return np.clip(0.5 + 0.5 * np.cos(np.pi * np.clip((r - radius_px) / 4.0, 0, 1)), 0, 1)


def rotate_image(img: np.ndarray, psi_deg: float) -> np.ndarray:
    """``img(R(psi)^T x)``: the image turned as :func:`cryolive.class2d.classify2d` turns a class by ``psi``
    (``R = [[cos, sin], [-sin, cos]]`` on (x, y)); cubic spline, zero outside."""
    n = img.shape[-1]
    c, s = np.cos(np.radians(psi_deg)), np.sin(np.radians(psi_deg))
    y, x = np.mgrid[:n, :n] - n // 2
    sx = c * x - s * y  # R^T (x, y)
    sy = s * x + c * y
    return map_coordinates(img, [sy + n // 2, sx + n // 2], order=3, mode="constant").astype(np.float32)


def aligned_correlation(average: np.ndarray, reference: np.ndarray, pixel_size: float,
                        resolution_A: float | None = None, mask_radius_px: float | None = None,
                        angle_step_deg: float = 2.0, max_shift_px: float | None = None
                        ) -> tuple[float, float, tuple[int, int]]:
    """Best normalised correlation of ``average`` with ``reference`` turned by psi and shifted.

    Both ``(n, n)`` images are low-passed to ``resolution_A`` (None: not filtered) and multiplied by a soft disc
    (``mask_radius_px``, default 0.45 box); the reference is turned by every ``angle_step_deg`` and moved by every
    integer shift up to ``max_shift_px`` (default 0.15 box). Returns ``(correlation, psi_deg, (dx, dy))`` where
    ``average ~ shift(rotate_image(reference, psi), (dx, dy))``.
    """
    n = average.shape[-1]
    disc = _disc(n, mask_radius_px if mask_radius_px is not None else 0.45 * n)
    smax = int(max_shift_px if max_shift_px is not None else round(0.15 * n))
    a = _lowpass(np.asarray(average, np.float64), pixel_size, resolution_A) * disc
    a = (a - a[disc > 0.5].mean()) * disc
    fa = np.fft.rfft2(a)
    na = np.sqrt((a * a).sum())
    dy, dx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    dy = np.where(dy > n // 2, dy - n, dy)
    dx = np.where(dx > n // 2, dx - n, dx)
    window = dx**2 + dy**2 <= smax**2
    ref = _lowpass(np.asarray(reference, np.float64), pixel_size, resolution_A)
    best = (-1.0, 0.0, (0, 0))
    for psi in np.arange(0.0, 360.0, angle_step_deg):
        r = rotate_image(ref, psi) * disc
        r = (r - r[disc > 0.5].mean()) * disc
        nr = np.sqrt((r * r).sum())
        if na == 0 or nr == 0:
            continue
        cc = np.fft.irfft2(fa * np.conj(np.fft.rfft2(r)), s=(n, n)) / (na * nr)  # cc[t] = sum a(x) r(x - t)
        cc = np.where(window, cc, -np.inf)
        i = int(np.argmax(cc))
        if cc.flat[i] > best[0]:
            best = (float(cc.flat[i]), float(psi), (int(dx.flat[i]), int(dy.flat[i])))
    return best


def correlation_matrix(averages: np.ndarray, references: np.ndarray, pixel_size: float,
                       resolution_A: np.ndarray | float | None = None, **kwargs: object) -> np.ndarray:
    """``(K, V)`` best aligned correlations of every average with every reference (see
    :func:`aligned_correlation`); ``resolution_A`` per average (array), one value, or None."""
    k = len(averages)
    res = np.broadcast_to(np.asarray(resolution_A if resolution_A is not None else np.nan, float), (k,))
    out = np.zeros((k, len(references)))
    for i, avg in enumerate(averages):
        r = None if not np.isfinite(res[i]) else float(res[i])
        for j, ref in enumerate(references):
            out[i, j] = aligned_correlation(avg, ref, pixel_size, r, **kwargs)[0]  # type: ignore[arg-type]
    return out
