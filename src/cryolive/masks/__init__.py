"""Masks: soft spheres, thresholded solvent masks with soft edges, focus-mask overlap checks.

The rules every part of cryolive shares (the solvent mask made from a map, when a focus mask reaches outside the
solvent mask) live in :mod:`cryolive.masks.rules`.
"""

from cryolive.masks import masks, rules
from cryolive.masks.masks import fraction_outside as fraction_outside
from cryolive.masks.masks import mask_volume_fraction as mask_volume_fraction
from cryolive.masks.masks import soft_edge_from_binary as soft_edge_from_binary
from cryolive.masks.masks import soft_sphere as soft_sphere
from cryolive.masks.masks import sphere_at as sphere_at
from cryolive.masks.masks import threshold_mask as threshold_mask
from cryolive.masks.rules import FOCUS_OUTSIDE_WARN_FRACTION as FOCUS_OUTSIDE_WARN_FRACTION
from cryolive.masks.rules import MASK_LEVEL as MASK_LEVEL
from cryolive.masks.rules import FocusOverlap as FocusOverlap
from cryolive.masks.rules import focus_outside_region as focus_outside_region
from cryolive.masks.rules import focus_outside_solvent as focus_outside_solvent
from cryolive.masks.rules import solvent_mask_from_map as solvent_mask_from_map

#: every public name of :mod:`cryolive.masks.masks` and :mod:`cryolive.masks.rules`, as listed there
__all__ = [*masks.__all__, *rules.__all__]
