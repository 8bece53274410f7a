"""Central-slice projection of a volume in Fourier space (the forward model ``P_phi V``).

By the Fourier slice theorem the 2D transform of the projection along the image z axis of a volume viewed at
RELION pose ``A`` is ``V^(A^T (kx, ky, 0))``. Slices are read by trilinear interpolation from the centred FT of
the volume zero-padded by ``pad`` (default 2) and pre-divided by the gridding correction, so they match the
DFT of real-space projections to about 1 % up to Nyquist. Only the Hermitian half grid ``(N, N, N // 2 + 1)`` is
kept (``N = pad n``; points with ``x < 0`` are read at ``-p`` and conjugated); on NumPy the slices are cut by a
compiled kernel (:mod:`cryolive.projection._kernels`), parallel over poses. Frequencies beyond Nyquist (``|k| > 0.5``
cycles/pixel, the corners) are set to zero.

Model images follow RELION: with origin ``o`` (pixels, ``rlnOriginX/Y``) the particle centre sits at ``-o`` from
the box centre, i.e. the image is the projection shifted by ``-o``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryolive.backend import xp
from cryolive.image.fourier import irfft2c, padded_rfftnc, rfft_freqs_2d, shift_phase
from cryolive.image.resample import resample_volume
from cryolive.projection import _kernels
from cryolive.projection.gridding import (
    fold_to_half,
    gridding_correction,
    half_trilinear_corners,
    slice_points,
    working_box,
)


class Projector:
    """The padded, gridding-corrected Fourier transform of a volume, ready to cut central slices.

    ``ft``: the flat Hermitian half grid ``(N, N, N // 2 + 1)`` complex64 (``N = pad * n``; see
    :mod:`cryolive.projection.gridding`).
    max_freq: the highest frequency (cycles/pixel of the box ``n``) slices will be cut at. Below 0.5 the volume is
    first Fourier-cropped to the working box ``grid_box`` (:func:`~cryolive.projection.gridding.working_box`;
    its transform keeps the full box's values at the kept frequencies), so set-up, memory and slicing scale with
    the resolution, as RELION's and cryoSPARC's working boxes do; slices are still indexed in the box ``n``.

    Parameters
    ----------
    volume: ``(n, n, n)`` real array ``[z, y, x]`` (backend or NumPy), centre voxel ``n // 2``.
    pad: padding factor (2 by default).
    """

    def __init__(self, volume: Any, pad: int = 2, max_freq: float = 0.5) -> None:
        m = xp()
        vol = m.asarray(volume, dtype=m.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"Projector needs a cubic volume, got shape {tuple(vol.shape)}")
        self.box = int(vol.shape[0])
        self.pad = int(pad)
        self.grid_box = working_box(self.box, max_freq)
        self.max_freq = 0.5 if self.grid_box == self.box else float(max_freq)
        if self.grid_box < self.box:  # same transform values at the kept frequencies: (n / m)^3 undoes the resampling
            vol = resample_volume(vol, self.grid_box) * np.float32((self.box / self.grid_box) ** 3)
        self.big = self.pad * self.grid_box
        self._scale = float(self.pad * self.box)  # grid units per cycle/pixel of the box n
        corrected = vol / gridding_correction(self.big, self.grid_box)
        self.ft = padded_rfftnc(corrected, self.big).ravel()
        del corrected
        ky, kx = rfft_freqs_2d(self.box)
        self._kx, self._ky = kx, ky
        self._sel_cache: dict[float, Any] = {}

    def slices(self, rotations: Any, max_freq: float = 0.5) -> Any:
        """Central slices ``(B, n, n // 2 + 1)`` (rfft2 layout, centred) at RELION poses ``rotations (B, 3, 3)``.

        ``max_freq``: frequencies above this (cycles/pixel) are zero (use it to limit work and resolution), and
        so are those above the projector's own ``max_freq``. Only the pixels inside that radius are interpolated.
        """
        m = xp()
        rot = m.asarray(rotations, dtype=m.float32).reshape(-1, 3, 3)
        sel = self._selection(max_freq)
        vals = self.slice_pixels(rot, self._kx.ravel()[sel], self._ky.ravel()[sel])
        out = m.zeros((rot.shape[0], self._kx.size), dtype=m.complex64)
        out[:, sel] = vals
        return out.reshape((rot.shape[0],) + self._kx.shape)

    def slice_pixels(self, rotations: Any, kx: Any, ky: Any) -> Any:
        """Slice values at a list of 2D frequencies ``kx, ky`` (cycles/pixel, shape ``(K,)``): ``(B, K)`` complex64.

        The pose search uses this to interpolate only the Fourier pixels that enter its score; they must lie within
        the projector's ``max_freq``.
        """
        m = xp()
        rot = m.asarray(rotations, dtype=m.float32).reshape(-1, 3, 3)
        if m is np and _kernels.available():
            out = np.empty((rot.shape[0], kx.size), dtype=np.complex64)
            _kernels.gather(self.ft, np.ascontiguousarray(rot), np.ascontiguousarray(kx, dtype=np.float32).ravel(),
                            np.ascontiguousarray(ky, dtype=np.float32).ravel(), self.big, self._scale, out)
            return out.reshape((rot.shape[0],) + tuple(kx.shape))
        pts, flipped = fold_to_half(slice_points(rot, kx, ky, self._scale))
        idx, wts = half_trilinear_corners(pts, self.big)
        vals = wts[0] * self.ft[idx[0]]
        for i, w in zip(idx[1:], wts[1:], strict=True):
            vals += w * self.ft[i]
        return m.where(flipped, vals.conj(), vals).astype(m.complex64)

    def _selection(self, max_freq: float) -> Any:
        """Flat indices of the rfft2 pixels with ``|k| <= min(max_freq, 0.5)`` (cached per radius)."""
        key = round(min(float(max_freq), self.max_freq), 6)
        if key not in self._sel_cache:
            m = xp()
            r2 = (self._kx * self._kx + self._ky * self._ky).ravel()
            self._sel_cache[key] = m.nonzero(r2 <= key * key)[0]
        return self._sel_cache[key]

    def project(self, rotations: Any, shifts: Any = None, ctf: Any = None, max_freq: float = 0.5) -> Any:
        """Model image transforms ``CTF * shift(slice, -origin)``, ``(B, n, n // 2 + 1)`` complex64.

        ``shifts``: ``(B, 2)`` RELION origins (x, y) in **pixels** (the projection is shifted by ``-origin``);
        ``ctf``: ``(B, n, n // 2 + 1)`` CTF values (e.g. :func:`cryolive.image.ctf.ctf_2d`) or None.
        """
        m = xp()
        f = self.slices(rotations, max_freq=max_freq)
        if shifts is not None:
            s = m.asarray(shifts, dtype=m.float32)
            f = f * shift_phase(self._kx, self._ky, -s[:, 0], -s[:, 1])
        if ctf is not None:
            f = f * ctf
        return f

    def project_real(self, rotations: Any, shifts: Any = None, ctf: Any = None) -> Any:
        """Real-space model images ``(B, n, n)`` float32 (see :meth:`project`)."""
        return irfft2c(self.project(rotations, shifts, ctf), self.box).astype(xp().float32)
