"""Trilinear interpolation on a centred, padded 3D Fourier half grid, the gridding correction and the working box.

The padded Fourier grid has size ``N = pad * n`` on each axis and is *centred*: frequency index ``m`` (cycles per
``N`` voxels, in ``[-N/2, N/2)``) sits at array index ``m + N // 2``; arrays are ``[z, y, x]``. A frequency ``f``
in cycles/pixel of the original box is at ``m = f * N``. The grid is periodic (it is a DFT), so indices wrap.

Trilinear interpolation in Fourier space multiplies real space by ``sinc^2(x / N)`` along each axis (``x`` in
voxels from the centre); :func:`gridding_correction` returns that product so projectors can pre-divide and
reconstructors can post-divide by it.

Maps are real, so their transforms obey ``F(-k) = conj F(k)``: projectors and reconstructors keep
only the **Hermitian half grid** ``(N, N, N // 2 + 1)`` ``[z, y, x]`` (``kz``, ``ky`` centred at ``N // 2``;
``kx = 0 .. N / 2``), half the memory of the full cube. A point with ``x < 0`` is *folded* to ``-p`` (and its
value conjugated) before interpolation (:func:`fold_to_half`, :func:`half_trilinear_corners`).
"""

from __future__ import annotations

from typing import Any

from cryolive.backend import xp


def gridding_correction(big: int, n: int | None = None) -> Any:
    """Separable ``sinc^2(x/N) sinc^2(y/N) sinc^2(z/N)`` on a centred grid of size ``big`` (``N``).

    With ``n`` given, returns only the central ``(n, n, n)`` block.
    """
    m = xp()
    size = big if n is None else n
    c = (m.arange(size, dtype=m.float32) - size // 2) / big
    s2 = m.sinc(c) ** 2
    return s2[:, None, None] * s2[None, :, None] * s2[None, None, :]


def soft_mask_outside_sphere(vol: Any, width_px: float = 3.0) -> Any:
    """Blend the corners of a cubic volume ``(n, n, n)`` beyond the inscribed sphere into their mean (RELION's
    ``softMaskOutsideMap``).

    Voxels within ``n / 2`` pixels of the centre voxel are kept; beyond ``n / 2 + width_px`` they take the mean
    of the region outside the sphere (weighted by the mask); in between a raised cosine blends the two. A
    reconstruction has no data there, only noise lifted by the gridding correction (up to ~1.9x in amplitude at
    the corners of a 2x-padded grid), so a map and its FSC are cleaner without it.
    """
    from cryolive.image.fourier import centered_grid_3d

    m = xp()
    n = vol.shape[0]
    r = centered_grid_3d(n)
    radius = n / 2.0
    edge = m.clip((r - radius) / float(width_px), 0.0, 1.0)
    outside = (0.5 - 0.5 * m.cos(m.pi * edge)).astype(m.float32)
    total = float(outside.sum())
    if total <= 0:
        return vol
    background = (vol * outside).sum() / total
    return vol * (1.0 - outside) + background * outside


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


def half_grid_index_dtype(big: int) -> Any:
    """int32 while every flat index of the ``(N, N, N // 2 + 1)`` half grid fits, else int64."""
    m = xp()
    return m.int32 if big * big * (big // 2 + 1) < 2**31 else m.int64


def fold_to_half(points: Any) -> tuple[Any, Any]:
    """Fold frequency points ``(..., 3)`` (x, y, z) into the ``x >= 0`` half: ``(folded, flipped)`` where
    ``flipped (...)`` marks the points replaced by ``-p`` (their values are the conjugates)."""
    m = xp()
    flipped = points[..., 0] < 0
    return m.where(flipped[..., None], -points, points), flipped


def half_trilinear_corners(points: Any, big: int) -> tuple[list[Any], list[Any]]:
    """Flat indices into the half grid ``(N, N, N // 2 + 1)`` and trilinear weights of the 8 neighbours of
    already folded ``points`` (``(..., 3)``, x, y, z in padded-grid units, ``x >= 0``): two lists of 8 arrays of
    shape ``points.shape[:-1]``. Lower corners are clamped so that every corner is inside the array (``x`` to
    ``[0, N/2 - 1]``, ``y``, ``z`` to ``[-N/2, N/2 - 2]``: a point exactly at the padded Nyquist takes the edge
    value)."""
    m = xp()
    half, h = big // 2, big // 2 + 1
    p = points.astype(m.float32, copy=False)
    shift = m.asarray([0.0, half, half], dtype=m.float32)
    q = p + shift
    upper = m.asarray([half - 1, big - 2, big - 2], dtype=m.float32)
    i0 = m.clip(m.floor(q), 0, upper)
    frac = m.clip(q - i0, 0.0, 1.0)
    i0 = i0.astype(half_grid_index_dtype(big))
    base = (i0[..., 2] * big + i0[..., 1]) * h + i0[..., 0]
    fx, fy, fz = (m.ascontiguousarray(frac[..., i]) for i in range(3))
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    plane = big * h
    wzy = (gz * gy, gz * fy, fz * gy, fz * fy)
    offs = (0, h, plane, plane + h)
    idx, wts = [], []
    for off, w in zip(offs, wzy, strict=True):
        corner = base + off if off else base
        idx.append(corner)
        wts.append(w * gx)
        idx.append(corner + 1)
        wts.append(w * fx)
    return idx, wts


def half_grid_multiplicity(big: int) -> Any:
    """How many voxels of the full cube each half-grid column ``x`` stands for, ``(N // 2 + 1,)`` float32: 1 on
    the ``x = 0`` plane (its own mirror) and on ``x = N/2`` (the padded Nyquist, once in the full cube), 2
    elsewhere. Weighting half-grid sums by it gives the full cube's sums."""
    m = xp()
    w = m.full(big // 2 + 1, 2.0, dtype=m.float32)
    w[0] = 1.0
    w[-1] = 1.0
    return w


def working_box(n: int, max_freq: float) -> int:
    """Smallest even box (at most ``n``) whose padded grid holds every frequency up to ``max_freq`` cycles/pixel of
    a box-``n`` image with its trilinear neighbours: ``2 ceil(max_freq n) + 2``. A grid cut to it holds the same
    physical frequencies as the full one, on the same spacing (see :class:`~cryolive.projection.Projector`)."""
    import math

    if max_freq >= 0.5:
        return int(n)
    m = 2 * math.ceil(max(max_freq, 0.0) * n) + 2
    m += m % 2
    return int(min(max(m, 8), n))


def working_freq(r_align: float, n: int, margin: float, margin_px: float) -> float:
    """Highest frequency (cycles/pixel of a box-``n`` image) an iteration's projectors and reconstructors hold when
    it aligns out to ``r_align`` Fourier pixels: that radius times ``margin`` plus ``margin_px`` pixels, at most
    Nyquist (0.5, the whole box). RELION's ``current_size`` and cryoSPARC's working box follow the resolution so;
    the margin keeps the shells just past the alignment radius (which the next iteration's FSC reads, and where
    the interpolation of the scored pixels reaches). The box it makes: :func:`working_box`."""
    return float(min(0.5, (margin * r_align + margin_px) / n))
