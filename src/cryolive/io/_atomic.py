"""Atomic writes: write to a temporary name in the destination folder, then rename into place.

The one implementation: the MRC/STAR writers use :func:`atomic_path`, job folders and small text outputs
(JSON, CSV, logs of state) :func:`atomic_write_text`; a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_EXISTS = "file already exists; choose another name or allow replacing it (--overwrite, overwrite=True)"


def check_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    """The destination as a Path; FileExistsError if it exists and ``overwrite`` is False."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a folder; give a file name to write")
    if not overwrite and (p.exists() or p.is_symlink()):
        raise FileExistsError(f"{p}: {_EXISTS}")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"{p}: the folder {p.parent} does not exist")
    return p


def temp_name(path: Path) -> Path:
    """A hidden, unique temporary name next to ``path`` (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def commit(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished temporary file ``tmp`` to ``path`` atomically; ``tmp`` is gone afterwards.

    Without ``overwrite`` a hard link is used so that a file created at ``path`` meanwhile is never replaced
    (falls back to check-then-rename on file systems without hard links).
    """
    try:
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path}: {_EXISTS}") from None
        except OSError:  # no hard links here (some network/FUSE file systems)
            if path.exists():
                raise FileExistsError(f"{path}: {_EXISTS}") from None
            os.replace(tmp, path)
            return
        tmp.unlink()
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path``, on error it is removed."""
    dest = check_destination(path, overwrite)
    tmp = temp_name(dest)
    try:
        yield tmp
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    commit(tmp, dest, overwrite)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and an atomic rename;
    an existing file is replaced. On error the temporary file is removed and ``path`` is left as it was."""
    dest = Path(path)
    tmp = temp_name(dest)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
