"""Padding, trilinear interpolation on a centred 3D Fourier grid, and the gridding correction.

The padded Fourier grid has size ``N = pad * n`` on each axis and is *centred*: frequency index ``m`` (cycles per
``N`` voxels, in ``[-N/2, N/2)``) sits at array index ``m + N // 2``; arrays are ``[z, y, x]``. A frequency ``f``
in cycles/pixel of the original box is at ``m = f * N``. The grid is periodic (it is a DFT), so indices wrap.

Trilinear interpolation in Fourier space multiplies real space by ``sinc^2(x / N)`` along each axis (``x`` in
voxels from the centre); :func:`gridding_correction` returns that product so projectors can pre-divide and
reconstructors can post-divide by it.
"""

from __future__ import annotations

from typing import Any

from cryolive.backend import xp


def pad_volume(vol: Any, pad: int = 2) -> Any:
    """Zero-pad a cubic volume ``(n, n, n)`` to ``(pad n,)*3`` keeping the centre voxel at ``N // 2``."""
    m = xp()
    n = vol.shape[0]
    big = pad * n
    out = m.zeros((big, big, big), dtype=m.float32)
    o = big // 2 - n // 2
    out[o:o + n, o:o + n, o:o + n] = vol
    return out


def crop_volume(vol: Any, n: int) -> Any:
    """Inverse of :func:`pad_volume`: the central ``(n, n, n)`` block (centre voxel kept at ``n // 2``)."""
    big = vol.shape[0]
    o = big // 2 - n // 2
    return vol[o:o + n, o:o + n, o:o + n]


def gridding_correction(big: int, n: int | None = None) -> Any:
    """Separable ``sinc^2(x/N) sinc^2(y/N) sinc^2(z/N)`` on a centred grid of size ``big`` (``N``).

    With ``n`` given, returns only the central ``(n, n, n)`` block.
    """
    m = xp()
    size = big if n is None else n
    c = (m.arange(size, dtype=m.float32) - size // 2) / big
    s2 = m.sinc(c) ** 2
    return s2[:, None, None] * s2[None, :, None] * s2[None, None, :]


def trilinear_corners(points: Any, big: int) -> tuple[list[Any], list[Any]]:
    """Flat indices and weights of the 8 grid neighbours of ``points``.

    ``points``: ``(..., 3)`` float32 frequency coordinates **(x, y, z)** in padded-grid units (centred, i.e. 0 is
    the zero frequency). Returns two lists of 8 arrays of shape ``points.shape[:-1]``: flat indices into a
    C-ordered ``(N, N, N)`` ``[z, y, x]`` array (wrapped periodically) and trilinear weights.
    """
    m = xp()
    half = big // 2
    p = points + half
    f = m.floor(p)
    frac = p - f
    i0 = f.astype(m.int64)
    x0, y0, z0 = i0[..., 0] % big, i0[..., 1] % big, i0[..., 2] % big
    x1, y1, z1 = (x0 + 1) % big, (y0 + 1) % big, (z0 + 1) % big
    fx, fy, fz = frac[..., 0], frac[..., 1], frac[..., 2]
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    idx, wts = [], []
    for zi, wz in ((z0, gz), (z1, fz)):
        for yi, wy in ((y0, gy), (y1, fy)):
            row = (zi * big + yi) * big
            wzy = wz * wy
            idx.append(row + x0)
            wts.append(wzy * gx)
            idx.append(row + x1)
            wts.append(wzy * fx)
    return idx, wts


def slice_points(rotations: Any, kx: Any, ky: Any, scale: float) -> Any:
    """3D frequency points ``A^T (kx, ky, 0) * scale`` of central slices, shape ``(B,) + kx.shape + (3,)``.

    ``rotations``: ``(B, 3, 3)`` RELION matrices ``A`` (volume -> image frame); ``kx, ky``: frequency arrays of
    any shape (a 2D grid or a flat list of pixels) in cycles/pixel; ``scale``: padded box size ``N`` (so the
    output is in padded-grid units), (x, y, z) order.
    """
    m = xp()
    a = m.asarray(rotations, dtype=m.float32)
    expand = (slice(None),) + (None,) * kx.ndim + (slice(None),)
    row0 = a[:, 0, :][expand]
    row1 = a[:, 1, :][expand]
    return (kx[None, ..., None] * row0 + ky[None, ..., None] * row1) * scale
