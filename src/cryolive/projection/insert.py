"""Fourier reconstruction by slice insertion (the adjoint of :class:`~cryolive.projection.Projector`).

    V^ = sum_i w_i P_i^T (a_i C_i X^_i) / ( sum_i w_i P_i^T (a_i^2 C_i^2) + 1/tau^2(s) )

Image transforms (centred, ``rfft2`` layout) are first re-centred (shifted by ``+origin``), then inserted with
trilinear weights into a numerator (complex64) and a denominator (float32) on the Hermitian half grid
``(N, N, N // 2 + 1)`` of the padded box ``N = pad n`` (:mod:`cryolive.projection.gridding`): each pixel ``p`` with
value ``v`` stands for ``(p, v)`` and its Friedel mate ``(-p, conj v)``; whichever of the two has ``x >= 0`` is
inserted, and the ``x = 0`` plane, which receives both, is made Hermitian once when the grids are read. Only the
``kx >= 0`` half of each slice is inserted (the ``kx = 0`` column, which holds both ``ky`` and ``-ky``, with weight
1/2). On NumPy the insertion is a compiled loop (:mod:`cryolive.projection._kernels`) with no temporaries the size
of the grid. Accumulators add across batches (and across machines: :meth:`add`). With a symmetry group each image
is inserted once and the accumulated grids are symmetrised when read (``symmetrise='grid'``, as RELION does;
``'insert'`` inserts every image once per operator instead: exact, and slower by the group's order). ``finalize``
divides, transforms back (a real inverse FFT of the half grid, in z-slabs to bound memory), crops, divides by the
gridding correction (the trilinear kernel's ``sinc^2``) and blends the corners outside the inscribed sphere into
their mean, as RELION does: the corners hold no data, only noise that the correction lifts, and left in they cost
~7 % in the FSC with the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cryolive.backend import scatter_add_all, xp
from cryolive.batching import AdaptiveBatch
from cryolive.image.fourier import cropped_irfftnc, rfft_freqs_2d, shift_phase
from cryolive.image.resample import resample_volume
from cryolive.projection import _kernels
from cryolive.projection.gridding import (
    fold_to_half,
    gridding_correction,
    half_grid_multiplicity,
    half_trilinear_corners,
    slice_points,
    soft_mask_outside_sphere,
    working_box,
)

#: voxels per z-slab when the half grids are read (bounds the temporaries of finalize and symmetrisation)
_SLAB_VOXELS = 1 << 22
_TINY = np.float32(1e-30)
#: device bytes one inserted pixel of one image needs on the way (trilinear corners, weights, values, the scatter's
#: split parts): what sizes the insertion chunks from the free memory
INSERT_BYTES_PER_PIXEL = 600


def _mirror_plane(plane: Any) -> Any:
    """``out[z, y] = plane[-z, -y]`` for a centred, even-sized periodic ``(N, N)`` plane."""
    m = xp()
    return m.roll(plane[::-1, ::-1], 1, axis=(0, 1))


class Reconstructor:
    """Numerator/denominator accumulators for one map (use two for half maps).

    Parameters
    ----------
    box: image box ``n`` (pixels); pad: padding factor (2); symmetry: point group name (``'C1'``, ``'D2'``, ...);
    max_freq: only image frequencies up to this (cycles/pixel of the box ``n``) are inserted, into the padded grid
    of the working box ``grid_box`` (:func:`~cryolive.projection.gridding.working_box`): accumulators, insertion
    and :meth:`finalize` then scale with the resolution; the map is still returned at the box ``n`` (zero beyond
    ``max_freq``).

    ``numerator`` (complex64) and ``denominator`` (float32) are flat half grids ``(N, N, N // 2 + 1)``,
    ``N = pad * box``, as inserted (the ``x = 0`` plane not yet made Hermitian: :meth:`hermitian_accumulators`).
    """

    def __init__(self, box: int, pad: int = 2, symmetry: str = "C1", symmetrise: str = "grid",
                 max_freq: float = 0.5) -> None:
        m = xp()
        if symmetrise not in ("grid", "insert"):
            raise ValueError(f"symmetrise must be 'grid' or 'insert', not {symmetrise!r}")
        self.box = int(box)
        self.pad = int(pad)
        self.grid_box = working_box(self.box, max_freq)
        self.max_freq = 0.5 if self.grid_box == self.box else float(max_freq)
        self.big = self.pad * self.grid_box
        self._scale = float(self.pad * self.box)  # grid units per cycle/pixel of the box n
        self.symmetry = symmetry
        self.symmetrise = symmetrise
        self._ops = _symmetry_ops(symmetry)
        size = self.big * self.big * (self.big // 2 + 1)
        self.numerator = m.zeros(size, dtype=m.complex64)
        self.denominator = m.zeros(size, dtype=m.float32)
        self.n_images = 0
        ky, kx = rfft_freqs_2d(self.box)
        self._kx, self._ky = kx, ky
        # inserted pixels: inside Nyquist, with the kx = 0 column (it holds ky and -ky) at half weight
        r2 = (kx * kx + ky * ky).ravel()
        self._sel = m.nonzero(r2 <= self.max_freq**2)[0]
        self._kx_sel = m.ascontiguousarray(kx.ravel()[self._sel], dtype=m.float32)
        self._ky_sel = m.ascontiguousarray(ky.ravel()[self._sel], dtype=m.float32)
        self._col_weight = m.where(self._kx_sel == 0, 0.5, 1.0).astype(m.float32)
        self.chunks = AdaptiveBatch(None, label="insertion")  # images per insertion step (see insert)

    def insert(self, f_images: Any, rotations: Any, ctf: Any = None, shifts: Any = None,
               weights: Any = None, noise_power: Any = None, take: Any = None) -> None:
        """Insert image transforms ``(B, n, n // 2 + 1)`` taken at RELION poses ``rotations (B, 3, 3)``.

        ``ctf``: CTF values of the same shape (None = 1); ``shifts``: ``(B, 2)`` origins in pixels (images are
        re-centred by shifting ``+origin``); ``weights``: ``(B,)`` pose weights / scales ``w_i a_i``... applied to
        both terms as ``w`` (numerator ``w C X``, denominator ``w C^2``); ``noise_power``: per-pixel ``sigma^2``
        broadcastable to one image (both terms divided by it). ``take``: positions ``(B,)`` (host integers) of the
        images to insert in ``f_images`` and ``ctf``, which then hold a whole batch (the other arguments are for the
        ``B`` images taken): the selection is then copied chunk by chunk.

        The images go in chunks that fit the device's free memory (:class:`~cryolive.batching.AdaptiveBatch`,
        ``INSERT_BYTES_PER_PIXEL`` a pixel): every chunk is one all-or-nothing step (its temporaries are all made
        before one :func:`~cryolive.backend.scatter_add_all`), so on out-of-memory the chunk is halved and the
        insertion goes on without adding any image twice; the smaller chunk is kept for later calls.
        """
        rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        b = rot.shape[0]
        n_src = len(f_images)
        take = None if take is None else np.asarray(take)

        def rows(a: Any, s: int, e: int, count: int, pos: Any) -> Any:  # per-image arguments cut to the chunk
            if a is None or np.ndim(a) == 0 or len(a) != count or count == 1:
                return a
            return a[s:e] if pos is None else a[pos]

        def chunk(s: int, e: int, op: np.ndarray) -> None:
            pos = None if take is None else take[s:e]
            data, c2 = self._weighted(rows(f_images, s, e, n_src, pos), rows(ctf, s, e, n_src, pos),
                                      rows(shifts, s, e, b, None), rows(weights, s, e, b, None), noise_power)
            self._insert_slices(data, c2, rot[s:e] @ op)

        per_image = INSERT_BYTES_PER_PIXEL * int(self._sel.size)
        for op in self._ops if self.symmetrise == "insert" else self._ops[:1]:
            for _ in self.chunks.run(b, lambda s, e, op=op: chunk(s, e, op), item_bytes=per_image):
                pass
        self.n_images += b

    def _weighted(self, f_images: Any, ctf: Any, shifts: Any, weights: Any, noise_power: Any) -> tuple[Any, Any]:
        """The inserted terms at the selected pixels, ``w C X`` (complex64) and ``w C^2`` (float32), ``(B, P)``."""
        m = xp()
        f = m.asarray(f_images).astype(m.complex64)
        b = f.shape[0]
        if shifts is not None:
            s = m.asarray(shifts, dtype=m.float32)
            f = f * shift_phase(self._kx, self._ky, s[:, 0], s[:, 1])
        sel = self._sel
        f = f.reshape(b, -1)[:, sel]
        if ctf is None:
            c = m.ones((1, sel.size), dtype=m.float32)
        else:
            c = m.asarray(ctf, dtype=m.float32).reshape(-1, self._kx.size)[:, sel]
        scale = self._col_weight[None]
        if weights is not None:
            scale = scale * m.asarray(weights, dtype=m.float32).reshape(-1, 1)
        if noise_power is not None:
            scale = scale / m.broadcast_to(m.asarray(noise_power, dtype=m.float32), self._kx.shape).ravel()[sel]
        data = (f * (c * scale)).astype(m.complex64)
        c2 = m.ascontiguousarray(m.broadcast_to(c * c * scale, f.shape), dtype=m.float32)
        return data, c2

    def _insert_slices(self, data: Any, c2: Any, rot: np.ndarray) -> None:
        """Scatter ``data (B, P)`` and ``c2 (B, P)`` (the selected pixels) at poses ``rot (B, 3, 3)``."""
        m = xp()
        if m is np and _kernels.available():
            _kernels.scatter(self.numerator, self.denominator, np.ascontiguousarray(rot, dtype=np.float32),
                             self._kx_sel, self._ky_sel, np.ascontiguousarray(data), c2, self.big, self._scale)
            return
        pts, flipped = fold_to_half(slice_points(rot, self._kx_sel, self._ky_sel, self._scale))
        data = m.where(flipped, data.conj(), data)
        idx, wts = half_trilinear_corners(pts, self.big)
        flat_idx = m.concatenate([i.ravel() for i in idx])
        w = m.stack(wts)
        # one step: both value arrays exist before either accumulator changes
        scatter_add_all([(self.numerator, flat_idx, (w * data[None]).ravel()),
                         (self.denominator, flat_idx, (w * c2[None]).ravel())])

    def add(self, other: Reconstructor) -> None:
        """Add another reconstructor's accumulators (same box, pad and symmetry)."""
        _check_same_grid(self, other)
        self.numerator += other.numerator
        self.denominator += other.denominator
        self.n_images += other.n_images

    def blend(self, other: Reconstructor, rate: float, weight: float = 1.0) -> None:
        """Running average of the accumulators (online EM): ``self <- (1 - rate) self + rate weight other`` (same
        box and padding); ``weight`` scales ``other`` first (e.g. N / minibatch size, when a minibatch stands for
        the whole set). ``n_images`` becomes the effective count ``(1 - rate) n_self + rate weight n_other``."""
        _check_same_grid(self, other)
        self.numerator *= 1.0 - rate
        self.numerator += (rate * weight) * other.numerator
        self.denominator *= 1.0 - rate
        self.denominator += (rate * weight) * other.denominator
        self.n_images = int(round((1.0 - rate) * self.n_images + rate * weight * other.n_images))

    def grown(self, max_freq: float) -> Reconstructor:
        """A new reconstructor with these accumulators in the (larger or equal) working box of ``max_freq``: the
        same frequencies on the same spacing, so the smaller half grid is the centre of the larger one (the
        ``kx = 0 ..`` columns at the start) and the values are unchanged; zero beyond. What lets online EM blend
        the accumulators of iterations that worked in different boxes. ValueError if ``max_freq``'s box is
        smaller than this one's."""
        out = Reconstructor(self.box, self.pad, self.symmetry, self.symmetrise, max_freq=max_freq)
        if out.grid_box < self.grid_box:
            raise ValueError(f"cannot grow the accumulators of a working box of {self.grid_box} px into "
                             f"{out.grid_box} px")
        big, small = out.big, self.big
        o = big // 2 - small // 2
        for name in ("numerator", "denominator"):
            dst = getattr(out, name).reshape(big, big, big // 2 + 1)
            dst[o:o + small, o:o + small, :small // 2 + 1] = getattr(self, name).reshape(small, small, small // 2 + 1)
        out.n_images = self.n_images
        return out

    def copy(self) -> Reconstructor:
        """A deep copy of the accumulators."""
        out = Reconstructor.__new__(Reconstructor)
        out.__dict__.update(self.__dict__)
        out.numerator = self.numerator.copy()
        out.denominator = self.denominator.copy()
        return out

    def _summed(self, plus: Reconstructor | None) -> list[Reconstructor]:
        """This reconstructor and ``plus`` (if given, checked to share its grid): the accumulators to add."""
        if plus is None:
            return [self]
        _check_same_grid(self, plus)
        return [self, plus]

    def _column_readers(self, plus: Reconstructor | None) -> tuple[Callable[[int, int], Any],
                                                                   Callable[[int, int], Any]]:
        """Readers of the numerator's and the denominator's columns ``[:, :, j0:j1]`` (new arrays) with ``plus``'s
        added and Friedel symmetry imposed on the ``x = 0`` plane (and the point group's, with
        ``symmetrise='grid'``). Without symmetry the accumulators are never copied whole."""
        if self.symmetrise == "grid" and len(self._ops) > 1:
            num, den = self.hermitian_accumulators(plus)
            return (lambda j0, j1: num[:, :, j0:j1]), (lambda j0, j1: den[:, :, j0:j1])
        recs = self._summed(plus)
        return (_hermitian_columns([r.numerator for r in recs], self.big, conjugate=True),
                _hermitian_columns([r.denominator for r in recs], self.big, conjugate=False))

    def hermitian_accumulators(self, plus: Reconstructor | None = None) -> tuple[Any, Any]:
        """Numerator and denominator half grids ``(N, N, N // 2 + 1)`` (new arrays) with Friedel symmetry imposed on
        the ``x = 0`` plane, and the point group's (with ``symmetrise='grid'``: ``sum_g acc(g k)``, trilinear, as
        RELION symmetrises its back-projector). ``plus``: another reconstructor whose accumulators are added first
        (the full map from two half sets without a third copy)."""
        recs, h = self._summed(plus), self.big // 2 + 1
        num = _hermitian_columns([r.numerator for r in recs], self.big, conjugate=True)(0, h)
        den = _hermitian_columns([r.denominator for r in recs], self.big, conjugate=False)(0, h)
        if self.symmetrise == "grid" and len(self._ops) > 1:
            num, den = _symmetrised_half(num, den, self._ops[1:])
        return num, den

    def finalize(self, ssnr: Any = None, wiener_constant: float | None = None,
                 plus: Reconstructor | None = None) -> Any:
        """The reconstructed volume ``(n, n, n)`` float32 on the backend.

        Regularisation ``1/tau^2``: with ``ssnr`` (per shell of the *original* box, index = radius in pixels,
        e.g. from :func:`cryolive.resolution.fsc.ssnr_from_fsc`), ``1/tau^2(s) = <den>_shell / SSNR(s)`` (RELION's
        tau2 from the FSC); otherwise a constant ``wiener_constant`` times the mean denominator over the sphere
        (default 1e-3: nearly unregularised, for clean data). ``plus``: finalize the sum of this reconstructor's
        and ``plus``'s accumulators (neither is changed). Without symmetry the grid is divided and transformed a
        few columns at a time: the memory beyond the accumulators is about half of one of them.
        """
        m = xp()
        big, h = self.big, self.big // 2 + 1
        num_columns, den_columns = self._column_readers(plus)
        step = max(1, _SLAB_VOXELS // (big * big))
        chunks = [(j, min(h, j + step)) for j in range(0, h, step)]
        mult = half_grid_multiplicity(big)
        if ssnr is not None:
            ssnr_arr = m.asarray(np.asarray(ssnr, dtype=np.float64), dtype=m.float32)
            nshell = len(ssnr_arr)
            sums = m.zeros(nshell, dtype=m.float64)
            counts = m.zeros(nshell, dtype=m.float64)
            for j0, j1 in chunks:
                shell = m.clip(m.rint(self._radius(j0, j1)).astype(m.int32), 0, nshell - 1).ravel()
                wts = m.broadcast_to(mult[j0:j1], (big, big, j1 - j0))
                sums += m.bincount(shell, weights=(den_columns(j0, j1) * wts).ravel(), minlength=nshell)[:nshell]
                counts += m.bincount(shell, weights=wts.ravel(), minlength=nshell)[:nshell]
            tau_inv = (sums / m.maximum(counts, 1) / m.maximum(ssnr_arr, 1e-6)).astype(m.float32)
        else:
            total = weight = 0.0
            for j0, j1 in chunks:
                wts = mult[j0:j1] * (self._radius(j0, j1) <= self.max_freq * self.box)
                total += float((den_columns(j0, j1) * wts).sum())
                weight += float(wts.sum())
            k = 1e-3 if wiener_constant is None else wiener_constant
            reg_const = k * total / max(weight, 1.0) + 1e-12

        def ratio(j0: int, j1: int) -> Any:
            num, den = num_columns(j0, j1), den_columns(j0, j1)
            r = self._radius(j0, j1)
            reg = tau_inv[m.clip(m.rint(r).astype(m.int32), 0, nshell - 1)] if ssnr is not None else reg_const
            # den + reg is 0 only where no data came (beyond a working box's radius), and there num is 0 too
            return m.where(r <= self.grid_box / 2, num / m.maximum(den + reg, _TINY), 0).astype(m.complex64)

        vol = cropped_irfftnc(ratio, big, self.grid_box)
        vol = soft_mask_outside_sphere(vol / gridding_correction(big, self.grid_box))
        if self.grid_box < self.box:  # back to the box n, the same transform values (see Projector)
            vol = resample_volume(vol, self.box) * np.float32((self.grid_box / self.box) ** 3)
        return vol.astype(m.float32)

    def _radius(self, j0: int, j1: int) -> Any:
        """Radius (pixels of the original box) of the half-grid voxels in columns ``x = j0:j1``,
        ``(N, N, j1 - j0)``."""
        m = xp()
        big = self.big
        c = m.arange(big, dtype=m.float32) - big // 2
        x = m.arange(j0, j1, dtype=m.float32)
        return m.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + x[None, None, :] ** 2) / self.pad


def _hermitian_columns(grids: list[Any], big: int, conjugate: bool) -> Callable[[int, int], Any]:
    """A reader of the columns ``[:, :, j0:j1]`` (new arrays) of the sum of the flat half grids ``grids``
    ``(N, N, N // 2 + 1)``, ``N = big``, with Friedel symmetry imposed on the ``x = 0`` plane, which holds both
    ``k`` and ``-k``: ``plane + mirror(plane)``, the mirror conjugated for the complex numerator (``conjugate``)."""
    h = big // 2 + 1
    arrays = [g.reshape(big, big, h) for g in grids]
    plane = sum(a[:, :, 0] for a in arrays)
    mirror = _mirror_plane(plane)
    plane = plane + (mirror.conj() if conjugate else mirror)

    def columns(j0: int, j1: int) -> Any:
        out = arrays[0][:, :, j0:j1].copy()
        for a in arrays[1:]:
            out += a[:, :, j0:j1]
        if j0 == 0:
            out[:, :, 0] = plane
        return out

    return columns


def _check_same_grid(a: Reconstructor, b: Reconstructor) -> None:
    """ValueError unless ``a`` and ``b`` accumulate on the same grid (box, padding and working box)."""
    if (a.box, a.pad, a.grid_box) != (b.box, b.pad, b.grid_box):
        raise ValueError("cannot combine reconstructors of different box, padding or working box")


def _sample_half(grid: Any, points: Any, conjugate: bool) -> Any:
    """Trilinear values of a half grid ``(N, N, N // 2 + 1)`` at points ``(..., 3)`` (x, y, z, padded-grid units,
    centred), read at ``-p`` (and conjugated when ``conjugate``) where ``x < 0``."""
    m = xp()
    big = grid.shape[0]
    pts, flipped = fold_to_half(points)
    idx, wts = half_trilinear_corners(pts, big)
    flat = grid.ravel()
    vals = wts[0] * flat[idx[0]]
    for i, w in zip(idx[1:], wts[1:], strict=True):
        vals += w * flat[i]
    return m.where(flipped, vals.conj(), vals) if conjugate else vals


def _symmetrised_half(num: Any, den: Any, ops: list[np.ndarray]) -> tuple[Any, Any]:
    """``sum_g acc(g k)`` over the identity and ``ops`` for both half grids, z-slab by z-slab (90/180 deg operators
    land on grid points, so their trilinear reads are exact gathers)."""
    m = xp()
    big, h = num.shape[0], num.shape[2]
    out_num, out_den = num.copy(), den.copy()
    slab = max(1, _SLAB_VOXELS // (big * h * 4))
    y = m.arange(big, dtype=m.float32) - big // 2
    x = m.arange(h, dtype=m.float32)
    ops_dev = [m.asarray(op, dtype=m.float32) for op in ops]
    for z0 in range(0, big, slab):
        z1 = min(big, z0 + slab)
        z = m.arange(z0, z1, dtype=m.float32) - big // 2
        shape = (z1 - z0, big, h)
        q = m.stack([m.broadcast_to(x[None, None, :], shape), m.broadcast_to(y[None, :, None], shape),
                     m.broadcast_to(z[:, None, None], shape)], axis=-1)  # (..., 3) as (x, y, z)
        for op in ops_dev:
            src = q @ op.T  # S q for each voxel q
            out_num[z0:z1] += _sample_half(num, src, conjugate=True)
            out_den[z0:z1] += _sample_half(den, src, conjugate=False)
    return out_num, out_den


def _symmetry_ops(name: str) -> list[np.ndarray]:
    """Operators of a point group as matrices acting on the right of RELION's ``A`` (identity first)."""
    if name.upper() == "C1":
        return [np.eye(3)]
    from cryolive.rotations.symmetry import symmetry_operators

    return list(symmetry_operators(name))
