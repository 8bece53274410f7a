"""File formats: MRC maps and stacks, RELION STAR and cryoSPARC .cs particle files.

Units and conventions follow RELION (docs/conventions.md): Å, degrees in files / radians in code, RELION Euler
matrices, origins in Å (particle centre at ``-origin`` from the box centre), maps ``[z, y, x]`` float32.
Every bad-input problem raises :class:`InputError` naming the file; every write is atomic and refuses to
replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryolive.io.cryosparc import read_cs, write_cs
from cryolive.io.errors import InputError
from cryolive.io.mrc import (
    MapInput,
    MapSource,
    MrcStack,
    StackWriter,
    check_map_content,
    check_mask_values,
    open_stack,
    read_map,
    read_map_source,
    read_matching_map,
    read_matching_mask,
    write_map,
    write_stack,
)
from cryolive.io.particles import ParticleStack
from cryolive.io.star import read_star, write_star


def read_particles(path: str | os.PathLike, **kwargs: Any) -> ParticleStack:
    """Read particles from a ``.star`` (:func:`read_star`) or ``.cs`` (:func:`read_cs`) file; keyword arguments
    are passed on (``require_images``, ``project_dir``, ``pixel_size``, ``allow_mixed_pixel_size``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".star":
        return read_star(path, **kwargs)
    if suffix == ".cs":
        return read_cs(path, **kwargs)
    raise InputError(f"{path}: unknown particle file type {suffix or '(no suffix)'!r}; expected .star or .cs")


def write_particles(stack: ParticleStack, path: str | os.PathLike, overwrite: bool = False,
                    **kwargs: Any) -> None:
    """Write particles as ``.star`` (:func:`write_star`) or ``.cs`` (:func:`write_cs`) by the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".star":
        return write_star(stack, path, overwrite, **kwargs)
    if suffix == ".cs":
        return write_cs(stack, path, overwrite, **kwargs)
    raise ValueError(f"{path}: unknown particle file type {suffix or '(no suffix)'!r}; expected .star or .cs")


__all__ = [
    "InputError",
    "MapInput",
    "MapSource",
    "MrcStack",
    "ParticleStack",
    "StackWriter",
    "check_map_content",
    "check_mask_values",
    "open_stack",
    "read_cs",
    "read_map",
    "read_map_source",
    "read_matching_map",
    "read_matching_mask",
    "read_particles",
    "read_star",
    "write_cs",
    "write_map",
    "write_particles",
    "write_stack",
    "write_star",
]
