"""Open movies lazily: MRC stacks (``.mrc``, ``.mrcs``, any mode RELION reads) and multi-page TIFF (``.tif``,
``.tiff``). EER is refused with one line.

:func:`open_movie` reads only the header (MRC) or the page index (TIFF), checks that the file holds a movie of at
least two frames and that it is not truncated, and returns a :class:`Movie` whose :meth:`Movie.frame` reads one
frame ``(ny, nx)`` float32 at a time (MRC: memory-mapped; TIFF: one page at a time, or the whole array once when a
single page holds all frames). Every problem is an :class:`~cryolive.io.InputError` naming the file.

MRC modes: 0 (int8; read as uint8 when the IMOD stamp says unsigned bytes, or when the header's ``dmin >= 0`` and
``dmax > 127``, i.e. counts written as unsigned bytes), 1 (int16), 2 (float32), 6 (uint16), 12 (float16) and 101
(4-bit packed, two pixels a byte, low nibble first, rows padded to whole bytes). Frames are ``data[f]``, ``y`` the
slow axis, exactly as stored (no flips). TIFF frames are the pages as stored (no flip either: the array a program
wrote is the array read back).

Pixel size: the MRC header's ``cella.x / mx`` (Å); ``None`` when unset (0, 1, not finite: simulators and many
pipelines leave it so) and always ``None`` for TIFF.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryolive.io import InputError

MRC_SUFFIXES = (".mrc", ".mrcs")
TIFF_SUFFIXES = (".tif", ".tiff")
#: IMOD's stamp in the MRC header (``imodStamp``); with it, bit 0 of ``imodFlags`` set means signed bytes.
IMOD_STAMP = 1146047817
#: TIFF compression codes of EER files (Thermo Fisher Falcon electron-event representation).
EER_COMPRESSION = (65000, 65001, 65002)


@dataclass(frozen=True)
class MovieInfo:
    """What the header says: ``n_frames``, ``ny``, ``nx`` (pixels), ``pixel_size`` Å (``None`` when unset),
    ``kind`` (``"mrc"`` or ``"tiff"``) and the stored ``dtype`` (a name such as ``"uint8"``)."""

    path: Path
    n_frames: int
    ny: int
    nx: int
    pixel_size: float | None
    kind: str
    dtype: str


class Movie(ABC):
    """A lazily read movie; :meth:`frame` returns one frame ``(ny, nx)`` float32."""

    info: MovieInfo

    @abstractmethod
    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based) as ``(ny, nx)`` float32; InputError naming the file on NaN/Inf or a read error."""

    def frames(self) -> np.ndarray:
        """All frames ``(F, ny, nx)`` float32."""
        return np.stack([self.frame(f) for f in range(self.info.n_frames)])

    def _checked(self, img: np.ndarray, index: int) -> np.ndarray:
        out = np.asarray(img, dtype=np.float32)
        if not np.isfinite(out).all():
            raise InputError(f"{self.info.path}: frame {index + 1} contains NaN or Inf values")
        return out


def usable_pixel_size(value: float) -> float | None:
    """``value`` (Å) or ``None`` when it is unset: not finite, ``<= 0`` or 1 (the default of many writers)."""
    if not np.isfinite(value) or value <= 0 or abs(value - 1.0) < 1e-6:
        return None
    return float(value)


# --- MRC


def _mrc_dtype(path: Path, header: np.recarray) -> np.dtype:
    """Stored dtype of an MRC data block (mode 101 returns uint8: the packed bytes)."""
    mode = int(header.mode)
    order = header.mode.dtype.byteorder
    if mode == 0:
        stamp, flags = _imod_stamp(header)
        unsigned = (stamp == IMOD_STAMP and not flags & 1) or (float(header.dmin) >= 0 and float(header.dmax) > 127)
        return np.dtype(np.uint8 if unsigned else np.int8)
    if mode == 101:
        return np.dtype(np.uint8)
    table = {1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
    if mode not in table:
        raise InputError(f"{path}: MRC mode {mode} is not a movie mode (cryolive reads modes 0, 1, 2, 6, 12, 101)")
    return np.dtype(table[mode]).newbyteorder(order)


def _imod_stamp(header: np.recarray) -> tuple[int, int]:
    """IMOD's ``imodStamp`` and ``imodFlags`` (header bytes 152..159, the header's byte order)."""
    raw = header.tobytes()
    order = "<" if header.mode.dtype.byteorder in ("<", "=", "|") else ">"
    stamp, flags = np.frombuffer(raw[152:160], dtype=f"{order}i4")
    return int(stamp), int(flags)


def _frames_held(size: int, offset: int, frame_bytes: int) -> str:
    return f"{max(size - offset, 0) / frame_bytes:.1f}"


class MRCMovie(Movie):
    """An MRC stack read through a read-only memory map (frames ``data[f]``)."""

    def __init__(self, path: Path) -> None:
        import mrcfile

        try:
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
        except Exception as exc:  # noqa: BLE001 - reported as bad input
            raise InputError(f"{path}: not a readable MRC file ({exc})") from None
        if header is None or int(header.nx) <= 0 or int(header.ny) <= 0:
            raise InputError(f"{path}: not an MRC file (no valid MRC header)")
        nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
        if nz < 2:
            raise InputError(f"{path}: a single {nx} x {ny} image, not a movie (a movie is a stack of frames)")
        dtype = _mrc_dtype(path, header)
        self.mode = int(header.mode)
        row_bytes = (nx + 1) // 2 if self.mode == 101 else nx * dtype.itemsize
        frame_bytes = row_bytes * ny
        self.offset = 1024 + int(header.nsymbt)
        size = path.stat().st_size
        if size < self.offset + frame_bytes * nz:
            raise InputError(f"{path}: truncated (header says {nz} frames of {nx} x {ny}, file holds "
                             f"{_frames_held(size, self.offset, frame_bytes)})")
        mx = int(header.mx)
        apix = float(header.cella.x) / mx if mx > 0 else float("nan")
        self.info = MovieInfo(path, nz, ny, nx, usable_pixel_size(apix), "mrc", dtype.name)
        shape = (nz, ny, row_bytes) if self.mode == 101 else (nz, ny, nx)
        try:
            self._data = np.memmap(path, dtype=dtype, mode="r", offset=self.offset, shape=shape)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot memory-map the frames ({exc})") from None

    def frame(self, index: int) -> np.ndarray:
        raw = np.asarray(self._data[index])
        if self.mode == 101:
            raw = _unpack_4bit(raw, self.info.nx)
        return self._checked(raw, index)


def _unpack_4bit(packed: np.ndarray, nx: int) -> np.ndarray:
    """Rows of packed 4-bit pixels ``(ny, (nx+1)//2)`` uint8 -> ``(ny, nx)`` uint8 (low nibble first)."""
    out = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out[:, :nx]


# --- TIFF


class TIFFMovie(Movie):
    """A multi-page TIFF (one page per frame, read page by page) or one page holding a 3-D array (read once)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise ValueError("no image series")
                series = tif.series[0]
                shape = tuple(int(s) for s in series.shape)
                pages = list(tif.pages)
                compression = int(getattr(pages[0], "compression", 1))
                end = max((int(o) + int(c) for pg in pages for o, c in zip(pg.dataoffsets, pg.databytecounts,
                                                                             strict=False)), default=0)
        except Exception as exc:  # noqa: BLE001 - reported as bad input
            raise InputError(f"{path}: not a readable TIFF movie ({exc})") from None
        if compression in EER_COMPRESSION:
            raise InputError(f"{path}: EER movies are not supported; render them to TIFF or MRC frames first "
                             "(e.g. relion_convert_to_tiff)")
        dims = tuple(s for s in shape if s != 1)
        if len(dims) < 3:
            raise InputError(f"{path}: a single {shape[-1]} x {shape[-2]} image, not a movie (a movie is a stack "
                             "of frames)")
        if len(dims) > 3:
            raise InputError(f"{path}: holds a {len(dims)}-D array {shape}, not a movie (frames x y x x)")
        n_frames, ny, nx = dims
        size = path.stat().st_size
        if end > size:
            raise InputError(f"{path}: truncated (the TIFF index says {n_frames} frames of {nx} x {ny} in {end} "
                             f"bytes, file holds {size})")
        self.path = path
        self.per_page = len(pages) == n_frames and all(pg.shape[-2:] == (ny, nx) for pg in pages)
        self._cache: np.ndarray | None = None
        self.info = MovieInfo(path, n_frames, ny, nx, None, "tiff", str(series.dtype))

    def _read(self, key: int | None) -> np.ndarray:
        import tifffile

        try:
            with tifffile.TiffFile(self.path) as tif:
                arr = tif.pages[key].asarray() if key is not None else tif.series[0].asarray()
        except Exception as exc:  # noqa: BLE001 - reported as bad input
            if "imagecodecs" in str(exc):
                raise InputError(f"{self.path}: this TIFF's compression needs the imagecodecs package "
                                 "(pip install imagecodecs)") from None
            where = f"page {key + 1}" if key is not None else "the frames"
            raise InputError(f"{self.path}: cannot read {where} of the TIFF movie (truncated or corrupt: {exc})"
                             ) from None
        return np.asarray(arr)

    def frame(self, index: int) -> np.ndarray:
        if self.per_page:
            img = self._read(index).reshape(self.info.ny, self.info.nx)
        else:
            if self._cache is None:
                self._cache = self._read(None).reshape(self.info.n_frames, self.info.ny, self.info.nx)
            img = self._cache[index]
        return self._checked(img, index)

    def frames(self) -> np.ndarray:
        if self.per_page:
            return super().frames()
        out = self._read(None).reshape(self.info.n_frames, self.info.ny, self.info.nx)
        return np.stack([self._checked(out[f], f) for f in range(len(out))])


def open_movie(path: str | os.PathLike) -> Movie:
    """Open a movie by its suffix (``.mrc``/``.mrcs`` MRC, ``.tif``/``.tiff`` TIFF); InputError naming the file
    for EER, other formats, unreadable, truncated or single-frame files."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".eer":
        raise InputError(f"{p}: EER movies are not supported; render them to TIFF or MRC frames first "
                         "(e.g. relion_convert_to_tiff)")
    if suffix in MRC_SUFFIXES:
        return MRCMovie(p)
    if suffix in TIFF_SUFFIXES:
        return TIFFMovie(p)
    raise InputError(f"{p}: unsupported movie format {p.suffix!r}; cryolive reads MRC stacks (.mrc, .mrcs) and "
                     "multi-page TIFF (.tif, .tiff)")


def read_image_2d(path: str | os.PathLike) -> np.ndarray:
    """A single 2-D image ``(ny, nx)`` float64 from an MRC or TIFF file (chosen by content, so ``.gain`` files
    work); InputError naming the file when it is unreadable or not 2-D."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    try:
        if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            import tifffile

            arr = np.asarray(tifffile.imread(p))
        else:
            import mrcfile

            with mrcfile.open(p, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise ValueError("no data block (truncated or unknown mode)")
                arr = np.asarray(mrc.data)
    except Exception as exc:  # noqa: BLE001 - reported as bad input
        raise InputError(f"{p}: not a readable MRC or TIFF image ({exc})") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(f"{p}: holds a {arr.ndim}-D array {arr.shape}, not a 2-D image")
    return arr.astype(np.float64)
