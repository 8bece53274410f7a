"""Solvent and focus masks of 3D classification (docs/classification.md, "The composed class volume").

Each class volume the E step sees is ``S · (F · V_k + (1 − F) · V̄)``: outside the focus mask ``F`` the consensus
``V̄`` explains the image (signal subtraction on the fly, poses fixed), inside it the class differs; the solvent mask
``S`` removes the noise around the particle. Without ``F``, ``S · V_k``. ``F`` should lie inside ``S``; a single
mask is normally a solvent mask. The automatic ``S`` comes from the consensus map, never from focus-masked classes.
"""

from __future__ import annotations

from typing import Any

from cryolive.backend import xp
from cryolive.masks import focus_outside_solvent, solvent_mask_from_map


def compose_class_volume(class_vol: Any, consensus: Any, solvent: Any, focus: Any = None) -> Any:
    """``S · (F · V_k + (1 − F) · V̄)`` (or ``S · V_k`` when ``focus`` is None); all ``(n, n, n)`` on the backend."""
    m = xp()
    v = m.asarray(class_vol, dtype=m.float32)
    if focus is not None:
        f = m.asarray(focus, dtype=m.float32)
        v = f * v + (1.0 - f) * m.asarray(consensus, dtype=m.float32)
    return m.asarray(solvent, dtype=m.float32) * v


def auto_solvent_mask(consensus: Any, pixel_size: float, threshold: float = 0.1, lowpass_A: float = 15.0,
                      dilate_A: float = 6.0, soft_A: float = 10.0) -> Any:
    """Solvent mask from the consensus map: low-passed (Å), thresholded at ``threshold`` × max, dilated, softened
    (:func:`cryolive.masks.solvent_mask_from_map` with the defaults of :class:`ClassifyParams`).

    Built from the consensus volume of all particles, never from (focus-masked) class volumes: a mask
    from those would cover only the focus region and undo the on-the-fly subtraction (docs/classification.md).
    """
    return solvent_mask_from_map(consensus, pixel_size, threshold, dilate_A, soft_A, lowpass_A)


def mask_warnings(solvent_given: bool, focus: Any, solvent: Any) -> list[str]:
    """The warnings a user should see about the masks (empty when all is well).

    * only a focus mask was given: a single mask is normally a solvent mask (as in RELION and cryoSPARC);
    * the focus mask reaches outside the solvent mask (:func:`cryolive.masks.focus_outside_solvent`, the rule
      the Masks dock warns by too): says which fraction of it (voxels ≥ 0.5) is clipped.
    """
    out: list[str] = []
    if focus is None:
        return out
    if not solvent_given:
        out.append("only a focus mask was given: a single mask is normally a solvent mask (give it as the solvent "
                   "mask); the solvent mask was made automatically from the consensus map")
    overlap = focus_outside_solvent(focus, solvent)
    if overlap.reaches_outside:
        out.append(f"the focus mask reaches outside the solvent mask: {100 * overlap.fraction:.0f} % of the focus "
                   "region lies outside it and is clipped by the solvent mask during classification")
    return out
