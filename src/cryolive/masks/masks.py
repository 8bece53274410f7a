"""Soft masks: spheres, thresholded maps with dilation and raised-cosine edges, and mask overlap checks.

Masks are float32 backend arrays (``cryolive.backend.xp()``) of shape ``(n, n, n)`` indexed ``[z, y, x]`` with
values in [0, 1]; the box centre is voxel ``n // 2``. Distances (radii, dilation, soft-edge widths) are in Å,
pixel sizes in Å per voxel. Distances to a binary region come from a Euclidean distance transform
(``scipy.ndimage`` or ``cupyx.scipy.ndimage``, matching the backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cryolive.backend import to_numpy, xp

__all__ = [
    "fraction_outside",
    "mask_volume_fraction",
    "soft_edge_from_binary",
    "soft_sphere",
    "sphere_at",
    "threshold_mask",
]


# ----------------------------------------------------------------------------------------------- validation
def _check_volume(vol: Any, name: str) -> int:
    shape = tuple(getattr(vol, "shape", ()))
    if len(shape) != 3 or not (shape[0] == shape[1] == shape[2]):
        raise ValueError(f"{name} must be a cubic 3D array (n, n, n), got shape {shape}")
    if shape[0] < 1:
        raise ValueError(f"{name} is empty (shape {shape})")
    m = xp()
    if not bool(m.all(m.isfinite(m.asarray(vol)))):
        raise ValueError(f"{name} contains NaN or infinite values")
    return int(shape[0])


def _check_box(n: int) -> int:
    if int(n) != n or int(n) < 1:
        raise ValueError(f"box size must be a positive integer, got {n!r}")
    return int(n)


def _check_pixel(pixel_size: float) -> float:
    p = float(pixel_size)
    if not np.isfinite(p) or p <= 0:
        raise ValueError(f"pixel_size must be a positive number of Å, got {pixel_size!r}")
    return p


def _check_width(value: float, name: str) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be ≥ 0 Å, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------- pieces
def _falloff(dist_A: Any, start_A: float, soft_A: float) -> Any:
    """1 where ``dist_A ≤ start_A``, a raised cosine to 0 at ``start_A + soft_A``, 0 beyond (float32)."""
    m = xp()
    if soft_A <= 0:
        return (dist_A <= start_A).astype(m.float32)
    t = m.clip((dist_A - start_A) / soft_A, 0.0, 1.0)
    return (0.5 * (1.0 + m.cos(m.pi * t))).astype(m.float32)


def _distance_to_region(binary: Any, pixel_size: float) -> Any:
    """Euclidean distance (Å) from every voxel to the nearest voxel of ``binary`` (0 inside it)."""
    m = xp()
    outside = m.logical_not(binary)
    if m.__name__ == "cupy":
        try:
            from cupyx.scipy.ndimage import distance_transform_edt as edt_gpu

            return edt_gpu(outside, sampling=pixel_size).astype(m.float32)
        except ImportError:  # older CuPy without the EDT: do it on the host
            pass
    from scipy.ndimage import distance_transform_edt

    d = distance_transform_edt(to_numpy(outside), sampling=pixel_size)
    return m.asarray(d, dtype=m.float32)


def soft_edge_from_binary(binary: Any, dilate_A: float, soft_A: float, pixel_size: float) -> Any:
    """Dilate a binary region by ``dilate_A`` and add a raised-cosine edge ``soft_A`` wide (all in Å).

    Voxels within ``dilate_A`` of the region (Euclidean distance between voxel centres) are 1; the value
    falls as ``0.5 (1 + cos(π (d − dilate_A) / soft_A))`` to 0 at ``dilate_A + soft_A``. An empty region
    gives an all-zero mask. Returns float32 in [0, 1].
    """
    m = xp()
    n = _check_volume(binary, "binary mask")
    p = _check_pixel(pixel_size)
    dil = _check_width(dilate_A, "dilate_A")
    soft = _check_width(soft_A, "soft_A")
    b = m.asarray(binary).astype(bool)
    if not bool(b.any()):
        return m.zeros((n, n, n), dtype=m.float32)
    if dil == 0 and soft == 0:
        return b.astype(m.float32)
    return _falloff(_distance_to_region(b, p), dil, soft)


def threshold_mask(
    vol: Any, threshold_fraction: float, dilate_A: float, soft_A: float, pixel_size: float
) -> Any:
    """Solvent-style mask: ``vol ≥ fraction · max(vol)``, dilated by ``dilate_A``, soft edge ``soft_A``.

    ``threshold_fraction`` in (0, 1]; widths in Å; ``pixel_size`` in Å. See :func:`soft_edge_from_binary`.
    Returns float32 in [0, 1].
    """
    m = xp()
    _check_volume(vol, "volume")
    frac = float(threshold_fraction)
    if not np.isfinite(frac) or not (0.0 < frac <= 1.0):
        raise ValueError(f"threshold_fraction must lie in (0, 1], got {threshold_fraction!r}")
    _check_pixel(pixel_size)
    _check_width(dilate_A, "dilate_A")
    _check_width(soft_A, "soft_A")
    v = m.asarray(vol, dtype=m.float32)
    vmax = float(v.max())
    if vmax <= 0:
        raise ValueError(
            f"cannot threshold at a fraction of the maximum: the volume's maximum is {vmax:g} (≤ 0)"
        )
    return soft_edge_from_binary(v >= frac * vmax, dilate_A, soft_A, pixel_size)


def sphere_at(
    n: int, center_zyx_px: Sequence[float], radius_A: float, pixel_size: float, soft_A: float = 0.0
) -> Any:
    """Soft sphere of radius ``radius_A`` (Å) centred at ``center_zyx_px`` (voxel coordinates ``(z, y,
    x)``).

    1 within the radius, a raised cosine falling to 0 over ``soft_A`` (Å) beyond it. Returns ``(n, n, n)``
    float32.
    """
    m = xp()
    n = _check_box(n)
    p = _check_pixel(pixel_size)
    r0 = _check_width(radius_A, "radius_A")
    soft = _check_width(soft_A, "soft_A")
    c = [float(v) for v in center_zyx_px]
    if len(c) != 3 or not all(np.isfinite(c)):
        raise ValueError(f"center_zyx_px must be 3 finite numbers (z, y, x), got {center_zyx_px!r}")
    ax = m.arange(n, dtype=m.float32)
    dz = (ax - c[0])[:, None, None]
    dy = (ax - c[1])[None, :, None]
    dx = (ax - c[2])[None, None, :]
    r_A = m.sqrt(dz * dz + dy * dy + dx * dx) * p
    return _falloff(r_A, r0, soft)


def soft_sphere(n: int, radius_A: float, pixel_size: float, soft_A: float) -> Any:
    """Soft sphere centred at voxel ``n // 2``: 1 within ``radius_A``, 0 beyond ``radius_A + soft_A``.

    Radii in Å, ``pixel_size`` in Å. Returns ``(n, n, n)`` float32 in [0, 1].
    """
    n = _check_box(n)
    c = float(n // 2)
    return sphere_at(n, (c, c, c), radius_A, pixel_size, soft_A)


def fraction_outside(mask_a: Any, mask_b: Any, level: float = 0.5) -> float:
    """Fraction of ``mask_a``'s region (voxels ≥ ``level``) that lies where ``mask_b`` < ``level``.

    E.g. a focus mask ``mask_a`` half outside the solvent mask ``mask_b`` gives 0.5; fully inside gives 0.
    Raises ``ValueError`` when ``mask_a`` has no voxel at or above ``level``.
    """
    m = xp()
    _check_volume(mask_a, "mask_a")
    _check_volume(mask_b, "mask_b")
    if tuple(mask_a.shape) != tuple(mask_b.shape):
        raise ValueError(f"masks differ in shape: {tuple(mask_a.shape)} vs {tuple(mask_b.shape)}")
    a = m.asarray(mask_a) >= level
    total = int(a.sum())
    if total == 0:
        raise ValueError(f"mask_a has no voxel at or above level {level}")
    outside = int(m.logical_and(a, m.asarray(mask_b) < level).sum())
    return outside / total


def mask_volume_fraction(mask: Any) -> float:
    """Mean value of ``mask``: the fraction of the box it covers (soft edges counted by their weight)."""
    _check_volume(mask, "mask")
    return float(xp().asarray(mask, dtype=xp().float64).mean())
