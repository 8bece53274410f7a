"""napari writer: an image layer to an MRC map with its voxel size (the layer's scale, Å)."""

from __future__ import annotations

from typing import Any

import numpy as np


def write_mrc(path: str, data: Any, meta: dict) -> list[str]:
    """Write a 3D image layer as MRC (float32, voxel size from the layer scale); returns the paths written."""
    from cryolive.io import write_map

    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"{path}: only 3D image layers can be saved as MRC maps (got {arr.ndim}D)")
    scale = meta.get("scale") or (1.0, 1.0, 1.0)
    apix = float(meta.get("metadata", {}).get("pixel_size", scale[-1]))
    write_map(path, arr, apix)
    return [path]
