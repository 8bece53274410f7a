"""The per-shell noise model that whitens a score: ``sigma^2`` per integer Fourier shell, where it is read (at a
pixel set, as an ``rfft2`` image) and how it is estimated (power of images, or of residuals, summed per shell).

``sigma2`` is a NumPy ``float64`` array over the integer shells ``0 .. n // 2`` of a box of ``n`` pixels (the
power of one Fourier pixel of an image in the units of its ``rfft2c`` transform); shells are rounded radii in
pixels. Sums over a half plane count every pixel with its Friedel multiplicity (see
:class:`~cryolive.alignment.pixels.PixelSet`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryolive.alignment.pixels import pixel_set
from cryolive.backend import to_numpy, xp


def _floored(sigma2: np.ndarray) -> np.ndarray:
    """``sigma2`` floored at 1e-12 of its maximum, so whitening never divides by zero."""
    return np.maximum(sigma2, 1e-12 * max(float(sigma2.max()), 1e-30))


def sigma_at(sigma2: np.ndarray, shells: Any) -> Any:
    """Noise power ``sigma2`` (per integer shell, NumPy) at integer shell indices ``shells`` (backend array of any
    shape, e.g. :attr:`PixelSet.shell <cryolive.alignment.pixels.PixelSet>` ``(K,)``): float32 of the same shape,
    floored (see :func:`_floored`); shells beyond the last take the last one's value."""
    m = xp()
    s2 = m.asarray(_floored(sigma2), dtype=m.float32)
    return s2[m.clip(shells, 0, len(sigma2) - 1)]


def noise_image(sigma2: np.ndarray, n: int) -> Any:
    """``sigma2`` as an ``rfft2`` image ``(n, n // 2 + 1)``, floored; corners beyond Nyquist take the last shell's
    value."""
    m = xp()
    full = pixel_set(n, n / 2)
    img = m.full(n * (n // 2 + 1), float(_floored(sigma2)[-1]), dtype=m.float32)
    img[full.index] = sigma_at(sigma2, full.shell)
    return img.reshape(n, n // 2 + 1)


def shell_power(f_imgs: Any, n: int) -> np.ndarray:
    """Mean ``|X|^2`` per integer shell ``0 .. n // 2`` over images ``(B, n, n // 2 + 1)`` (Friedel-weighted)."""
    ps = pixel_set(n, n / 2)
    m = xp()
    flat = m.abs(f_imgs.reshape(f_imgs.shape[0], -1)[:, ps.index]) ** 2
    w = ps.mult[None] * m.ones_like(flat)
    sums = m.bincount(m.broadcast_to(ps.shell, flat.shape).ravel(), weights=(flat * w).ravel(), minlength=n // 2 + 1)
    cnts = m.bincount(m.broadcast_to(ps.shell, flat.shape).ravel(), weights=w.ravel(), minlength=n // 2 + 1)
    return to_numpy(sums[: n // 2 + 1] / m.maximum(cnts[: n // 2 + 1], 1e-12))


def add_to_shells(acc: np.ndarray, cnt: np.ndarray, power: Any, shells: Any, mult: Any) -> None:
    """Add ``power (B, P)`` (already multiplicity-weighted), summed per integer shell, to ``acc`` and the pixels'
    multiplicities ``mult (P,)`` to ``cnt`` (both NumPy ``float64`` over shells ``0 .. len(acc) - 1``, in place);
    ``shells (P,)`` is each pixel's shell. ``acc / cnt`` is then the mean power per shell (the next ``sigma2``
    from residuals); pixels in shells past ``len(acc) - 1`` are left out."""
    m = xp()
    nsh = len(acc)
    idx = m.broadcast_to(shells, power.shape).ravel()
    acc += to_numpy(m.bincount(idx, weights=power.ravel(), minlength=nsh)[:nsh])
    cnt += to_numpy(m.bincount(idx, weights=m.broadcast_to(mult, power.shape).ravel(), minlength=nsh)[:nsh])
