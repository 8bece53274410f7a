"""What the Masks dock computes, as plain functions of NumPy arrays (run in worker threads; no Qt, no layers).

Boxes larger than :data:`PREVIEW_MAX_BOX` are previewed on a 2× binned map (block means, twice the voxel size)
and the preview is interpolated back to the full box for display; the final mask is always computed at full
size with the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryolive.backend import to_numpy
from cryolive.masks import focus_outside_region, soft_edge_from_binary, solvent_mask_from_map, sphere_at

PREVIEW_MAX_BOX = 96


@dataclass(frozen=True)
class SolventParams:
    """Threshold (fraction of the map maximum), dilation and soft edge (Å), optional low-pass (Å, None: off)."""

    threshold: float
    dilate_A: float
    soft_A: float
    lowpass_A: float | None = None


def bin2(vol: np.ndarray) -> np.ndarray:
    """2× binning by 2×2×2 block means (an odd last voxel is dropped)."""
    n = vol.shape[0] // 2 * 2
    v = vol[:n, :n, :n]
    return v.reshape(n // 2, 2, n // 2, 2, n // 2, 2).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def unbin2(vol: np.ndarray, n: int) -> np.ndarray:
    """Back from :func:`bin2` to an ``(n, n, n)`` box by trilinear interpolation (voxel centres aligned)."""
    from scipy.ndimage import zoom

    up = zoom(vol, 2, order=1, mode="nearest", grid_mode=True)
    if up.shape[0] < n:
        pad = n - up.shape[0]
        up = np.pad(up, ((0, pad),) * 3, mode="edge")
    return np.clip(up[:n, :n, :n], 0.0, 1.0).astype(np.float32)


def solvent_mask(vol: np.ndarray, pixel_size: float, p: SolventParams, preview: bool) -> tuple[np.ndarray, bool]:
    """The thresholded soft mask of ``vol``; returns ``(mask, binned)`` with ``binned`` True for a 2× preview.

    At full size this is exactly :func:`cryolive.masks.solvent_mask_from_map` (the jobs' automatic masks).
    """
    v = np.asarray(vol, dtype=np.float32)
    n = v.shape[0]
    binned = preview and n > PREVIEW_MAX_BOX
    apix = float(pixel_size)
    if binned:
        v, apix = bin2(v), 2.0 * apix
    m = to_numpy(solvent_mask_from_map(v, apix, p.threshold, p.dilate_A, p.soft_A, p.lowpass_A)).astype(np.float32)
    if binned:
        m = unbin2(m, n)
    return m, binned


def focus_from_labels(labels: np.ndarray, pixel_size: float, dilate_A: float, soft_A: float) -> np.ndarray:
    """A soft focus mask from painted labels (every label > 0 counts)."""
    binary = np.asarray(labels) > 0
    if not binary.any():
        raise ValueError("nothing is painted yet: paint the region to focus on in the labels layer")
    return to_numpy(soft_edge_from_binary(binary, dilate_A, soft_A, pixel_size)).astype(np.float32)


def focus_sphere(n: int, center_zyx: tuple[float, float, float], radius_A: float, pixel_size: float,
                 soft_A: float) -> np.ndarray:
    """A soft sphere focus mask at a voxel position ``[z, y, x]``."""
    return to_numpy(sphere_at(n, center_zyx, radius_A, pixel_size, soft_A)).astype(np.float32)


def focus_from_map(vol: np.ndarray, pixel_size: float, threshold: float, dilate_A: float,
                   soft_A: float) -> np.ndarray:
    """A focus mask from thresholding a second map (e.g. a fitted model or a segmented region)."""
    return to_numpy(solvent_mask_from_map(np.asarray(vol, dtype=np.float32), pixel_size, threshold, dilate_A,
                                          soft_A)).astype(np.float32)


def outside_region(focus: np.ndarray, solvent: np.ndarray) -> np.ndarray:
    """1 where the focus mask is in its region and the solvent mask is not (float32; see
    :func:`cryolive.masks.focus_outside_region`)."""
    return to_numpy(focus_outside_region(focus, solvent)).astype(np.float32)
