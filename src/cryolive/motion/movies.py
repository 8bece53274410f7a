"""Find, check and read the movies named by a particle set's ``rlnMicrographName``.

``movies`` is a folder holding the movies (looked up by the name as written, relative to the folder, then by the
base name) or a STAR file listing them in ``rlnMicrographMovieName`` or ``rlnMicrographName`` (paths relative to
the STAR's folder). Formats: see :mod:`.movie_io` (MRC stacks of any mode, multi-page TIFF; EER refused).

:func:`open_movie_set` checks everything that can be checked before any work (every header, the frame counts,
the gain, the pixel sizes, the pick coordinates) so that a job refuses bad input with one line naming the file
before it creates its folder. Pixel sizes follow RELION's motion refinement:

* movie pixel size: ``rlnMicrographOriginalPixelSize``, else ``rlnMicrographPixelSize``, else the particles'
  pixel size (``rlnImagePixelSize``). The movie header never overrides it; a header pixel size that is set
  (not 0 or 1) and differs by more than 1 % is an error naming the movie and the STAR.
* pick coordinates (``rlnCoordinateX/Y``) are in pixels of ``rlnMicrographPixelSize``, else of the movie.
* when the particles' pixel size differs from the movie's, patches of ``box * particle / movie`` movie pixels are
  cut and Fourier-cropped to the particle box (movies coarser than the particles are refused).

Dose per frame (e/Å^2): the ``dose_per_frame`` given, else ``rlnMicrographDoseRate`` (RELION: e/Å^2 per frame)
of the particles STAR or the movie-listing STAR; ``rlnMicrographPreExposure`` likewise (else 0).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryolive.io import InputError, ParticleStack
from cryolive.motion.gain import load_gain
from cryolive.motion.movie_io import MRC_SUFFIXES, TIFF_SUFFIXES, MovieInfo, open_movie

SUPPORTED = MRC_SUFFIXES + TIFF_SUFFIXES
#: relative difference between the header's and the STAR's pixel size above which a movie is refused
PIXEL_TOLERANCE = 0.01


def micrograph_names(stack: ParticleStack) -> np.ndarray:
    """Per-particle ``rlnMicrographName`` ``(N,)`` (object); InputError naming the file when the column is missing."""
    for col in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"):
        if col not in stack.table.columns:
            raise InputError(f"{stack.source}: no {col} column; motion correction needs each particle's movie "
                             "(rlnMicrographName) and pick coordinates (rlnCoordinateX/Y, pixels)")
    return stack.table["rlnMicrographName"].astype(str).to_numpy(dtype=object)


def coordinates(stack: ParticleStack) -> np.ndarray:
    """Pick coordinates ``(N, 2)`` (x, y) in pixels of the micrograph, rounded to integers."""
    xy = stack.table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
    return np.rint(xy).astype(np.int64)


def _read_star_blocks(star: Path) -> dict:
    import starfile

    try:
        return starfile.read(star, always_dict=True)
    except Exception as exc:  # noqa: BLE001 - reported as bad input
        raise InputError(f"{star}: not a readable STAR file ({exc})") from None


def _listing(star: Path) -> dict[str, Path]:
    for df in _read_star_blocks(star).values():
        for col in ("rlnMicrographMovieName", "rlnMicrographName"):
            if hasattr(df, "columns") and col in df.columns:
                return {str(v): (star.parent / str(v)) for v in df[col]}
    raise InputError(f"{star}: lists no movies (no rlnMicrographMovieName or rlnMicrographName column)")


def resolve_movies(stack: ParticleStack, movies: str | os.PathLike) -> dict[str, Path]:
    """Path of every movie named in ``stack`` (name -> file). InputError naming the file for anything missing."""
    names = sorted(set(micrograph_names(stack)))
    src = Path(movies)
    if src.is_dir():
        def find(name: str) -> Path | None:
            for cand in (src / name, src / Path(name).name):
                if cand.is_file():
                    return cand
            return None
    elif src.is_file():
        listed = _listing(src)
        by_base = {Path(k).name: v for k, v in listed.items()}

        def find(name: str) -> Path | None:
            p = listed.get(name) or by_base.get(Path(name).name)
            return p if p is not None and p.is_file() else None
    else:
        raise InputError(f"{src}: the movies folder or STAR file does not exist")
    out: dict[str, Path] = {}
    for name in names:
        p = find(name)
        if p is None:
            raise InputError(f"{stack.source}: movie {name!r} (rlnMicrographName) not found in {src}")
        if p.suffix.lower() == ".eer":
            raise InputError(f"{p}: EER movies are not supported; render them to TIFF or MRC frames first "
                             "(e.g. relion_convert_to_tiff)")
        if p.suffix.lower() not in SUPPORTED:
            raise InputError(f"{p}: unsupported movie format {p.suffix!r}; cryolive reads MRC stacks (.mrc, .mrcs) "
                             "and multi-page TIFF (.tif, .tiff)")
        out[name] = p
    return out


def movie_shape(path: Path) -> tuple[int, int, int]:
    """``(frames, ny, nx)`` from the header; InputError naming the file when it is not a readable movie."""
    info = open_movie(path).info
    return info.n_frames, info.ny, info.nx


def common_frame_count(counts: dict[str, int]) -> int:
    """The frame count most movies have; on a tie the largest (truncated movies have fewer frames)."""
    tally = Counter(counts.values())
    top = max(tally.values())
    return max(c for c, k in tally.items() if k == top)


def frame_count_message(name: str, counts: dict[str, int], paths: dict[str, Path], common: int) -> str:
    """One line naming the odd movie ``name``, its count, the common count and a movie that has it."""
    good = sorted(n for n, c in counts.items() if c == common)
    tally = Counter(counts.values())
    spread = ", ".join(f"{k} with {c}" for c, k in sorted(tally.items(), key=lambda t: (-t[1], -t[0])))
    return (f"{paths[name]}: {counts[name]} frames, but {paths[good[0]]} has {common} (movies by frame count: "
            f"{spread}); pass skip_wrong_frame_count (--skip-wrong-frames) to leave the odd ones out")


def check_frame_counts(paths: dict[str, Path], skip: bool,
                       infos: dict[str, MovieInfo] | None = None) -> tuple[int, list[str]]:
    """The common frame count and the movies skipped for having another one.

    Without ``skip`` a movie whose count differs from the most common one (the largest on a tie) is an InputError
    naming it, the common count and a movie that has it.
    """
    counts = {name: (infos[name].n_frames if infos else movie_shape(p)[0]) for name, p in paths.items()}
    common = common_frame_count(counts)
    wrong = sorted(name for name, c in counts.items() if c != common)
    if wrong and not skip:
        raise InputError(frame_count_message(wrong[0], counts, paths, common))
    return common, wrong


def read_movie(path: Path, gain: np.ndarray | None = None) -> np.ndarray:
    """All frames ``(F, ny, nx)`` float32 of a movie, times the gain ``(ny, nx)`` when given."""
    movie = open_movie(path)
    frames = movie.frames()
    return frames if gain is None else frames * gain[None]


# --- pixel sizes


def star_column(stack: ParticleStack, label: str) -> np.ndarray | None:
    """Per-particle values ``(N,)`` float of ``label`` from the particle table or the optics table (through
    ``rlnOpticsGroup``); None when neither has it."""
    if label in stack.table.columns:
        return stack.table[label].to_numpy(dtype=float)
    opt = stack.optics
    if opt is not None and label in opt.columns:
        if "rlnOpticsGroup" in opt.columns:
            by_group = dict(zip(opt["rlnOpticsGroup"].astype(int), opt[label].astype(float), strict=True))
            return np.array([by_group.get(int(g), np.nan) for g in stack.optics_group], dtype=float)
        return np.full(len(stack), float(opt[label].iloc[0]))
    return None


def _single_value(stack: ParticleStack, label: str, allow_zero: bool = False) -> float | None:
    """The one value of ``label`` over all particles (None when absent); InputError when it is not positive (or
    negative with ``allow_zero``) or differs between optics groups."""
    vals = star_column(stack, label)
    if vals is None or len(vals) == 0:
        return None
    ok = np.isfinite(vals) & ((vals >= 0) if allow_zero else (vals > 0))
    if not ok.all():
        raise InputError(f"{stack.source}: {label} must be a {'non-negative' if allow_zero else 'positive'} "
                         f"number, found {vals[~ok][0]!r}")
    if np.ptp(vals) > 1e-4 * vals.max():
        raise InputError(f"{stack.source}: {label} differs between optics groups ({vals.min():g} .. "
                         f"{vals.max():g}); run motion correction on one optics group at a time")
    return float(vals[0])


@dataclass(frozen=True)
class PixelSizes:
    """Pixel sizes (Å): the particles', the movies' and the pick coordinates', and the STAR labels they came from."""

    particle_A: float
    movie_A: float
    coords_A: float
    movie_label: str
    coords_label: str

    @property
    def movie_per_particle(self) -> float:
        """Movie pixels per particle pixel (1 when the particles were extracted at the movie pixel size)."""
        return self.particle_A / self.movie_A


def star_pixel_sizes(stack: ParticleStack) -> PixelSizes:
    """The pixel sizes RELION's motion refinement would use (see the module docstring)."""
    original = _single_value(stack, "rlnMicrographOriginalPixelSize")
    mic = _single_value(stack, "rlnMicrographPixelSize")
    if original is not None:
        movie, movie_label = original, "rlnMicrographOriginalPixelSize"
    elif mic is not None:
        movie, movie_label = mic, "rlnMicrographPixelSize"
    else:
        movie, movie_label = stack.pixel_size, "rlnImagePixelSize (the particles')"
    coords, coords_label = (mic, "rlnMicrographPixelSize") if mic is not None else (movie, movie_label)
    return PixelSizes(stack.pixel_size, movie, coords, movie_label, coords_label)


def check_header_pixel_size(info: MovieInfo, px: PixelSizes, star: Path) -> None:
    """InputError naming the movie and the STAR when the header's pixel size is set and differs by > 1 %."""
    if info.pixel_size is None:
        return
    if abs(info.pixel_size - px.movie_A) > PIXEL_TOLERANCE * px.movie_A:
        raise InputError(f"{info.path}: header pixel size {info.pixel_size:.4f} Å differs from {px.movie_A:.4f} Å "
                         f"({px.movie_label}) in {star} by more than 1 %; fix the movie header or add the movies' "
                         "pixel size to the STAR as rlnMicrographOriginalPixelSize")


def patch_box(box: int, px: PixelSizes, star: Path) -> int:
    """Patch size in movie pixels ``(even)`` that Fourier-crops to the particle ``box``; InputError when the
    movies are coarser than the particles or no even size is within 1 % of ``box * particle / movie``."""
    exact = box * px.movie_per_particle
    if exact < box - 1e-6:
        raise InputError(f"{star}: the movies ({px.movie_A:.4f} Å/px, {px.movie_label}) are coarser than the "
                         f"particles ({px.particle_A:.4f} Å/px); re-extract the particles at the movie pixel size")
    m = box if abs(exact - box) < 1e-3 * box else int(2 * round(exact / 2))
    if abs(m - exact) > PIXEL_TOLERANCE * exact:
        raise InputError(f"{star}: particle box {box} at {px.particle_A:.4f} Å/px is {exact:.2f} movie pixels at "
                         f"{px.movie_A:.4f} Å/px; no even patch size is within 1 % (choose a box that scales "
                         "to an even number of movie pixels)")
    return m


def movie_positions(xy: np.ndarray, px: PixelSizes) -> np.ndarray:
    """Pick coordinates ``(N, 2)`` (coordinate pixels) as integer movie pixels ``(N, 2)``."""
    if abs(px.coords_A - px.movie_A) <= 1e-6 * px.movie_A:
        return np.asarray(xy, dtype=np.int64)
    return np.rint(np.asarray(xy, float) * (px.coords_A / px.movie_A)).astype(np.int64)


def check_positions(info: MovieInfo, positions: np.ndarray, rows: np.ndarray, star: Path) -> None:
    """InputError naming the movie and the first particle (1-based STAR row) whose position ``(x, y)`` movie px
    lies outside the frames."""
    x, y = positions[:, 0], positions[:, 1]
    out = (x < 0) | (y < 0) | (x >= info.nx) | (y >= info.ny)
    if out.any():
        k = int(np.flatnonzero(out)[0])
        raise InputError(f"{info.path}: particle {int(rows[k]) + 1} of {star} at ({x[k]}, {y[k]}) movie px lies "
                         f"outside the {info.nx} x {info.ny} frames ({int(out.sum())} particle(s) outside); are the "
                         "coordinates in another pixel size (rlnMicrographPixelSize)?")


# --- dose


def _listing_value(movies: Path, label: str) -> float | None:
    if not movies.is_file():
        return None
    for df in _read_star_blocks(movies).values():
        if hasattr(df, "columns") and label in df.columns and len(df):
            return float(np.asarray(df[label], float)[0])
        if isinstance(df, dict) and label in df:
            return float(df[label])
    return None


def _dose_value(stack: ParticleStack, movies: Path, label: str) -> tuple[float | None, str]:
    """``label`` (e/Å^2) from the particles STAR, else from the movie-listing STAR; ``(None, "")`` when absent."""
    value = _single_value(stack, label, allow_zero=True)
    if value is not None:
        return value, f"{label} in {stack.source}"
    value = _listing_value(movies, label)
    if value is not None and np.isfinite(value) and value >= 0:
        return value, f"{label} in {movies}"
    return None, ""


def resolve_dose(stack: ParticleStack, movies: Path, dose_per_frame: float | None) -> tuple[float | None, float, str]:
    """``(dose per frame e/Å^2 or None, pre-exposure e/Å^2, where the dose came from)``: the value given, else
    ``rlnMicrographDoseRate`` (and ``rlnMicrographPreExposure``) of the particles STAR, else of the movie listing."""
    pre = _dose_value(stack, movies, "rlnMicrographPreExposure")[0] or 0.0
    if dose_per_frame is not None:
        if not (np.isfinite(dose_per_frame) and dose_per_frame > 0):
            raise ValueError(f"dose_per_frame must be a positive number of e/Å², not {dose_per_frame!r}")
        return float(dose_per_frame), pre, "given"
    value, where = _dose_value(stack, movies, "rlnMicrographDoseRate")
    if value is not None and value > 0:
        return value, pre, where
    return None, pre, "unknown"


# --- everything checked up front


@dataclass(frozen=True)
class MovieSet:
    """Checked movies: ``paths`` and header ``infos`` of the movies used (name -> ...), the common ``n_frames``,
    ``skipped`` movie names, the oriented ``gain`` ``(ny, nx)`` float32 (or None), the pixel sizes, the patch
    size ``patch`` in movie pixels, each particle's position ``(N, 2)`` in integer movie pixels (before any
    re-centring), and the dose per frame / pre-exposure (e/Å^2) with where they came from."""

    paths: dict[str, Path]
    infos: dict[str, MovieInfo]
    n_frames: int
    skipped: list[str]
    gain: np.ndarray | None
    pixel: PixelSizes
    patch: int
    dose_per_frame: float | None
    pre_exposure: float
    dose_source: str
    source: str


def open_movie_set(stack: ParticleStack, movies: str | os.PathLike, skip_wrong_frame_count: bool = False,
                   gain: str | os.PathLike | None = None, gain_rot: int = 0, gain_flip: int = 0,
                   dose_per_frame: float | None = None) -> MovieSet:
    """Find and check every movie of ``stack`` (see the module docstring); InputError naming the file on the
    first problem. Reads headers only (and the gain)."""
    names = micrograph_names(stack)
    paths = resolve_movies(stack, movies)
    infos = {name: open_movie(p).info for name, p in paths.items()}
    n_frames, skipped = check_frame_counts(paths, skip_wrong_frame_count, infos)
    kept = {k: v for k, v in paths.items() if k not in skipped}
    shapes = {(infos[k].ny, infos[k].nx) for k in kept}
    if gain is not None and len(shapes) > 1:
        first = {}
        for k in sorted(kept):
            first.setdefault((infos[k].ny, infos[k].nx), k)
        (a, na), (b, nb) = list(first.items())[:2]
        raise InputError(f"{paths[nb]}: frames of {b[1]} x {b[0]} px, but {paths[na]} has {a[1]} x {a[0]}; one "
                         "gain reference needs movies of one frame size")
    gain_img = load_gain(gain, next(iter(shapes)), gain_rot, gain_flip) if gain is not None and kept else None
    px = star_pixel_sizes(stack)
    for k in sorted(kept):
        check_header_pixel_size(infos[k], px, stack.source)
    patch = patch_box(stack.box, px, stack.source)
    pos = movie_positions(coordinates(stack), px)
    for k in sorted(kept):
        rows = np.flatnonzero(names == k)
        check_positions(infos[k], pos[rows], rows, stack.source)
    dose, pre, dose_source = resolve_dose(stack, Path(movies), dose_per_frame)
    return MovieSet(kept, {k: infos[k] for k in kept}, n_frames, sorted(skipped), gain_img, px, patch, dose, pre,
                    dose_source, str(movies))
