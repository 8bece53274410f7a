"""3D classification (fixed poses, focus and solvent masks) and heterogeneous refinement (pose search per class)."""

from cryolive.classification.classify import (
    ClassifyParams,
    ClassifyResult,
    ClassIteration,
    classify,
    posteriors_from_scores,
)
from cryolive.classification.masks import auto_solvent_mask, compose_class_volume, mask_warnings
from cryolive.classification.metrics import adjusted_rand_index, effective_classes

__all__ = [
    "ClassIteration",
    "ClassifyParams",
    "ClassifyResult",
    "adjusted_rand_index",
    "auto_solvent_mask",
    "classify",
    "compose_class_volume",
    "effective_classes",
    "mask_warnings",
    "posteriors_from_scores",
]
