"""Private helpers shared by the resolution modules: Fourier shells, radial sums and input checks.

Shell ``k`` of a centred 3D transform of box ``n`` holds the voxels whose distance from the centre voxel
``n // 2`` rounds to ``k`` pixels (:func:`cryolive.image.fourier.radial_index_3d`); its spatial frequency is
``k / (n * pixel_size)`` in 1/Å.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from cryolive.backend import to_numpy, xp
from cryolive.image.fourier import centered_grid_3d, radial_index_3d


def check_cubic(vol: Any, name: str = "volume") -> int:
    """Raise ``ValueError`` unless ``vol`` is a cubic 3D array; return its box size ``n`` (voxels)."""
    shape = tuple(getattr(vol, "shape", ()))
    if len(shape) != 3 or not (shape[0] == shape[1] == shape[2]):
        raise ValueError(f"{name} must be a cubic 3D array (n, n, n), got shape {shape}")
    if shape[0] < 2:
        raise ValueError(f"{name} must have a box of at least 2 voxels, got shape {shape}")
    return int(shape[0])


def check_finite(vol: Any, name: str = "volume") -> None:
    """Raise ``ValueError`` when ``vol`` holds NaN or infinite values."""
    m = xp()
    if not bool(m.all(m.isfinite(vol))):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_positive(value: float, name: str) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0; return it as ``float``."""
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def n_shells(n: int) -> int:
    """Number of shells reported for box ``n``: ``0 .. n // 2``."""
    return n // 2 + 1


@lru_cache(maxsize=8)
def _shell_index_cached(n: int, backend: str) -> Any:
    return radial_index_3d(n).ravel()


def shell_index(n: int) -> Any:
    """Flattened integer shell index of each voxel of a centred ``(n, n, n)`` transform (backend int32)."""
    return _shell_index_cached(int(n), xp().__name__)


def shell_sum(values: Any, n: int) -> np.ndarray:
    """Sum of real ``values`` (centred ``(n, n, n)`` layout) over shells ``0 .. n // 2``; NumPy float64."""
    m = xp()
    idx = shell_index(n)
    sums = m.bincount(idx, weights=values.ravel().astype(m.float64), minlength=n_shells(n))
    return to_numpy(sums[: n_shells(n)]).astype(np.float64)


@lru_cache(maxsize=8)
def _counts_cached(n: int) -> np.ndarray:
    idx = to_numpy(radial_index_3d(n)).ravel()
    return np.bincount(idx, minlength=n_shells(n))[: n_shells(n)].astype(np.int64)


def shell_counts(n: int) -> np.ndarray:
    """Number of voxels in each shell ``0 .. n // 2`` of a centred ``(n, n, n)`` transform (NumPy int64)."""
    return _counts_cached(int(n)).copy()


def shell_mean_radius_sq(n: int) -> np.ndarray:
    """Mean squared radius (pixels², i.e. (cycles/box)²) of the voxels of each shell ``0 .. n // 2``."""
    r = centered_grid_3d(n)
    sums = shell_sum(r * r, n)
    counts = shell_counts(n)
    return sums / np.maximum(counts, 1)


def rfft_radius_px(n: int) -> Any:
    """Radius in pixels (cycles per box) of each voxel of an uncentred ``rfftn`` of box ``n``.

    Shape ``(n, n, n // 2 + 1)``, float32. A radially symmetric real filter may be applied in this layout
    directly: centring only shifts the real-space origin, which commutes with the filter.
    """
    m = xp()
    k = (m.fft.fftfreq(n) * n).astype(m.float32)
    kx = (m.fft.rfftfreq(n) * n).astype(m.float32)
    return m.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def apply_radial(vol: Any, weight_of_radius: Any) -> Any:
    """Multiply the transform of real ``vol`` by ``weight_of_radius(r_px)``; return a real float32 volume.

    ``weight_of_radius`` receives the :func:`rfft_radius_px` grid (pixels) and returns weights of the same
    shape.
    """
    from cryolive.image.fourier import fft_module

    m = xp()
    n = check_cubic(vol)
    fft, keep_input = fft_module(m, overwrite=False)  # vol is the caller's
    f = fft.rfftn(m.asarray(vol, dtype=m.float32), **keep_input)
    f *= weight_of_radius(rfft_radius_px(n)).astype(f.real.dtype)
    fft, own_input = fft_module(m)  # f is ours
    out = fft.irfftn(f, s=(n, n, n), **own_input)
    return out.astype(m.float32)
