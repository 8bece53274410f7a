"""MRC maps and image stacks.

Arrays are NumPy ``float32``. Maps are indexed ``[z, y, x]`` (the header's axis order ``mapc/mapr/maps`` is
applied here, once); stacks are ``(n, y, x)`` with the image number on axis 0 (a 2-D MRC is a stack of one).
Pixel/voxel sizes are in Å and come from the header voxel size; maps are written with the voxel size set and
the origin at 0. Every write goes to a temporary name in the destination folder and is renamed into place, so a
reader never sees a half-written file, and an existing file is only replaced with ``overwrite=True``.

Files are opened in mrcfile's permissive mode (real files often lack the ``MAP`` ID or a machine stamp); what
cannot be read is reported as :class:`~cryolive.io.errors.InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import warnings
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.resample import resample_volume
from cryolive.io._atomic import check_destination, commit, temp_name
from cryolive.io.errors import InputError

_log = logging.getLogger("cryolive.io")

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True, eq=False)
class MapInput:
    """A map held in memory (a napari layer's data, an array from Python) given to a job in place of an MRC file:
    ``data`` ``(n, n, n)`` indexed ``[z, y, x]``, ``pixel_size`` in Å, ``name`` what messages call it (the
    layer's name). Checked as a file is (:func:`read_matching_map`); a job writes it into its own folder
    (``input_reference.mrc``, …) so the folder alone can be continued. ``str()`` gives ``layer 'name'``."""

    data: Any
    pixel_size: float
    name: str = "array"

    def __str__(self) -> str:
        return f"layer '{self.name}'"


#: a map input: an MRC file's path or a map in memory
MapSource = str | os.PathLike | MapInput


def read_map_source(source: MapSource) -> tuple[np.ndarray, float]:
    """``(data, voxel_size)`` of a map input: :func:`read_map` for a path; for a :class:`MapInput` the same
    checks (3-D, cubic, finite, a positive pixel size) as InputError naming the layer, and a float32 copy (the
    caller may change its array meanwhile)."""
    if not isinstance(source, MapInput):
        return read_map(source)
    arr = np.array(_to_numpy(source.data), dtype=np.float32)
    if arr.ndim != 3:
        raise InputError(f"{source}: holds a {arr.ndim}-D array {arr.shape}; a 3-D map is needed")
    if len(set(arr.shape)) != 1:
        raise InputError(f"{source}: the map is not cubic (z, y, x = {arr.shape}); cryolive needs a cubic box")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"{source}: {int(bad.sum())} voxels are NaN or Inf")
    apix = source.pixel_size
    if not (isinstance(apix, int | float | np.floating | np.integer) and np.isfinite(apix) and apix > 0):
        raise InputError(f"{source}: the pixel size must be a positive number of Å, not {apix!r}")
    return arr, float(apix)


def _to_numpy(a: Any) -> np.ndarray:
    """NumPy view/copy of ``a`` (CuPy arrays are copied from the GPU)."""
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def _open_mrc(path: PathLike, *, mmap: bool = False) -> Any:
    """Open an MRC file read-only (permissive), raising InputError when it is missing or unreadable."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an MRC file")
    why = _not_mrc(p)
    if why:
        raise InputError(f"{p}: not a valid MRC file ({why})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(p, mode="r", permissive=True) if mmap else mrcfile.open(p, mode="r", permissive=True)
        except Exception as exc:  # mrcfile raises ValueError/OSError/EOFError for non-MRC files
            raise InputError(f"{p}: not a readable MRC file ({exc})") from exc
    if mrc.data is None:
        mrc.close()
        truncated = _truncation(p)
        if truncated:
            raise InputError(f"{p}: truncated ({truncated})")
        why = "; ".join(str(w.message) for w in caught if "machine stamp" not in str(w.message))
        raise InputError(f"{p}: not a valid MRC file ({why or 'no data block'})")
    if np.issubdtype(mrc.data.dtype, np.complexfloating):
        mrc.close()
        raise InputError(f"{p}: holds complex (Fourier-space) data; cryolive reads real-space MRC files only")
    return mrc


def _not_mrc(p: Path) -> str | None:
    """Why ``p`` cannot be an MRC file, from its size and its header's extended-header length, or None. Checked
    before mrcfile opens it: for a file that is not MRC (text, another format) mrcfile would try to read as many
    bytes as the garbage says (seconds and gigabytes of memory)."""
    size = p.stat().st_size
    if size < 1024:
        return f"{size} bytes, less than the 1024 of an MRC header"
    with open(p, "rb") as f:
        head = f.read(1024)
    if any(0 <= int(np.frombuffer(head, f"{order}i4", 1, 92)[0]) <= size - 1024 for order in "<>"):
        return None
    return "its header's extended-header length runs past the end of the file"


def _header_axes(mrc: Any) -> tuple[int, int, int]:
    h = mrc.header
    return int(h.mapc), int(h.mapr), int(h.maps)


def _truncation(p: Path) -> str | None:
    """What the header promises against what the file holds, when the file is shorter (None otherwise)."""
    try:
        with warnings.catch_warnings():  # the header's faults were reported by the first open
            warnings.simplefilter("ignore")
            m = mrcfile.open(p, mode="r", permissive=True, header_only=True)
        with m:
            h = m.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
            itemsize = mrcfile.utils.data_dtype_from_header(h).itemsize
            offset = 1024 + int(h.nsymbt)
    except Exception:  # noqa: BLE001 - no usable header: not a truncation we can describe
        return None
    frame = nx * ny * itemsize
    held = (p.stat().st_size - offset) / frame if frame else 0.0
    if frame <= 0 or held >= nz:
        return None
    return f"the header says {nz} images of {nx} x {ny}, the file holds {held:.1f}"


def read_map(path: PathLike, pixel_size: float | None = None) -> tuple[np.ndarray, float]:
    """Read a 3-D map: ``(data, voxel_size)`` with ``data`` float32 ``[z, y, x]`` and the voxel size in Å.

    ``pixel_size`` overrides the header (needed when the header voxel size is 0). Raises InputError when the
    file is missing or not an MRC file, is not 3-D or not cubic, has non-cubic voxels, holds NaN/Inf values,
    or has no voxel size and none is given.
    """
    p = Path(path)
    with _open_mrc(p) as mrc:
        data = mrc.data
        if data.ndim != 3:
            raise InputError(f"{p}: holds a {data.ndim}-D array {data.shape}; a 3-D map is needed")
        axes = _header_axes(mrc)
        if sorted(axes) != [1, 2, 3]:
            raise InputError(f"{p}: invalid axis order mapc/mapr/maps = {axes} in the header")
        # data is indexed [section, row, column] = axes (maps, mapr, mapc) in x=1, y=2, z=3 labels
        current = (axes[2], axes[1], axes[0])
        arr = np.array(data, dtype=np.float32)
        if current != (3, 2, 1):
            arr = np.ascontiguousarray(np.transpose(arr, [current.index(3), current.index(2), current.index(1)]))
        vox = mrc.voxel_size
        vsize = (float(vox.x), float(vox.y), float(vox.z))
    if len(set(arr.shape)) != 1:
        raise InputError(f"{p}: the map is not cubic (z, y, x = {arr.shape}); cryolive needs a cubic box")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"{p}: {int(bad.sum())} voxels are NaN or Inf")
    if pixel_size is not None:
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"{p}: pixel_size must be a positive number of Å, not {pixel_size!r}")
        return arr, float(pixel_size)
    if vsize[0] <= 0:
        raise InputError(f"{p}: the header voxel size is 0 (not set); set it in the header (e.g. relion_image_handler "
                         "--i MAP --o NEW --angpix Å) or pass pixel_size= (Å) from Python")
    if not np.allclose(vsize, vsize[0], rtol=1e-3):
        raise InputError(f"{p}: voxels are not cubic (x, y, z = {vsize} Å); cryolive needs cubic voxels")
    return arr, vsize[0]


def write_map(path: PathLike, data: Any, pixel_size: float, overwrite: bool = False) -> None:
    """Write a 3-D map (``[z, y, x]``, any real dtype, NumPy or CuPy) as float32 MRC with voxel size ``pixel_size``
    Å and origin 0, atomically. FileExistsError if ``path`` exists and ``overwrite`` is False."""
    arr = np.ascontiguousarray(_to_numpy(data), dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"{path}: a map must be 3-D, got shape {arr.shape}")
    _check_pixel_size(path, pixel_size)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: refusing to write a map with NaN/Inf values")
    dest = check_destination(path, overwrite)
    tmp = temp_name(dest)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.new(tmp, overwrite=True) as mrc:
                mrc.set_data(arr)
                mrc.set_volume()
                mrc.voxel_size = float(pixel_size)
                mrc.header.origin = (0.0, 0.0, 0.0)
                mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, dest, overwrite)


def check_map_content(arr: np.ndarray, path: MapSource, what: str = "map") -> None:
    """Refuse a map that carries no structure: all zeros, or one constant value (InputError naming ``path``).

    A refinement or classification started from such a map aligns particles to nothing and reports a
    resolution out of noise (an all-zero reference used to report 8.98 Å where the truth said 45 Å).
    """
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi == 0.0:
        raise InputError(f"{path}: the {what} is all zeros")
    if hi - lo <= 1e-6 * max(abs(lo), abs(hi)):
        raise InputError(f"{path}: the {what} is constant ({lo:.6g} everywhere)")


def _matched(vol: np.ndarray, apix: float, path: MapSource, box: int, pixel_size: float, particles: PathLike,
             what: str) -> np.ndarray:
    """``vol`` (read from ``path`` at ``apix`` Å/voxel) brought to the particles' box ``box`` and pixel size
    ``pixel_size`` (Å) when it has another one, as RELION does with a reference: Fourier-resampled to the nearest
    box that gives the particles' voxel size over the same extent, then padded with its edge mean or cropped
    around the centre. Each change is reported in one line on the ``cryolive.io`` logger (jobs copy it into their
    log)."""
    n = vol.shape[0]
    if abs(apix - pixel_size) > 0.01 * pixel_size:
        m = max(2, int(round(n * apix / pixel_size / 2)) * 2)
        vol = to_numpy(resample_volume(vol, m))
        new_apix = apix * n / m
        if abs(new_apix - pixel_size) > 0.02 * pixel_size:
            raise InputError(f"{path}: {what} voxel size {apix:.4f} Å cannot be brought to the particles' "
                             f"{pixel_size:.4f} Å ({particles}) within 2 %; resample it first")
        _log.warning(f"{path}: {what} resampled from {apix:.4f} Å/voxel (box {n}) to {new_apix:.4f} Å (box {m}), "
                     f"the particles' pixel size is {pixel_size:.4f} Å ({particles})")
        n = m
    if n != box:
        vol = _fit_box(vol, box)
        _log.warning(f"{path}: {what} {'padded' if n < box else 'cropped'} from box {n} to the particles' box {box}")
    return np.asarray(vol, np.float32)


def _fit_box(vol: np.ndarray, box: int) -> np.ndarray:
    """``vol (n, n, n)`` centred in a ``(box,)*3`` volume: cropped around the centre, or padded with the mean of
    its outermost voxels (so no step appears at the old edge)."""
    n = vol.shape[0]
    if n > box:
        s = n // 2 - box // 2
        return vol[s:s + box, s:s + box, s:s + box].copy()
    edge = np.concatenate([vol[[0, -1]].ravel(), vol[:, [0, -1]].ravel(), vol[:, :, [0, -1]].ravel()])
    out = np.full((box,) * 3, float(edge.mean()), np.float32)
    s = box // 2 - n // 2
    out[s:s + n, s:s + n, s:s + n] = vol
    return out


def read_matching_map(path: MapSource, box: int, pixel_size: float, particles: PathLike,
                      what: str = "reference map") -> np.ndarray:
    """Read a map for particles of ``box`` and ``pixel_size`` (resampled, padded or cropped to them when it
    differs, see :func:`_matched`) that carries structure. ``path``: an MRC file or a :class:`MapInput`.

    InputError naming ``path`` (the layer, for a MapInput) for NaN/Inf (see :func:`read_map`) or an all-zero or
    constant map (:func:`check_map_content`).
    """
    vol = _matched(*read_map_source(path), path, box, pixel_size, particles, what)
    check_map_content(vol, path, what)
    return vol


def check_mask_values(mask: np.ndarray, path: MapSource, what: str = "mask") -> None:
    """A mask must lie in ``[0, 1]`` and select something (InputError naming ``path`` otherwise)."""
    lo, hi = float(mask.min()), float(mask.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(f"{path}: a {what} must lie in [0, 1] (found {lo:.3g} .. {hi:.3g})")
    if hi < 1e-3:
        raise InputError(f"{path}: the {what} is all zeros: it selects no voxel")


def read_matching_mask(path: MapSource, box: int, pixel_size: float, particles: PathLike,
                       what: str = "mask") -> np.ndarray:
    """:func:`read_matching_map` for a mask: values in ``[0, 1]``, not all zero (a constant 1 is allowed)."""
    raw, apix = read_map_source(path)
    check_mask_values(raw, path, what)  # the user's values; resampling may ring slightly outside [0, 1]
    return np.clip(_matched(raw, apix, path, box, pixel_size, particles, what), 0.0, 1.0)


def _check_pixel_size(path: PathLike, pixel_size: float) -> None:
    if not (isinstance(pixel_size, int | float | np.floating | np.integer) and np.isfinite(pixel_size)
            and pixel_size > 0):
        raise ValueError(f"{path}: pixel_size must be a positive number of Å, not {pixel_size!r}")


class MrcStack:
    """A memory-mapped, read-only MRC image stack ``(n, box, box)``; images are read on demand.

    ``len(stack)`` images of ``box`` x ``box`` pixels, ``pixel_size`` in Å from the header (0.0 when the
    header does not set it). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._mrc = _open_mrc(self.path, mmap=True)
        data = self._mrc.data
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            self._mrc.close()
            raise InputError(f"{self.path}: holds a {data.ndim}-D array {data.shape}, not an image stack")
        if _header_axes(self._mrc)[:2] != (1, 2):
            self._mrc.close()
            raise InputError(f"{self.path}: unsupported axis order mapc/mapr = {_header_axes(self._mrc)[:2]} "
                             "for an image stack (expected 1, 2)")
        n, ny, nx = data.shape
        if ny != nx:
            self._mrc.close()
            raise InputError(f"{self.path}: the images are not square ({nx} x {ny} pixels)")
        self._data = data
        self.box = int(nx)
        self.pixel_size = float(self._mrc.voxel_size.x)

    def __len__(self) -> int:
        return self._data.shape[0]

    def __repr__(self) -> str:
        return f"MrcStack({str(self.path)!r}, n={len(self)}, box={self.box}, pixel_size={self.pixel_size:g})"

    def read(self, indices: Any) -> np.ndarray:
        """Images ``indices`` (0-based, any order, repeats allowed) as float32 ``(B, box, box)``.

        Raises InputError naming the file and the index when an index is out of range, and naming the image
        when it holds NaN/Inf values.
        """
        if self._data is None:
            raise ValueError(f"{self.path}: the stack is closed")
        idx = np.asarray(indices)
        if idx.ndim == 0:
            idx = idx[None]
        if idx.size == 0:
            return np.zeros((0, self.box, self.box), np.float32)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{self.path}: image indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).ravel()
        n = len(self)
        bad = (idx < 0) | (idx >= n)
        if bad.any():
            first = int(idx[bad][0])
            raise InputError(f"{self.path}: image index {first} (0-based) is out of range; the stack holds "
                             f"{n} images")
        uniq, inverse = np.unique(idx, return_inverse=True)
        block = np.array(self._data[uniq], dtype=np.float32)
        self._release_pages()
        finite = np.isfinite(block).all(axis=(1, 2))
        if not finite.all():
            first = int(uniq[~finite][0])
            raise InputError(f"{self.path}: image {first} (0-based; {first + 1}@ in RELION) contains NaN or Inf "
                             "values")
        if len(uniq) == len(idx) and np.array_equal(uniq, idx):
            return block
        return block[inverse.ravel()]

    def _release_pages(self) -> None:
        """Drop the file pages read so far from this process's mapping (``MADV_DONTNEED``; they stay in the page
        cache): a job that reads a whole stack batch by batch keeps memory flat in the number of particles instead
        of holding every page it has read."""
        mm = getattr(self._mrc.data, "_mmap", None) if self._mrc is not None else None
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if mm is not None and advice is not None:
            with contextlib.suppress(OSError, ValueError):
                mm.madvise(advice)

    def close(self) -> None:
        """Release the memory map (idempotent)."""
        if self._mrc is not None:
            self._data = None
            self._mrc.close()
            self._mrc = None

    def __enter__(self) -> MrcStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stack(path: PathLike) -> MrcStack:
    """Open an MRC image stack memory-mapped and read-only (a 2-D MRC counts as a stack of one image)."""
    return MrcStack(path)


class StackWriter:
    """Write an MRC stack of ``n`` images of ``box`` x ``box`` pixels batch by batch, never all in memory.

    The file is created memory-mapped at a temporary name in the destination folder; assign images with
    ``w[i0:i1] = imgs`` (or ``w[i] = img`` or an index array); a successful :meth:`close` (or leaving the
    ``with`` block without an exception) writes the header statistics and renames the file into place. Leaving
    with an exception, or closing before every image was assigned, removes the temporary file.
    ``float16=True`` stores MRC mode 12 (half precision; values beyond +-65504 are refused).
    """

    def __init__(self, path: PathLike, n: int, box: int, pixel_size: float, overwrite: bool = False,
                 float16: bool = False, tmp: PathLike | None = None):
        if int(n) < 1 or int(box) < 1:
            raise ValueError(f"{path}: a stack needs n >= 1 images of box >= 1 pixels, got n={n}, box={box}")
        _check_pixel_size(path, pixel_size)
        self.path = check_destination(path, overwrite)
        self.n, self.box, self.pixel_size = int(n), int(box), float(pixel_size)
        self._overwrite = overwrite
        self._tmp = Path(tmp) if tmp is not None else temp_name(self.path)  # a fixed name can be reopened
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self._mrc = mrcfile.new_mmap(self._tmp, shape=(self.n, self.box, self.box),
                                         mrc_mode=12 if float16 else 2, overwrite=True)
        self._dtype = np.float16 if float16 else np.float32
        try:
            self._mrc.set_image_stack()
            self._mrc.voxel_size = self.pixel_size
            self._mrc.header.origin = (0.0, 0.0, 0.0)
        except BaseException:
            self.abort()
            raise
        self._written = np.zeros(self.n, bool)
        # per-image statistics, so the header needs no second pass over the file
        self._min = np.zeros(self.n)
        self._max = np.zeros(self.n)
        self._sum = np.zeros(self.n)
        self._sumsq = np.zeros(self.n)

    def __setitem__(self, key: int | slice | Any, images: Any) -> None:
        if self._mrc is None:
            raise ValueError(f"{self.path}: the writer is closed")
        idx = np.arange(self.n)[key]
        imgs = np.asarray(_to_numpy(images), dtype=np.float32)
        if np.ndim(idx) == 0:
            idx = np.atleast_1d(idx)
            if imgs.ndim == 2:
                imgs = imgs[None]
        if imgs.shape != (len(idx), self.box, self.box):
            raise ValueError(f"{self.path}: expected images of shape {(len(idx), self.box, self.box)}, "
                             f"got {imgs.shape}")
        if not np.isfinite(imgs).all():
            raise ValueError(f"{self.path}: refusing to write images with NaN/Inf values")
        if self._dtype is np.float16:
            with np.errstate(over="ignore"):
                imgs = imgs.astype(np.float16)
            if not np.isfinite(imgs).all():
                raise ValueError(f"{self.path}: values beyond the float16 range (+-65504); write float32 instead")
        if isinstance(key, slice):
            self._mrc.data[key] = imgs
        else:
            self._mrc.data[idx] = imgs
        flat = imgs.reshape(len(idx), -1).astype(np.float64)
        self._min[idx] = flat.min(axis=1)
        self._max[idx] = flat.max(axis=1)
        self._sum[idx] = flat.sum(axis=1)
        self._sumsq[idx] = (flat * flat).sum(axis=1)
        self._written[idx] = True

    @classmethod
    def reopen(cls, path: PathLike, tmp: PathLike, n: int, box: int, pixel_size: float, written: Any,
               overwrite: bool = False, float16: bool = False) -> StackWriter:
        """Go on with the partial stack ``tmp`` that an interrupted writer kept (:meth:`keep`); ``written``: the
        ``(n,)`` booleans of the images it already holds (their header statistics are read back from the file).
        ValueError (``tmp`` left as it is) when ``tmp`` is missing or not a stack of ``n`` images of this box and
        mode."""
        self = cls.__new__(cls)
        self._mrc = None
        _check_pixel_size(path, pixel_size)
        self.path = check_destination(path, overwrite)
        self.n, self.box, self.pixel_size = int(n), int(box), float(pixel_size)
        self._overwrite, self._tmp = overwrite, Path(tmp)
        self._dtype = np.float16 if float16 else np.float32
        try:
            mrc = mrcfile.mmap(self._tmp, "r+", permissive=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self._tmp}: no partial stack to go on with ({exc})") from None
        if mrc.data is None or mrc.data.shape != (self.n, self.box, self.box) or mrc.data.dtype != self._dtype:
            shape = None if mrc.data is None else (mrc.data.shape, mrc.data.dtype)
            mrc.close()
            raise ValueError(f"{self._tmp}: a partial stack of {shape}, not {self.n} images of {self.box} px")
        self._mrc = mrc
        self._written = np.asarray(written, bool).copy()
        self._min, self._max, self._sum, self._sumsq = (np.zeros(self.n) for _ in range(4))
        for i in np.nonzero(self._written)[0]:
            flat = np.asarray(mrc.data[i], np.float64).ravel()
            self._min[i], self._max[i], self._sum[i], self._sumsq[i] = (flat.min(), flat.max(), flat.sum(),
                                                                        (flat * flat).sum())
        return self

    def flush(self) -> None:
        """Push the images assigned so far to the temporary file (before a checkpoint says they are there)."""
        if self._mrc is not None:
            self._mrc.flush()

    def keep(self) -> None:
        """Close without finishing, keeping the temporary file for :meth:`reopen` (an interrupted job)."""
        if self._mrc is not None:
            try:
                self._mrc.close()
            finally:
                self._mrc = None

    def close(self) -> None:
        """Finish the file and rename it into place (ValueError, and no file, if images were never assigned)."""
        if self._mrc is None:
            return
        missing = int((~self._written).sum())
        if missing:
            self.abort()
            raise ValueError(f"{self.path}: {missing} of {self.n} images were never written; file discarded")
        npix = self.n * self.box * self.box
        mean = self._sum.sum() / npix
        h = self._mrc.header
        h.dmin, h.dmax, h.dmean = self._min.min(), self._max.max(), mean
        h.rms = np.sqrt(max(self._sumsq.sum() / npix - mean * mean, 0.0))
        try:
            self._mrc.close()
        except BaseException:
            self._mrc = None
            self._tmp.unlink(missing_ok=True)
            raise
        self._mrc = None
        commit(self._tmp, self.path, self._overwrite)

    def abort(self) -> None:
        """Discard the temporary file without writing anything at ``path``."""
        if self._mrc is not None:
            try:
                self._mrc.close()
            finally:
                self._mrc = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_mrc", None) is not None:
            self.abort()


def write_stack(path: PathLike, images: Any, pixel_size: float, overwrite: bool = False,
                float16: bool = False) -> None:
    """Write images ``(n, box, box)`` (or one ``(box, box)`` image) as a float32 (or ``float16``) MRC stack with
    pixel size ``pixel_size`` Å, atomically. FileExistsError if ``path`` exists and ``overwrite`` is False."""
    arr = np.asarray(_to_numpy(images), dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{path}: images must be (n, box, box), got shape {arr.shape}")
    with StackWriter(path, arr.shape[0], arr.shape[1], pixel_size, overwrite=overwrite, float16=float16) as w:
        w[:] = arr
