"""Which Fourier pixels enter a score: pixel sets sorted by radius, and the real-space window of the images scored.

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


#: soft edge (pixels) of the circle a given particle diameter puts around the particle images (RELION's default)
MASK_EDGE_PX = 5.0
#: the help of the ``--particle-diameter`` parameter of refinement and classification (:func:`scoring_window`)
PARTICLE_DIAMETER_HELP = ("mask diameter (Å): images are compared inside a soft circle of this diameter, as "
                          "RELION's --particle_diameter (default: a window at 85-99 % of the box)")


def scoring_window(n: int, pixel_size: float, diameter_A: float | None, inner: float = 0.85,
                   outer: float = 0.99) -> Any:
    """The real-space window ``(n, n)`` particle images are multiplied by before they are scored: with a particle
    ``diameter_A`` (Å), 1 inside that diameter and a raised cosine over :data:`MASK_EDGE_PX` pixels outside it
    (RELION's particle mask, ``--particle_diameter``), never wider than the default; else cryoSPARC's window from
    ``inner`` to ``outer`` of the half box (:func:`soft_window`). ``pixel_size`` in Å."""
    if diameter_A is not None:
        radius = diameter_A / (n * pixel_size)  # fraction of the half box
        if radius < inner:
            inner, outer = radius, min(radius + MASK_EDGE_PX / (n / 2), outer)
    return soft_window(n, inner, outer)


def soft_window(n: int, inner: float = 0.85, outer: float = 0.99) -> Any:
    """Real-space circular window ``(n, n)``: 1 inside ``inner * n/2`` pixels, raised cosine to 0 at ``outer * n/2``.

    cryoSPARC's "window dataset": it removes the box corners, where neighbouring particles and edge artefacts live.
    """
    m = xp()
    c = m.arange(n, dtype=m.float32) - n // 2
    r = m.sqrt(c[:, None] ** 2 + c[None, :] ** 2) / (n / 2)
    t = m.clip((r - inner) / max(outer - inner, 1e-6), 0.0, 1.0)
    return (0.5 * (1 + m.cos(m.pi * t))).astype(m.float32)
