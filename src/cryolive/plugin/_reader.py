"""napari reader: MRC maps (3D image with the voxel size as scale), MRC stacks and particle files.

Particle files (``.star``/``.cs``) open as the particle image stack (lazily, as a dask array read in chunks
from the memory-mapped stacks), with the file path and particle count in the layer metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MAP_SUFFIXES = (".mrc", ".map")
STACK_SUFFIXES = (".mrcs",)
PARTICLE_SUFFIXES = (".star", ".cs")


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """Return :func:`read` when napari asks about a path cryolive understands, else None."""
    if isinstance(path, list):
        if not path:
            return None
        path = path[0]
    suffix = Path(path).suffix.lower()
    if suffix in MAP_SUFFIXES + STACK_SUFFIXES + PARTICLE_SUFFIXES:
        return read
    return None


def read(path: str | list[str]) -> list[tuple]:
    """Read one or more files into napari layer-data tuples."""
    paths = path if isinstance(path, list) else [path]
    out: list[tuple] = []
    for p in paths:
        suffix = Path(p).suffix.lower()
        if suffix in PARTICLE_SUFFIXES:
            out.append(particles_layer(p))
        else:
            out.append(mrc_layer(p))
    return out


def mrc_layer(path: str) -> tuple:
    """A map as a 3D image layer (scale = voxel size in Å) or a stack as images (scale 1, Å, Å)."""
    from cryolive.io import open_stack, read_map

    name = Path(path).stem
    if Path(path).suffix.lower() in STACK_SUFFIXES:
        stack = open_stack(path)
        data = _lazy_stack(stack.read, len(stack), stack.box)
        meta = {"cryolive_kind": "stack", "pixel_size": stack.pixel_size, "source": str(path)}
        return data, {"name": name, "scale": (1.0, stack.pixel_size, stack.pixel_size), "metadata": meta}, "image"
    vol, apix = read_map(path)
    meta = {"cryolive_kind": "map", "pixel_size": apix, "source": str(path)}
    lo, hi = np.percentile(vol, [1, 99.9])
    return vol, {"name": name, "scale": (apix,) * 3, "metadata": meta,
                 "contrast_limits": (float(lo), float(hi) if hi > lo else float(lo) + 1.0)}, "image"


def particles_layer(path: str) -> tuple:
    """A particle file as its image stack (lazy), with the particle metadata path."""
    from cryolive.io import read_particles

    stack = read_particles(path)
    data = _lazy_stack(stack.images, len(stack), stack.box)
    meta = {"cryolive_kind": "particles", "pixel_size": stack.pixel_size, "source": str(path),
            "n_particles": len(stack)}
    return data, {"name": Path(path).stem, "scale": (1.0, stack.pixel_size, stack.pixel_size),
                  "metadata": meta}, "image"


def _lazy_stack(read_fn: Callable[[np.ndarray], np.ndarray], n: int, box: int, chunk: int = 256) -> Any:
    """A dask array ``(n, box, box)`` whose chunks call ``read_fn(indices)``; small stacks are read at once."""
    if n <= chunk:
        return np.asarray(read_fn(np.arange(n)), dtype=np.float32)
    import dask
    import dask.array as da

    blocks = []
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        blocks.append(da.from_delayed(dask.delayed(read_fn)(idx), shape=(len(idx), box, box), dtype=np.float32))
    return da.concatenate(blocks, axis=0)
