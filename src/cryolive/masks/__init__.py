"""Masks: soft spheres, thresholded solvent masks with soft edges, focus-mask overlap checks."""

from cryolive.masks.masks import (
    fraction_outside,
    mask_volume_fraction,
    soft_edge_from_binary,
    soft_sphere,
    sphere_at,
    threshold_mask,
)

__all__ = [
    "fraction_outside",
    "mask_volume_fraction",
    "soft_edge_from_binary",
    "soft_sphere",
    "sphere_at",
    "threshold_mask",
]
