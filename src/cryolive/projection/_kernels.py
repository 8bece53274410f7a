"""Compiled (numba) CPU kernels for the two hot loops of Fourier projection and reconstruction: cutting central
slices out of a Hermitian half grid (a gather, parallel over images) and inserting slices into one (a scatter,
serial: two images may hit the same voxel).

They compute exactly what the vectorised NumPy/CuPy path in :mod:`cryolive.projection.gridding` computes
(:func:`~cryolive.projection.gridding.fold_to_half`, :func:`~cryolive.projection.gridding.half_trilinear_corners`)
without its temporaries: per pixel, the 3D point ``A^T (kx, ky, 0) N`` is folded into ``x >= 0`` (value
conjugated), its 8 trilinear neighbours are found with the same clamping, and their values are read or added.
Grids are flat C-ordered ``(N, N, N // 2 + 1)`` ``[z, y, x]`` arrays. The few lines that
compute and fold the point are written out in both loops on purpose: through a shared inlined helper the gather ran
~1.6x slower (measured at box 128). ``available()`` says whether numba imported;
without it the vectorised path is used.
"""

from __future__ import annotations

import math
import threading

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; kept optional for odd platforms
    numba = None


def available() -> bool:
    """Whether the compiled kernels can be used (numba is importable)."""
    return numba is not None


def _corner_setup(x: float, y: float, z: float, big: int) -> tuple:
    """Lower corner ``(x0, y0, z0)`` (array indices) and fractions of a folded point (padded-grid units)."""
    half = big // 2
    qx, qy, qz = x, y + half, z + half
    x0 = min(max(math.floor(qx), 0), half - 1)
    y0 = min(max(math.floor(qy), 0), big - 2)
    z0 = min(max(math.floor(qz), 0), big - 2)
    fx = min(max(qx - x0, 0.0), 1.0)
    fy = min(max(qy - y0, 0.0), 1.0)
    fz = min(max(qz - z0, 0.0), 1.0)
    return x0, y0, z0, fx, fy, fz


def _gather(grid: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray, big: int, scale: float,
            out: np.ndarray) -> None:
    """``out[b, j]`` = trilinear value of the half grid at ``A_b^T (kx_j, ky_j, 0) scale`` (conjugated when
    folded).

    grid: flat complex64 half grid of size ``big`` (``N``); rot: ``(B, 3, 3)`` float32 RELION ``A``; kx, ky:
    ``(P,)`` float32 cycles/pixel; scale: grid units per cycle/pixel (``N``, or ``pad * n`` for a working grid
    smaller than the box ``n``); out: ``(B, P)`` complex64, written.
    """
    h = big // 2 + 1
    plane = big * h
    n_img, n_pix = out.shape
    for b in numba.prange(n_img):
        a00, a01, a02 = rot[b, 0, 0], rot[b, 0, 1], rot[b, 0, 2]
        a10, a11, a12 = rot[b, 1, 0], rot[b, 1, 1], rot[b, 1, 2]
        for j in range(n_pix):
            x = (kx[j] * a00 + ky[j] * a10) * scale
            y = (kx[j] * a01 + ky[j] * a11) * scale
            z = (kx[j] * a02 + ky[j] * a12) * scale
            flip = x < 0
            if flip:
                x, y, z = -x, -y, -z
            x0, y0, z0, fx, fy, fz = _corner_setup(x, y, z, big)
            gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
            i = (z0 * big + y0) * h + x0
            v = (gz * (gy * (gx * grid[i] + fx * grid[i + 1])
                       + fy * (gx * grid[i + h] + fx * grid[i + h + 1]))
                 + fz * (gy * (gx * grid[i + plane] + fx * grid[i + plane + 1])
                         + fy * (gx * grid[i + plane + h] + fx * grid[i + plane + h + 1])))
            out[b, j] = np.conj(v) if flip else v


def _scatter(num: np.ndarray, den: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray,
             data: np.ndarray, c2: np.ndarray, big: int, scale: float) -> None:
    """Add ``data[b, j]`` (conjugated when folded) into ``num`` and ``c2[b, j]`` into ``den`` at the 8 trilinear
    neighbours of ``A_b^T (kx_j, ky_j, 0) scale``, weighted (``big``, ``scale``: as in :func:`_gather`).

    num: flat complex64 half grid; den: flat float32 half grid; rot ``(B, 3, 3)`` float32; kx, ky ``(P,)``;
    data ``(B, P)`` complex64; c2 ``(B, P)`` float32.
    """
    h = big // 2 + 1
    plane = big * h
    n_img, n_pix = data.shape
    for b in range(n_img):
        a00, a01, a02 = rot[b, 0, 0], rot[b, 0, 1], rot[b, 0, 2]
        a10, a11, a12 = rot[b, 1, 0], rot[b, 1, 1], rot[b, 1, 2]
        for j in range(n_pix):
            x = (kx[j] * a00 + ky[j] * a10) * scale
            y = (kx[j] * a01 + ky[j] * a11) * scale
            z = (kx[j] * a02 + ky[j] * a12) * scale
            v = data[b, j]
            if x < 0:
                x, y, z = -x, -y, -z
                v = np.conj(v)
            w2 = c2[b, j]
            x0, y0, z0, fx, fy, fz = _corner_setup(x, y, z, big)
            gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
            i = (z0 * big + y0) * h + x0
            for dz in range(2):
                wz = fz if dz else gz
                for dy in range(2):
                    wzy = wz * (fy if dy else gy)
                    k = i + dz * plane + dy * h
                    w = wzy * gx
                    num[k] += w * v
                    den[k] += w * w2
                    w = wzy * fx
                    num[k + 1] += w * v
                    den[k + 1] += w * w2


#: numba's default (workqueue) threading layer aborts the process when two threads launch parallel kernels at once
#: (two jobs in napari's worker threads): parallel launches are serialised
_PARALLEL_LOCK = threading.Lock()

if numba is not None:
    _corner_setup = numba.njit(cache=True, inline="always")(_corner_setup)
    _gather_compiled = numba.njit(cache=True, parallel=True)(_gather)
    scatter = numba.njit(cache=True)(_scatter)
else:  # pragma: no cover
    _gather_compiled = scatter = None


def gather(grid: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray, big: int, scale: float,
           out: np.ndarray) -> None:
    """The compiled :func:`_gather` (parallel over poses), one caller at a time."""
    with _PARALLEL_LOCK:
        _gather_compiled(grid, rot, kx, ky, big, scale, out)
