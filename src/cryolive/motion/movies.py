"""Find and read the movies named by a particle set's ``rlnMicrographName`` (MRC stacks only).

``movies`` is a folder holding the movies (looked up by the name as written, relative to the folder, then by the
base name) or a STAR file listing them in ``rlnMicrographMovieName`` or ``rlnMicrographName`` (paths relative to
the STAR's folder). Movies are MRC stacks ``frames x y x x``; EER and TIFF are not supported.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import mrcfile
import numpy as np

from cryolive.io import InputError, ParticleStack

SUPPORTED = (".mrc", ".mrcs")


def micrograph_names(stack: ParticleStack) -> np.ndarray:
    """Per-particle ``rlnMicrographName`` ``(N,)`` (object); InputError naming the file when the column is missing."""
    for col in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"):
        if col not in stack.table.columns:
            raise InputError(f"{stack.source}: no {col} column; motion correction needs each particle's movie "
                             "(rlnMicrographName) and pick coordinates (rlnCoordinateX/Y, pixels)")
    return stack.table["rlnMicrographName"].astype(str).to_numpy(dtype=object)


def coordinates(stack: ParticleStack) -> np.ndarray:
    """Pick coordinates ``(N, 2)`` (x, y) in pixels of the movie, rounded to integers."""
    xy = stack.table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
    return np.rint(xy).astype(np.int64)


def _listing(star: Path) -> dict[str, Path]:
    import starfile

    try:
        data = starfile.read(star, always_dict=True)
    except Exception as exc:  # noqa: BLE001 - reported as bad input
        raise InputError(f"{star}: not a readable STAR file ({exc})") from None
    for df in data.values():
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
        if p.suffix.lower() not in SUPPORTED:
            raise InputError(f"{p}: unsupported movie format {p.suffix!r}; cryolive reads MRC stacks (.mrc/.mrcs)")
        out[name] = p
    return out


def movie_shape(path: Path) -> tuple[int, int, int]:
    """``(frames, ny, nx)`` from the MRC header; InputError naming the file when it is not a readable stack."""
    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            shape = mrc.data.shape
    except Exception as exc:  # noqa: BLE001 - reported as bad input
        raise InputError(f"{path}: not a readable MRC movie ({exc})") from None
    if len(shape) != 3:
        raise InputError(f"{path}: holds a {len(shape)}-D array {shape}, not a movie (frames x y x x)")
    return int(shape[0]), int(shape[1]), int(shape[2])


def check_frame_counts(paths: dict[str, Path], skip: bool) -> tuple[int, list[str]]:
    """The common frame count and the movies skipped for having another one.

    Without ``skip`` a movie whose count differs from the most common one is an InputError naming it.
    """
    counts = {name: movie_shape(p)[0] for name, p in paths.items()}
    common = Counter(counts.values()).most_common(1)[0][0]
    wrong = [name for name, c in counts.items() if c != common]
    if wrong and not skip:
        name = wrong[0]
        raise InputError(f"{paths[name]}: {counts[name]} frames, but most movies have {common}; pass "
                         "skip_wrong_frame_count (--skip-wrong-frames) to leave such movies out")
    return common, wrong


def read_movie(path: Path) -> np.ndarray:
    """All frames ``(F, ny, nx)`` float32 of an MRC movie."""
    with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the movie contains NaN or Inf values")
    return data
