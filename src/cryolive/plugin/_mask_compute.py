"""What the Masks dock computes, as plain functions of NumPy arrays (run in worker threads; no Qt, no layers).

Boxes larger than :data:`PREVIEW_MAX_BOX` are previewed on a binned map (block means; the voxel size grows by the
binning factor, dilation and soft edge stay in Å): up to :data:`UPSAMPLED_MAX_BOX` 2× binned and interpolated back
to the full box (as the dock always did), bigger boxes binned to at most :data:`PREVIEW_MAX_BOX` voxels and kept on
that grid (the dock shows it with the layer's scale, so it lies over the map in world coordinates; nothing of the
full box's size is made while the user drags a slider). The binned map is made once per map and kept
(:func:`binned_map`). The final mask is always computed at full size with the same parameters.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from cryolive.backend import to_numpy
from cryolive.masks import (
    focus_outside_region,
    mask_volume_fraction,
    soft_edge_from_binary,
    solvent_mask_from_map,
    sphere_at,
)

#: boxes above this are previewed on a binned map; bigger than :data:`UPSAMPLED_MAX_BOX`: on ≤ this many voxels
PREVIEW_MAX_BOX = 96
#: up to this box the binned preview is 2× binned and interpolated back to the full box
UPSAMPLED_MAX_BOX = 128


@dataclass(frozen=True)
class SolventParams:
    """Threshold (fraction of the map maximum), dilation and soft edge (Å), optional low-pass (Å, None: off)."""

    threshold: float
    dilate_A: float
    soft_A: float
    lowpass_A: float | None = None


@dataclass(frozen=True)
class SolventMask:
    """A solvent mask as the dock gets it from the worker.

    ``mask``: float32 in [0, 1]; ``factor``: the binning of the map it was computed from (1: full size, the final
    mask); ``grid``: the voxel size of ``mask`` over the map's (1: the map's grid, ``factor`` for a big box's preview,
    whose voxel ``i`` is centred on the map's voxel ``grid · i + (grid − 1) / 2``); ``fraction``: the fraction of
    the box it covers (:func:`cryolive.masks.mask_volume_fraction`).
    """

    mask: np.ndarray
    factor: int
    grid: int
    fraction: float

    @property
    def preview(self) -> bool:
        return self.factor > 1


def preview_factor(n: int) -> int:
    """The binning of a box-``n`` map for the live preview: 1 up to :data:`PREVIEW_MAX_BOX`, 2 up to
    :data:`UPSAMPLED_MAX_BOX`, else the smallest factor that brings it to ≤ :data:`PREVIEW_MAX_BOX` voxels."""
    if n <= PREVIEW_MAX_BOX:
        return 1
    if n <= UPSAMPLED_MAX_BOX:
        return 2
    return math.ceil(n / PREVIEW_MAX_BOX)


def bin_by(vol: np.ndarray, f: int) -> np.ndarray:
    """``f``× binning by ``f``³ block means (float32; the last ``n mod f`` voxels of each axis are dropped)."""
    f = int(f)
    n = vol.shape[0] // f * f
    m = n // f
    v = vol[:n, :n, :n]
    return v.reshape(m, f, m, f, m, f).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def bin2(vol: np.ndarray) -> np.ndarray:
    """2× binning by 2×2×2 block means (an odd last voxel is dropped)."""
    return bin_by(vol, 2)


def unbin2(vol: np.ndarray, n: int) -> np.ndarray:
    """Back from :func:`bin2` to an ``(n, n, n)`` box by trilinear interpolation (voxel centres aligned)."""
    from scipy.ndimage import zoom

    up = zoom(vol, 2, order=1, mode="nearest", grid_mode=True)
    if up.shape[0] < n:
        pad = n - up.shape[0]
        up = np.pad(up, ((0, pad),) * 3, mode="edge")
    return np.clip(up[:n, :n, :n], 0.0, 1.0).astype(np.float32)


def binned_geometry(scale: tuple[float, ...], translate: tuple[float, ...],
                    grid: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Layer scale and translate (world units, e.g. Å) of a ``grid``× binned volume over a layer with ``scale`` and
    ``translate``: voxels ``grid`` times bigger, the first one centred ``(grid − 1) / 2`` map voxels further in."""
    return (tuple(float(s) * grid for s in scale),
            tuple(float(t) + 0.5 * (grid - 1) * float(s) for s, t in zip(scale, translate, strict=True)))


class _BinnedCache:
    """The last binned map, per source array (weakly held) and factor: dragging a slider bins the map once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[weakref.ref, int, tuple, int] | None = None
        self._value: np.ndarray | None = None

    def get(self, vol: np.ndarray, f: int) -> np.ndarray:
        try:
            ref = weakref.ref(vol)
        except TypeError:  # not weakly referenceable: no caching
            return bin_by(vol, f)
        stamp = (f, vol.shape, vol.__array_interface__["data"][0])
        with self._lock:
            if self._key is not None and self._key[0]() is vol and self._key[1:] == stamp:
                return self._value
        value = bin_by(np.asarray(vol, dtype=np.float32), f)
        with self._lock:
            self._key, self._value = (ref, *stamp), value
        return value

    def clear(self) -> None:
        with self._lock:
            self._key = self._value = None


_BINNED = _BinnedCache()


def binned_map(vol: np.ndarray, f: int) -> np.ndarray:
    """``bin_by(vol, f)``, kept for the next call with the same array (the map of a layer, while the user drags)."""
    return _BINNED.get(vol, f)


def solvent_mask(vol: np.ndarray, pixel_size: float, p: SolventParams, preview: bool) -> SolventMask:
    """The thresholded soft mask of ``vol`` (a :class:`SolventMask`); with ``preview`` on a binned map for boxes
    above :data:`PREVIEW_MAX_BOX` (:func:`preview_factor`).

    At full size this is exactly :func:`cryolive.masks.solvent_mask_from_map` (the jobs' automatic masks). A
    preview is the same function of the binned map with the binned voxel size (dilation, soft edge and low-pass in
    Å as given).
    """
    n = vol.shape[0]
    f = preview_factor(n) if preview else 1
    if f > 1:
        v, apix = binned_map(vol, f), f * float(pixel_size)
    else:
        v, apix = np.asarray(vol, dtype=np.float32), float(pixel_size)
    m = np.asarray(to_numpy(solvent_mask_from_map(v, apix, p.threshold, p.dilate_A, p.soft_A, p.lowpass_A)),
                   dtype=np.float32)
    grid = f
    if f > 1 and n <= UPSAMPLED_MAX_BOX:
        m, grid = unbin2(m, n), 1
    return SolventMask(m, f, grid, mask_volume_fraction(m))


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
