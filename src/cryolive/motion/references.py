"""Reference images: each particle's projection of a half map at its pose, shifted by ``-origin``, times its CTF."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryolive.backend import to_numpy, xp
from cryolive.image.ctf import ctf_2d
from cryolive.io import ParticleStack
from cryolive.projection import Projector


class References:
    """Projectors of the two masked half maps (``[z, y, x]``, box n, the particles' pixel size)."""

    def __init__(self, half_a: np.ndarray, half_b: np.ndarray, mask: np.ndarray | None = None) -> None:
        m = xp()
        mk = 1.0 if mask is None else m.asarray(mask, dtype=m.float32)
        self.proj = (Projector(m.asarray(half_a, dtype=m.float32) * mk),
                     Projector(m.asarray(half_b, dtype=m.float32) * mk))
        self.box = self.proj[0].box

    def project(self, stack: ParticleStack, idx: np.ndarray, origins_A: np.ndarray, opposite: bool = False) -> Any:
        """Model transforms ``(B, n, n//2+1)`` complex (NumPy) of particles ``idx`` from their OWN half map.

        ``opposite``: use the other half map (for cross-validation). ``origins_A``: ``(B, 2)`` RELION origins (Å).
        Particles with no half set (0) use half map A as their own.
        """
        m = xp()
        n = self.box
        half = np.asarray(stack.half_set)[idx]
        use_b = (half == 2) if not opposite else (half != 2)
        ctf = ctf_2d(stack.ctf.subset(idx), n, stack.pixel_size)
        out = m.zeros((len(idx), n, n // 2 + 1), dtype=m.complex64)
        shifts = np.asarray(origins_A, dtype=float) / stack.pixel_size
        for k, sel in enumerate((~use_b, use_b)):
            s = np.nonzero(sel)[0]
            if len(s):
                gs = m.asarray(s)
                out[gs] = self.proj[k].project(stack.rotations[idx[s]], shifts[s], ctf[gs])
        return to_numpy(out)
