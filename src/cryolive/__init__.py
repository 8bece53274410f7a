"""cryolive: cryo-EM single-particle analysis that streams into napari.

The scripting API (docs/scripting.md): the names below are loaded on first use (PEP 562), so ``import cryolive``
stays fast and imports neither Qt nor napari. Each is the function or generator the command line and the napari
docks run, working on arrays in memory (the job folders are :mod:`cryolive.jobs`):

* files: :func:`read_particles`, :func:`read_map`, :func:`write_map`, :func:`write_star`;
* :func:`simulate` (a simulated data set with ground truth, written to a new folder);
* :func:`reconstruct` (known poses: half maps, full map, gold-standard FSC), :func:`fsc` (gold-standard FSC of two
  half maps);
* generators yielding one immutable result per iteration and returning the final result: :func:`refine`,
  :func:`classify` (3D classification and heterogeneous refinement), :func:`classify2d`, :func:`correct_motion`;
* their parameters: :class:`RefineParams`, :class:`ClassifyParams`, :class:`Class2DParams`, :class:`MotionParams`,
  :class:`SimulationParams`.

``cryolive.class2d`` and ``cryolive.motion`` are the subpackages of those names, so their generators are exposed
as :func:`classify2d` and :func:`correct_motion`.

Layers (docs/architecture.md): the numerical core (``rotations``, ``image``, ``projection``, ``reconstruction``,
``resolution``, ``masks``, ``io``, ``simulator``, ``refinement``, ``classification``, ``class2d``, ``motion``)
never imports Qt, napari or :mod:`cryolive.jobs`; ``jobs`` runs the core and writes job folders; only
``cryolive.plugin`` (and the ``cryolive gui`` command) imports napari and Qt.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    "read_particles": ("cryolive.io", "read_particles"),
    "read_map": ("cryolive.io", "read_map"),
    "write_map": ("cryolive.io", "write_map"),
    "write_star": ("cryolive.io", "write_star"),
    "simulate": ("cryolive.simulator.dataset", "simulate_dataset"),
    "SimulationParams": ("cryolive.simulator.dataset", "SimulationParams"),
    "reconstruct": ("cryolive.reconstruction.halves", "reconstruct"),
    "fsc": ("cryolive.resolution.fsc", "gold_standard_fsc"),
    "refine": ("cryolive.refinement.refine", "refine"),
    "RefineParams": ("cryolive.refinement.refine", "RefineParams"),
    "classify": ("cryolive.classification.classify", "classify"),
    "ClassifyParams": ("cryolive.classification.classify", "ClassifyParams"),
    "classify2d": ("cryolive.class2d.classify2d", "classify2d"),
    "Class2DParams": ("cryolive.class2d.classify2d", "Class2DParams"),
    "correct_motion": ("cryolive.motion.polish", "motion"),
    "MotionParams": ("cryolive.motion.polish", "MotionParams"),
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'cryolive' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
