"""Align one map onto another: rotation, origin and hand (cryoSPARC's "Align 3D maps", Chimera's "fit in map").

A refinement or ab-initio run from a wrong start ends in an arbitrary frame, and possibly with the opposite hand
(projections cannot tell a map from its mirror image). To compare such a map with a known one, search the
rotation exhaustively on an SO(3) grid, then locally; for every rotation the best origin comes from one FFT
cross-correlation. Both maps are low-passed to ``resolution_A`` and cropped to a small box first.

Convention: the aligned map is ``aligned(x) = moving'(R^T (x - c - t) + c)`` with ``x`` in Å as ``(x, y, z)``,
``c`` the centre voxel ``n // 2``, ``R`` the rotation, ``t`` the shift (Å), and ``moving'`` the moving map mirrored
through the plane ``z = c`` when ``mirrored`` (``moving'[z] = moving[2c - z]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from cryolive.backend import to_numpy
from cryolive.image.resample import box_for_resolution, resample_volume
from cryolive.resolution.filters import lowpass
from cryolive.rotations.grids import local_grid, so3_grid

_XYZ_TO_ZYX = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)


@dataclass(frozen=True)
class MapAlignment:
    """Rotation ``(3, 3)`` acting on ``(x, y, z)``, shift ``(x, y, z)`` in Å, hand, and the normalised
    cross-correlation reached (of the low-passed maps)."""

    rotation: np.ndarray
    shift_A: np.ndarray
    mirrored: bool
    cc: float


def mirror_map(vol: np.ndarray) -> np.ndarray:
    """The map mirrored through the plane ``z = n // 2``: ``out[z] = vol[2 (n // 2) - z]`` (periodic)."""
    return np.roll(np.asarray(vol)[::-1], 1 if vol.shape[0] % 2 == 0 else 0, axis=0)


def _source_coords(n: int, rotations: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """Array indices ``(3, B * n^3)`` (z, y, x) of ``R^T (x - c - t) + c`` for every voxel ``x`` of a box-``n``
    map and each of ``rotations (B, 3, 3)`` acting on (x, y, z); ``shift_px`` t (x, y, z) in voxels."""
    c = n // 2
    g = np.indices((n, n, n), dtype=np.float64).reshape(3, -1) - c  # (z, y, x)
    r_zyx = np.einsum("ij,bjk,kl->bil", _XYZ_TO_ZYX, np.asarray(rotations, dtype=float), _XYZ_TO_ZYX)
    t_zyx = _XYZ_TO_ZYX @ np.asarray(shift_px, dtype=float)
    return (np.einsum("bji,jn->ibn", r_zyx, g - t_zyx[:, None]) + c).reshape(3, -1)


def _transform(vol: np.ndarray, rotation: np.ndarray, shift_px: np.ndarray, order: int = 1) -> np.ndarray:
    """``vol(R^T (x - c - t) + c)`` for ``rotation`` R on (x, y, z) and ``shift_px`` t (x, y, z) in voxels."""
    src = _source_coords(vol.shape[0], np.asarray(rotation)[None], shift_px)
    return map_coordinates(vol, src, order=order, mode="constant").reshape(vol.shape).astype(np.float32)


def apply_alignment(vol: np.ndarray, al: MapAlignment, pixel_size: float) -> np.ndarray:
    """``vol`` moved into the fixed map's frame by ``al`` (see the module docstring); cubic interpolation."""
    v = mirror_map(vol) if al.mirrored else np.asarray(vol)
    return _transform(v, al.rotation, al.shift_A / pixel_size, order=3)


def _standardise(v: np.ndarray) -> np.ndarray:
    return ((v - v.mean()) / max(float(v.std()), 1e-30)).astype(np.float32)


def _best_shift(moving_ft: np.ndarray, fixed_ft: np.ndarray) -> tuple[float, np.ndarray]:
    """Highest cross-correlation over cyclic shifts and the shift (voxels, (x, y, z), refined below a voxel by
    a parabola through the peak and its neighbours along each axis) that reaches it."""
    cc = np.fft.ifftn(np.conj(moving_ft) * fixed_ft).real / moving_ft.size
    i = np.unravel_index(int(np.argmax(cc)), cc.shape)
    n = cc.shape[0]
    t_zyx = np.array([(k + n // 2) % n - n // 2 for k in i], dtype=float)
    for ax in range(3):
        lo, hi = list(i), list(i)
        lo[ax], hi[ax] = (i[ax] - 1) % n, (i[ax] + 1) % n
        a, b, c = cc[tuple(lo)], cc[i], cc[tuple(hi)]
        den = a - 2 * b + c
        if den < 0:
            t_zyx[ax] += float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return float(cc[i]), t_zyx[::-1]


def _scan(moving: np.ndarray, fixed_ft: np.ndarray, rotations: np.ndarray,
          chunk: int = 32) -> tuple[float, np.ndarray, np.ndarray]:
    """Best (correlation, rotation, shift in voxels) of ``moving`` over ``rotations`` (in chunks, one
    interpolation and one batched FFT per chunk)."""
    best = (-np.inf, np.eye(3), np.zeros(3))
    for s0 in range(0, len(rotations), chunk):
        rots = rotations[s0:s0 + chunk]
        src = _source_coords(moving.shape[0], rots, np.zeros(3))
        vols = map_coordinates(moving, src, order=1, mode="constant")
        vols = vols.reshape((len(rots),) + moving.shape)
        cc = np.fft.ifftn(np.conj(np.fft.fftn(vols, axes=(1, 2, 3))) * fixed_ft, axes=(1, 2, 3)).real
        j = int(np.argmax(cc.reshape(len(rots), -1).max(axis=1)))
        val, t = _best_shift(np.fft.fftn(vols[j]), fixed_ft)
        if val > best[0]:
            best = (val, rots[j], t)
    return best


def _small(v: np.ndarray, box: int, pixel_size: float, resolution_A: float) -> np.ndarray:
    """``v`` cropped to ``box`` in Fourier space, low-passed to ``resolution_A`` and standardised."""
    apix = pixel_size * v.shape[0] / box
    return _standardise(to_numpy(lowpass(resample_volume(v, box), resolution_A, apix)).astype(np.float32))


def align_maps(moving: np.ndarray, fixed: np.ndarray, pixel_size: float, resolution_A: float = 15.0,
               step_deg: float = 15.0, mirror: bool = True) -> MapAlignment:
    """The rotation, shift and hand that best superpose ``moving`` onto ``fixed`` (both ``(n, n, n)`` at
    ``pixel_size`` Å).

    A global SO(3) grid of ``step_deg`` degrees (each hand when ``mirror``) on maps low-passed to
    ``resolution_A`` Å in a small box; then two local passes at a third and a ninth of the step around the best,
    on maps low-passed to half that resolution. The shift is the cross-correlation peak at every rotation
    (sub-voxel). ``cc`` is the correlation of the fine pass.
    """
    n = fixed.shape[0]
    box_c = box_for_resolution(n, pixel_size, resolution_A)
    box_f = box_for_resolution(n, pixel_size, resolution_A / 2)
    fixed_c = np.fft.fftn(_small(fixed, box_c, pixel_size, resolution_A))
    coarse = []
    for mirrored in (False, True) if mirror else (False,):
        mv = _small(mirror_map(moving) if mirrored else moving, box_c, pixel_size, resolution_A)
        coarse.append((_scan(mv, fixed_c, so3_grid(step_deg)), mirrored))
    (cc, r, t), mirrored = max(coarse, key=lambda c: c[0][0])
    fixed_f = np.fft.fftn(_small(fixed, box_f, pixel_size, resolution_A / 2))
    mv = _small(mirror_map(moving) if mirrored else moving, box_f, pixel_size, resolution_A / 2)
    for fine in (step_deg / 3, step_deg / 9):
        cc, r, t = _scan(mv, fixed_f, local_grid(r, fine, 3 * fine))
    return MapAlignment(r, t * pixel_size * n / box_f, mirrored, cc)
