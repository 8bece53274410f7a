"""Checks made before any work or any folder exists: can the output place be written, does the memory suffice.

Each raises :class:`~cryolive.io.errors.InputError` with one line naming the option (``--out`` by default) and
the problem, so the CLI, the napari docks and the scripting API refuse bad input the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryolive.io.errors import InputError


def check_output_parent(parent: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any work, a place that cannot hold new job folders: an empty name, a path through an
    existing file, or a folder that cannot be written. Returns ``Path(parent)`` (nothing is created)."""
    text = os.fspath(parent)
    if not text.strip():
        raise InputError(f"{flag} is empty: name the folder that will hold the job folder")
    path = Path(text)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: {existing} is not writable")
    return path


def available_memory_bytes() -> int | None:
    """Memory the system can still give this process (Linux ``MemAvailable``; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed_bytes: float, what: str, hint: str) -> None:
    """InputError before any work when ``what`` needs more than the available memory: ``"<what> needs about
    12.3 GiB, 7.8 GiB are available; <hint>"``. Silent where the available memory is unknown."""
    avail = available_memory_bytes()
    if avail is not None and needed_bytes > avail:
        raise InputError(f"{what} needs about {needed_bytes / 2**30:.1f} GiB of memory, "
                         f"{avail / 2**30:.1f} GiB are available; {hint}")


def check_output_file(path: str | os.PathLike, flag: str = "--out", overwrite: bool = False,
                      overwrite_flag: str | None = None) -> Path:
    """Refuse, before any work, an output file that cannot be written: an empty name, an existing folder, an
    existing file without ``overwrite`` (``overwrite_flag``: the option that allows it, named in the message), a
    folder above it that is a file or not writable, or a folder that does not exist (the writers create none)."""
    text = os.fspath(path)
    if not text.strip():
        raise InputError(f"{flag} is empty: name the output file")
    out = Path(text)
    if out.is_dir():
        raise InputError(f"{flag} {out} is a folder; give a file name to write")
    if out.exists() and not overwrite:
        also = f" or pass {overwrite_flag}" if overwrite_flag else ""
        raise FileExistsError(f"{out} exists: choose another {flag}{also}")
    check_output_parent(out.parent if str(out.parent) else ".", flag=flag)
    if not out.parent.is_dir():
        raise InputError(f"{flag} {out}: the folder {out.parent} does not exist")
    return out
