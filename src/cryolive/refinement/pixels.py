"""Fourier pixels that enter a score, and the per-shell noise model.

A :class:`PixelSet` lists the ``rfft2`` pixels of a box-``n`` image inside a radius, **sorted by radius**, so the
set for a smaller radius is a prefix of the set for a larger one (the coarse-to-fine search slices ``[:K]``).
Each pixel carries its Friedel multiplicity (2 for ``0 < kx < n/2``, 1 on the ``kx = 0`` and ``kx = n/2``
columns) so half-plane sums equal full-plane sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from cryolive.backend import backend_name, to_numpy, xp
from cryolive.image.ctf import ctf_values


@dataclass(frozen=True)
class PixelSet:
    """``rfft2`` pixels with radius ``<= r_max`` (pixels), sorted by radius (backend arrays, length K)."""

    n: int
    r_max: float
    index: Any  # flat index into (n, n // 2 + 1)
    shell: Any  # integer shell (rounded radius in pixels)
    radius: Any  # radius in pixels (float32)
    mult: Any  # Friedel multiplicity (float32)
    kx: Any  # cycles/pixel
    ky: Any

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def count_within(self, r: float) -> int:
        """How many pixels (a prefix) have radius ``<= r``."""
        return int(np.searchsorted(to_numpy(self.radius), r, side="right"))


@lru_cache(maxsize=32)
def _pixel_set(n: int, r_max: float, backend: str) -> PixelSet:
    # built on the host (stable sort), then moved to the backend once
    ky = np.fft.fftfreq(n).astype(np.float32)[:, None] * np.ones((1, n // 2 + 1), np.float32)
    kx = np.fft.rfftfreq(n).astype(np.float32)[None, :] * np.ones((n, 1), np.float32)
    radius = (np.sqrt(kx * kx + ky * ky) * n).ravel()
    sel = np.nonzero(radius <= r_max + 1e-6)[0]
    sel = sel[np.argsort(radius[sel], kind="stable")]
    kxs, kys = kx.ravel()[sel], ky.ravel()[sel]
    edge = (kxs == 0) | (np.abs(kxs - 0.5) < 1e-7)
    mult = np.where(edge, 1.0, 2.0).astype(np.float32)
    rad = radius[sel].astype(np.float32)
    m = xp()
    return PixelSet(n, float(r_max), m.asarray(sel), m.asarray(np.rint(rad).astype(np.int32)), m.asarray(rad),
                    m.asarray(mult), m.asarray(kxs), m.asarray(kys))


def pixel_set(n: int, r_max: float) -> PixelSet:
    """The pixels of a box-``n`` ``rfft2`` image within ``r_max`` pixels of the origin (cached)."""
    return _pixel_set(int(n), float(min(r_max, n / 2)), backend_name())


def _floored(sigma2: np.ndarray) -> np.ndarray:
    """``sigma2`` floored at 1e-12 of its maximum, so whitening never divides by zero."""
    return np.maximum(sigma2, 1e-12 * max(float(sigma2.max()), 1e-30))


def sigma_at(sigma2: np.ndarray, pix: PixelSet) -> Any:
    """Noise power ``sigma2`` (per integer shell, NumPy) at the pixels of ``pix``: ``(K,)`` float32 (backend),
    floored (see :func:`_floored`)."""
    m = xp()
    s2 = m.asarray(_floored(sigma2), dtype=m.float32)
    return s2[m.clip(pix.shell, 0, len(sigma2) - 1)]


def noise_image(sigma2: np.ndarray, n: int) -> Any:
    """``sigma2`` as an ``rfft2`` image ``(n, n // 2 + 1)``, floored; corners beyond Nyquist take the last shell's
    value."""
    m = xp()
    full = pixel_set(n, n / 2)
    img = m.full(n * (n // 2 + 1), float(_floored(sigma2)[-1]), dtype=m.float32)
    img[full.index] = sigma_at(sigma2, full)
    return img.reshape(n, n // 2 + 1)


def ctf_at(ctf: Any, pix: PixelSet, pixel_size: float) -> Any:
    """CTF values ``(B, K)`` at the pixels ``pix`` for ``B`` particles' CTF parameters ``ctf``
    (:class:`~cryolive.image.ctf.CTFParams`), on a box of ``pix.n`` pixels of ``pixel_size`` Å."""
    m = xp()
    return ctf_values(ctf, pix.radius / (pix.n * pixel_size), m.arctan2(pix.ky, pix.kx))


def whitened_terms(f: Any, ctf: Any, sigma2: np.ndarray, pix: PixelSet) -> tuple[Any, Any]:
    """Score terms of image transforms ``f`` ``(B, n, n // 2 + 1)`` at the pixels ``pix``: ``Y = w C X`` and
    ``w C^2`` (both ``(B, K)``), with ``w = mult / sigma^2`` and ``ctf`` the CTF values ``(B, K)`` there."""
    x = f.reshape(f.shape[0], -1)[:, pix.index]
    w = pix.mult / sigma_at(sigma2, pix)
    return x * (w * ctf), w * ctf * ctf


def shell_power(f_imgs: Any, n: int) -> np.ndarray:
    """Mean ``|X|^2`` per integer shell ``0 .. n // 2`` over images ``(B, n, n // 2 + 1)`` (Friedel-weighted)."""
    ps = pixel_set(n, n / 2)
    m = xp()
    flat = m.abs(f_imgs.reshape(f_imgs.shape[0], -1)[:, ps.index]) ** 2
    w = ps.mult[None] * m.ones_like(flat)
    sums = m.bincount(m.broadcast_to(ps.shell, flat.shape).ravel(), weights=(flat * w).ravel(), minlength=n // 2 + 1)
    cnts = m.bincount(m.broadcast_to(ps.shell, flat.shape).ravel(), weights=w.ravel(), minlength=n // 2 + 1)
    return to_numpy(sums[: n // 2 + 1] / m.maximum(cnts[: n // 2 + 1], 1e-12))


def soft_window(n: int, inner: float = 0.85, outer: float = 0.99) -> Any:
    """Real-space circular window ``(n, n)``: 1 inside ``inner * n/2`` pixels, raised cosine to 0 at ``outer * n/2``.

    cryoSPARC's "window dataset": it removes the box corners, where neighbouring particles and edge artefacts live.
    """
    m = xp()
    c = m.arange(n, dtype=m.float32) - n // 2
    r = m.sqrt(c[:, None] ** 2 + c[None, :] ** 2) / (n / 2)
    t = m.clip((r - inner) / max(outer - inner, 1e-6), 0.0, 1.0)
    return (0.5 * (1 + m.cos(m.pi * t))).astype(m.float32)
