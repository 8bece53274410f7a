"""The terms of the Gaussian log-likelihood score of particle images against projections (docs/maths.md,
"The score").

For image ``i`` (``rfft2c`` transform ``X_i``, CTF ``C_i``), whitened by the per-shell noise ``sigma^2``, and a
model ``a_i C_i P_r V`` shifted to origin ``t``:

    LL(i, r, t) = a_i cross(i, r, t) - a_i^2 / 2 norm(i, r)
    cross = Re sum_k Y_i(k) e^{-2 pi i k.t} conj(R_r(k)),   Y_i = w C_i X_i,   w = mult / sigma^2(|k|)
    norm  = sum_k w C_i^2 |R_r(k)|^2

summed over the pixels ``k`` of a :class:`~cryolive.alignment.pixels.PixelSet` (the ``|X|^2`` term does not
depend on the pose). ``Y`` and ``w C^2`` (:func:`whitened_terms`) are what the pose search
(:mod:`cryolive.alignment.search`) scores; :class:`Scorer` makes them, and the residual power that re-estimates
``sigma^2``, for one particle stack. Origins in pixels of the box scored, RELION's sign (the particle centre sits
at ``-origin``); frequencies ``kx, ky`` in cycles per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryolive.alignment.noise import add_to_shells, sigma_at
from cryolive.alignment.pixels import PixelSet
from cryolive.backend import xp
from cryolive.image.ctf import CTFParams, ctf_values
from cryolive.projection import Projector


def ctf_at(ctf: CTFParams, pix: PixelSet, pixel_size: float) -> Any:
    """CTF values ``(B, K)`` at the pixels ``pix`` for ``B`` particles' CTF parameters ``ctf``
    (:class:`~cryolive.image.ctf.CTFParams`), on a box of ``pix.n`` pixels of ``pixel_size`` Å."""
    m = xp()
    return ctf_values(ctf, pix.radius / (pix.n * pixel_size), m.arctan2(pix.ky, pix.kx))


def whitened_terms(f: Any, ctf: Any, sigma2: np.ndarray, pix: PixelSet) -> tuple[Any, Any]:
    """Score terms of image transforms ``f`` ``(B, n, n // 2 + 1)`` at the pixels ``pix``: ``Y = w C X`` and
    ``w C^2`` (both ``(B, K)``), with ``w = mult / sigma^2`` and ``ctf`` the CTF values ``(B, K)`` there."""
    x = f.reshape(f.shape[0], -1)[:, pix.index]
    w = pix.mult / sigma_at(sigma2, pix.shell)
    return x * (w * ctf), w * ctf * ctf


def shift_phases(kx: Any, ky: Any, shifts: np.ndarray) -> Any:
    """``exp(-2 pi i (kx tx + ky ty))`` for origins ``shifts (..., 2)`` px and pixels ``kx, ky (K,)``: ``(..., K)``."""
    m = xp()
    s = m.asarray(shifts, dtype=m.float32)
    return m.exp(-2j * np.pi * (s[..., 0:1] * kx + s[..., 1:2] * ky)).astype(m.complex64)


def score_poses(proj: Projector, y: Any, c2w: Any, rotations: np.ndarray, shifts: np.ndarray,
                pix: PixelSet) -> tuple[Any, Any]:
    """``cross (B,)`` and ``norm (B,)`` of one pose per image (rotations ``(B, 3, 3)``, origins ``(B, 2)`` px) from
    the terms ``y, c2w (B, K)`` at the pixels ``pix`` (for the least-squares scale ``cross / norm``, or the
    log-likelihood ``cross - norm / 2`` at scale 1)."""
    m = xp()
    r = proj.slice_pixels(rotations, pix.kx, pix.ky)
    cross = m.real(m.sum(y * shift_phases(pix.kx, pix.ky, shifts) * r.conj(), axis=1))
    norm = m.sum(c2w * (r.real**2 + r.imag**2), axis=1)
    return cross, norm


@dataclass(frozen=True)
class Scorer:
    """The score terms of one particle stack's images on a box of pixels of ``pixel_size`` Å: the particle box, or
    a class box the images are resampled to. ``ctf`` holds every particle's CTF parameters; ``idx`` picks
    particles, and ``sigma2`` (NumPy, per integer shell of the box) is the engine's current noise model."""

    ctf: CTFParams
    pixel_size: float

    def ctf_at(self, idx: np.ndarray, pix: PixelSet) -> Any:
        """CTF values ``(B, K)`` of particles ``idx`` at the pixels ``pix``."""
        return ctf_at(self.ctf.subset(idx), pix, self.pixel_size)

    def whitened(self, f: Any, idx: np.ndarray, pix: PixelSet, sigma2: np.ndarray) -> tuple[Any, Any]:
        """Score terms of particles ``idx``'s transforms ``f (B, n, n // 2 + 1)`` at the pixels ``pix``:
        ``Y = w C X`` and ``w C^2`` (both ``(B, K)``, ``w = mult / sigma^2``)."""
        return whitened_terms(f, self.ctf_at(idx, pix), sigma2, pix)

    def residual_power(self, proj: Projector, f: Any, idx: np.ndarray, rotations: np.ndarray, shifts: np.ndarray,
                       pix: PixelSet, acc: np.ndarray, cnt: np.ndarray, scales: np.ndarray | None = None) -> None:
        """Add the residual power ``|X - a C P V|^2`` per shell of particles ``idx`` (transforms ``f``) at poses
        ``rotations (B, 3, 3)``, ``shifts (B, 2)`` px, over the pixels ``pix``, to ``acc`` and their multiplicities
        to ``cnt`` (NumPy, over shells ``0 .. pix.n // 2``; see :func:`~cryolive.alignment.noise.add_to_shells`).
        ``scales (B,)``: per-particle scales ``a`` (None: 1). Shells beyond ``pix`` get nothing: the caller keeps
        their previous noise estimate."""
        m = xp()
        x = f.reshape(f.shape[0], -1)[:, pix.index]
        c = self.ctf_at(idx, pix)
        if scales is not None:
            c = m.asarray(scales, dtype=m.float32)[:, None] * c
        model = proj.slice_pixels(rotations, pix.kx, pix.ky) * m.conj(shift_phases(pix.kx, pix.ky, shifts))
        add_to_shells(acc, cnt, m.abs(x - c * model) ** 2 * pix.mult, pix.shell, pix.mult)

