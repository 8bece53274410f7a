"""The mask rules the whole program shares, each in one place (issue 16):

* :func:`solvent_mask_from_map`: a solvent mask made from a map (optionally low-passed, thresholded at a fraction
  of its maximum, dilated, given a raised-cosine edge). The Masks dock, ``cryolive mask``, the automatic masks of
  3D classification / heterogeneous refinement and of reconstruction, and refinement's dynamic mask all make
  their masks with it, with their own values.
* :func:`focus_outside_solvent`: how much of a focus mask reaches outside the solvent mask, and whether that is
  more than :data:`FOCUS_OUTSIDE_WARN_FRACTION`: the Masks dock and the classification jobs warn on the same masks.

Arrays are backend arrays (``cryolive.backend.xp()``) ``(n, n, n)`` indexed ``[z, y, x]``; lengths in Å.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryolive.backend import xp
from cryolive.masks.masks import fraction_outside, threshold_mask
from cryolive.resolution.filters import lowpass

__all__ = [
    "FOCUS_OUTSIDE_WARN_FRACTION",
    "MASK_LEVEL",
    "FocusOverlap",
    "focus_outside_region",
    "focus_outside_solvent",
    "solvent_mask_from_map",
]

#: a soft mask's region: its voxels at or above this value
MASK_LEVEL = 0.5
#: a focus mask reaches outside the solvent mask when more than this fraction of its region lies outside it. The
#: classification job's value (1 %); the Masks dock used to warn from 0.5 %, so it flagged masks the job took silently
FOCUS_OUTSIDE_WARN_FRACTION = 0.01


def solvent_mask_from_map(vol: Any, pixel_size: float, threshold: float, dilate_A: float, soft_A: float,
                          lowpass_A: float | None = None) -> Any:
    """Solvent mask from the map ``vol``: low-passed to ``lowpass_A`` Å first (None or 0: as it is), then
    ``vol ≥ threshold · max(vol)`` (``threshold`` a fraction in (0, 1]), dilated by ``dilate_A`` Å with a
    raised-cosine edge ``soft_A`` Å wide (:func:`cryolive.masks.threshold_mask`). Returns float32 in [0, 1]."""
    if lowpass_A:
        vol = lowpass(vol, lowpass_A, pixel_size)
    return threshold_mask(vol, threshold, dilate_A, soft_A, pixel_size)


@dataclass(frozen=True)
class FocusOverlap:
    """How a focus mask lies against a solvent mask: ``fraction`` of its region (voxels ≥ :data:`MASK_LEVEL`)
    outside the solvent mask's region."""

    fraction: float

    @property
    def reaches_outside(self) -> bool:
        """More than :data:`FOCUS_OUTSIDE_WARN_FRACTION` of the focus region lies outside: worth a warning (the
        solvent mask clips that part of the focus mask during classification)."""
        return self.fraction > FOCUS_OUTSIDE_WARN_FRACTION


def focus_outside_solvent(focus: Any, solvent: Any) -> FocusOverlap:
    """The :class:`FocusOverlap` of ``focus`` with ``solvent`` (masks of one box). Raises ``ValueError`` when the
    focus mask has no voxel at or above :data:`MASK_LEVEL` or the boxes differ."""
    return FocusOverlap(fraction_outside(focus, solvent, MASK_LEVEL))


def focus_outside_region(focus: Any, solvent: Any) -> Any:
    """1 where the focus mask is in its region and the solvent mask is not (float32): what the solvent mask clips."""
    m = xp()
    return m.logical_and(m.asarray(focus) >= MASK_LEVEL, m.asarray(solvent) < MASK_LEVEL).astype(m.float32)
