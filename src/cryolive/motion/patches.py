"""Per-frame particle patches cut from a movie, and their centred transforms."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.fourier import radial_index_2d, rfft2c


def extract_patches(frames: np.ndarray, positions: np.ndarray, box: int) -> np.ndarray:
    """Patches ``(N, F, box, box)`` float32 centred (pixel box//2) on integer positions ``(N, 2)`` (x, y) px.

    ``frames``: ``(F, ny, nx)``. Pixels outside the movie are filled with each frame's mean.
    """
    out = np.empty((len(positions), frames.shape[0], box, box), np.float32)
    for f, frame in enumerate(frames):
        out[:, f] = frame_patches(frame, positions, box)
    return out


def frame_patches(frame: np.ndarray, positions: np.ndarray, box: int) -> np.ndarray:
    """Patches ``(N, box, box)`` float32 of one frame ``(ny, nx)`` centred (pixel box//2) on integer positions
    ``(N, 2)`` (x, y) px; pixels outside the frame are filled with the frame's mean."""
    ny, nx = frame.shape
    h = box // 2
    pad = np.full((ny + 2 * box, nx + 2 * box), np.float32(frame.mean()), np.float32)
    pad[box:box + ny, box:box + nx] = frame
    out = np.empty((len(positions), box, box), np.float32)
    for i, (x, y) in enumerate(positions):
        out[i] = pad[y - h + box:y - h + 2 * box, x - h + box:x - h + 2 * box]
    return out


def movie_patches(frame_at: Callable[[int], np.ndarray], n_frames: int, positions: np.ndarray, box: int,
                  offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Patches ``(N, F, box, box)`` float32 and the frame sum ``(ny, nx)`` float32 of a movie read one frame at a
    time (``frame_at(f)`` returns frame ``f`` ``(ny, nx)``, gain applied), so only one frame is held in memory.
    ``offsets``: integer ``(F, 2)`` px (x, y) added to the positions in each frame (patches that follow a drift)."""
    out = np.empty((len(positions), n_frames, box, box), np.float32)
    total = None
    for f in range(n_frames):
        frame = frame_at(f)
        out[:, f] = frame_patches(frame, positions if offsets is None else positions + offsets[f], box)
        total = frame.astype(np.float32, copy=True) if total is None else total + frame
    return out, total


def patch_transforms(patches: np.ndarray) -> np.ndarray:
    """Centred real FFTs ``(N, F, n, n//2+1)`` complex64 of patches ``(N, F, n, n)`` (mean removed per patch)."""
    p = patches - patches.mean(axis=(-2, -1), keepdims=True)
    return np.asarray(rfft2c(p), dtype=np.complex64)


def noise_power(fx: np.ndarray) -> np.ndarray:
    """Noise power per Fourier pixel ``(n, n//2+1)``: the variance over frames of each component, averaged over
    particles and then over each shell (the signal is mostly common to all frames). ``fx``: ``(N, F, n, m)``."""
    n = fx.shape[-2]
    f_count = fx.shape[1]
    var = (np.abs(fx - fx.mean(axis=1, keepdims=True)) ** 2).sum(axis=1).mean(axis=0) / max(f_count - 1, 1)
    shells = to_numpy(radial_index_2d(n))  # motion computes on the host
    per_shell = np.bincount(shells.ravel(), var.ravel()) / np.maximum(np.bincount(shells.ravel()), 1)
    return np.maximum(per_shell[shells], 1e-12 * max(float(per_shell.max()), 1e-30))
