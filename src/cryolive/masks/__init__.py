"""Masks: soft spheres, thresholded solvent masks with soft edges, focus-mask overlap checks.

The rules every part of cryolive shares (the solvent mask made from a map, when a focus mask reaches outside the
solvent mask) live in :mod:`cryolive.masks.rules`.
"""

from cryolive.masks.masks import (
    fraction_outside,
    mask_volume_fraction,
    soft_edge_from_binary,
    soft_sphere,
    sphere_at,
    threshold_mask,
)
from cryolive.masks.rules import (
    FOCUS_OUTSIDE_WARN_FRACTION,
    MASK_LEVEL,
    FocusOverlap,
    focus_outside_region,
    focus_outside_solvent,
    solvent_mask_from_map,
)

__all__ = [
    "FOCUS_OUTSIDE_WARN_FRACTION",
    "MASK_LEVEL",
    "FocusOverlap",
    "focus_outside_region",
    "focus_outside_solvent",
    "fraction_outside",
    "mask_volume_fraction",
    "soft_edge_from_binary",
    "soft_sphere",
    "solvent_mask_from_map",
    "sphere_at",
    "threshold_mask",
]
