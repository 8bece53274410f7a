"""Projections of a reference along a coarse rotation grid, made once per iteration and scored against every batch
of images by the first (global) level of the pose search (:func:`cryolive.alignment.search.global_level`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryolive.alignment.pixels import PixelSet
from cryolive.backend import xp
from cryolive.projection import Projector


@dataclass(frozen=True)
class GridProjections:
    """Projections of a fixed rotation grid at the first ``K`` pixels of a pixel set (reused for every batch)."""

    rotations: np.ndarray  # (G, 3, 3)
    reim: Any  # (G, 2K) float32: [Re R, Im R] side by side, so the cross term is one real matrix product
    power: Any  # |R|^2 (G, K)

    @classmethod
    def make(cls, proj: Projector, rotations: np.ndarray, kx: Any, ky: Any, chunk: int = 4096) -> GridProjections:
        """Project ``proj`` along ``rotations (G, 3, 3)`` (RELION ``A``) at the pixels ``kx, ky (K,)`` (cycles per
        pixel), ``chunk`` rotations at a time."""
        m = xp()
        parts = [proj.slice_pixels(rotations[i:i + chunk], kx, ky) for i in range(0, len(rotations), chunk)]
        r = m.concatenate(parts, axis=0)
        return cls(np.asarray(rotations), m.ascontiguousarray(m.concatenate([r.real, r.imag], axis=1)),
                   (r.real**2 + r.imag**2).astype(m.float32))


def project_grid(proj: Projector, rotations: np.ndarray, pix: PixelSet, radius: float | None = None
                 ) -> GridProjections:
    """:class:`GridProjections` of ``proj`` along ``rotations (G, 3, 3)`` at the pixels of ``pix`` within
    ``radius`` pixels (a prefix of the set; None: all of them), the pixels the coarse level scores."""
    k = len(pix) if radius is None else pix.count_within(radius)
    return GridProjections.make(proj, rotations, pix.kx[:k], pix.ky[:k])
