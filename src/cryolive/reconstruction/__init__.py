"""Reconstruction from particles with known poses: gold-standard half sets, back-projection of the halves,
half maps and full map (with or without the FSC-derived Wiener prior), and the known-pose reconstruction the
scripting API calls :func:`reconstruct`.

This package sits above :mod:`cryolive.projection` (the Fourier-slice reconstructor itself),
:mod:`cryolive.resolution` (FSC) and :mod:`cryolive.io` (particle stacks); refinement, classification, the motion
correction tests and the reconstruction job all use it. It never writes files (that is :mod:`cryolive.jobs`).
"""

from cryolive.reconstruction.halves import (
    HalfMaps,
    backproject_halves,
    coordinate_pixel_size,
    describe_half_sets,
    finalize_halves,
    half_sets,
    neighbour_groups,
    reconstruct,
    regularised_halves,
)

__all__ = [
    "HalfMaps",
    "backproject_halves",
    "coordinate_pixel_size",
    "describe_half_sets",
    "finalize_halves",
    "half_sets",
    "neighbour_groups",
    "reconstruct",
    "regularised_halves",
]
