"""Change the box of images and maps in Fourier space (crop = bin, pad = interpolate), keeping the physical extent.

A box-``n`` image at pixel size ``p`` resampled to box ``m`` has pixel size ``p * n / m``; Fourier index ``k``
keeps its meaning (``k / (n p)`` cycles/Å), so the same physical frequencies line up in both boxes. Cropping
(``m < n``) drops the frequencies beyond the new Nyquist; padding (``m > n``) adds zeros beyond the old Nyquist —
there is no information there, which is why a class FSC past the data's Nyquist is not real (docs/classification.md,
"Class box and the FSC in heterogeneous refinement").

Scaling: with FFT sum conventions, images and volumes both get the factor ``(m / n)^3`` on their transforms, so the
projection-slice theorem still holds between the resampled images and the resampled map (a central slice of the
3D transform equals the 2D transform of the projection), and the resampled map keeps its real-space voxel values.
This is the same as scaling the rotation by ``m / n`` during insertion, as cryoSPARC's heterogeneous refinement does.
"""

from __future__ import annotations

from typing import Any

from cryolive.backend import xp
from cryolive.image.fourier import fftnc, ifftnc


def _rows(n: int, m: int) -> tuple[Any, Any]:
    """Row indices of an uncentred FFT axis of length ``n`` kept in one of length ``m`` (and where they go)."""
    x = xp()
    h = min(n, m) // 2
    src = x.concatenate([x.arange(0, h), x.arange(n - h + 1, n)])
    dst = x.concatenate([x.arange(0, h), x.arange(m - h + 1, m)])
    return src, dst


def box_for_resolution(n: int, pixel_size: float, resolution_A: float) -> int:
    """Smallest even box (16 to ``n``) to crop a box-``n`` image or map of ``pixel_size`` Å to, so that its
    Nyquist, ``2 n pixel_size / box`` Å, is at or finer than ``resolution_A / 1.2`` (a margin so the soft edge of
    a low-pass at ``resolution_A`` fits)."""
    import numpy as np

    m = int(np.ceil(2.0 * n * pixel_size * 1.2 / resolution_A))
    m += m % 2
    return int(min(max(m, 16), n))


def resample_rfft2(f: Any, n: int, m: int) -> Any:
    """Images' :func:`~cryolive.image.fourier.rfft2c` transforms ``(B, n, n // 2 + 1)`` -> ``(B, m, m // 2 + 1)``.

    Frequencies ``|k| < min(n, m) / 2`` along each axis are kept (the smaller box's Nyquist row is dropped);
    the rest of a larger box is zero. Multiplied by ``(m / n)^3`` (see the module docstring).
    """
    if m == n:
        return f
    x = xp()
    src, dst = _rows(n, m)
    h = min(n, m) // 2
    out = x.zeros(f.shape[:-2] + (m, m // 2 + 1), dtype=f.dtype)
    out[..., dst, :h] = f[..., src, :h]
    return out * ((m / n) ** 3)


def resample_volume(vol: Any, m: int) -> Any:
    """A real map ``(n, n, n)`` resampled to ``(m, m, m)`` over the same extent (voxel size ``* n / m``).

    Fourier crop or zero-pad of the centred 3D transform; voxel values are kept (a map of constant density stays
    the same constant). Returns float32 on the backend.
    """
    x = xp()
    v = x.asarray(vol, dtype=x.float32)
    n = v.shape[0]
    if m == n:
        return v
    f = fftnc(v)
    h = min(n, m) // 2
    cs, cd = n // 2, m // 2
    out = x.zeros((m, m, m), dtype=f.dtype)
    sl_s = slice(cs - h + 1, cs + h)  # |k| < h: the smaller box's Nyquist plane has no partner in the larger
    sl_d = slice(cd - h + 1, cd + h)
    out[sl_d, sl_d, sl_d] = f[sl_s, sl_s, sl_s]
    return (x.real(ifftnc(out)) * (m / n) ** 3).astype(x.float32)
