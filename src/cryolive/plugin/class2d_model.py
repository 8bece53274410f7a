"""The state of a 2D classification run as the 2D classification dock shows it, without Qt.

:class:`Class2DRunModel` holds the newest iteration's class averages, sizes and resolutions, what the user decided
about each class (selected, rejected or undecided), and, once the job has finished, every particle's class. The
dock (:mod:`cryolive.plugin._class2d_widget`) only draws this state and forwards clicks to it; everything here
can be used and tested from plain Python::

    model = Class2DRunModel()
    model.start("particles.star", k=50)
    for it in class2d_job("particles.star", "jobs", Class2DParams(k=50)):
        model.update(it)
    model.finish(result)
    model.select(model.gallery_order()[:10])
    model.export_star()  # <job>/particles_selected.star

The exported STAR is the job's ``particles.star`` restricted to the selected classes' particles, without the
in-plane angle ``rlnAnglePsi`` (a 2D angle is not a 3D pose: the refinement and 3D classification docks must not
take it for one); ``rlnClassNumber`` and the origins ``rlnOriginXAngst/YAngst`` (the particles' centres found by
the classification) are kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from cryolive.jobs.class2d import gallery_order

#: per-class decisions
UNDECIDED, SELECTED, REJECTED = 0, 1, -1
DECISION_NAMES = {UNDECIDED: "undecided", SELECTED: "selected", REJECTED: "rejected"}
#: the default name of the exported file, in the job folder
EXPORT_NAME = "particles_selected.star"


class Class2DRunModel:
    """One 2D classification run: newest class averages, per-class decisions, final assignments, export.

    Signals (psygnal): ``changed(str)`` with what changed: ``"reset"`` (a new run), ``"iteration"`` (new
    averages), ``"finished"`` (assignments known), ``"decisions"`` (a class was selected or rejected).
    Class indices are 0-based everywhere (RELION's ``rlnClassNumber`` is ``index + 1``).
    """

    changed = Signal(str)

    def __init__(self) -> None:
        self.particles_path: str | None = None
        self.job_dir: Path | None = None
        self.iteration = 0
        self.averages: np.ndarray | None = None  # (K, n, n) float32
        self.sizes = np.zeros(0, dtype=np.int64)
        self.resolution_A = np.zeros(0)
        self.decisions = np.zeros(0, dtype=np.int8)  # UNDECIDED / SELECTED / REJECTED per class
        self.assignments: np.ndarray | None = None  # (N,) 0-based class, once finished
        self._pixel_size: float | None = None

    # ------------------------------------------------------------------------------------------------ run
    def start(self, particles_path: str | os.PathLike, k: int) -> None:
        """Forget the previous run: ``k`` undecided classes of ``particles_path``, nothing computed yet."""
        self.particles_path = str(particles_path)
        self.job_dir = None
        self.iteration = 0
        self.averages = None
        self.sizes = np.zeros(k, dtype=np.int64)
        self.resolution_A = np.full(k, np.inf)
        self.decisions = np.zeros(k, dtype=np.int8)
        self.assignments = None
        self._pixel_size = None
        self.changed.emit("reset")

    def update(self, iteration: Any) -> None:
        """Take a :class:`~cryolive.class2d.Class2DIteration`'s averages, sizes, resolutions and job folder."""
        self._set_classes(iteration.averages, iteration.sizes, iteration.resolution_A)
        self.iteration = int(iteration.iteration)
        if getattr(iteration, "job_dir", None):
            self.job_dir = Path(iteration.job_dir)
        self.changed.emit("iteration")

    def finish(self, result: Any, job_dir: str | os.PathLike | None = None) -> None:
        """Take a :class:`~cryolive.class2d.Class2DResult`: the final classes and every particle's class."""
        self._set_classes(result.averages, result.sizes, result.resolution_A)
        self.iteration = int(getattr(result, "iterations", self.iteration))
        self.assignments = np.asarray(result.assignments, dtype=np.int64)
        if job_dir is not None:
            self.job_dir = Path(job_dir)
        self.changed.emit("finished")

    def _set_classes(self, averages: np.ndarray, sizes: np.ndarray, resolution_A: np.ndarray) -> None:
        self.averages = np.asarray(averages, dtype=np.float32)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.resolution_A = np.asarray(resolution_A, dtype=float)
        k = len(self.sizes)
        if len(self.decisions) != k:  # K is known from the first iteration when start() was not called
            self.decisions = np.zeros(k, dtype=np.int8)

    @property
    def k(self) -> int:
        """Number of classes."""
        return len(self.decisions)

    @property
    def finished(self) -> bool:
        """True once every particle's class is known (:meth:`finish` was called)."""
        return self.assignments is not None

    @property
    def n_particles(self) -> int:
        """Particles classified (the sum of the class sizes)."""
        return int(self.sizes.sum())

    @property
    def pixel_size(self) -> float | None:
        """The particles' pixel size (Å), from the job folder's ``params.json`` (None before it exists)."""
        if self._pixel_size is None and self.job_dir is not None:
            try:
                self._pixel_size = float(json.loads((self.job_dir / "params.json").read_text())["pixel_size_A"])
            except (OSError, KeyError, ValueError):
                return None
        return self._pixel_size

    # ------------------------------------------------------------------------------------------------ decisions
    def decision(self, k: int) -> int:
        """Class ``k``'s decision: :data:`UNDECIDED`, :data:`SELECTED` or :data:`REJECTED`."""
        return int(self.decisions[k])

    def toggle(self, k: int) -> int:
        """A click on class ``k``: selected becomes rejected, anything else selected; returns the new decision."""
        self._check(k)
        self.decisions[k] = REJECTED if self.decisions[k] == SELECTED else SELECTED
        self.changed.emit("decisions")
        return int(self.decisions[k])

    def select(self, indices: Iterable[int]) -> None:
        """Mark classes ``indices`` selected (the others keep their decision)."""
        self._decide(indices, SELECTED)

    def reject(self, indices: Iterable[int]) -> None:
        """Mark classes ``indices`` rejected (the others keep their decision)."""
        self._decide(indices, REJECTED)

    def select_all(self) -> None:
        self._decide(range(self.k), SELECTED)

    def reject_all(self) -> None:
        self._decide(range(self.k), REJECTED)

    def invert(self) -> None:
        """Selected classes become rejected; rejected and undecided ones selected."""
        self.decisions = np.where(self.decisions == SELECTED, REJECTED, SELECTED).astype(np.int8)
        self.changed.emit("decisions")

    def _decide(self, indices: Iterable[int], value: int) -> None:
        idx = [int(i) for i in indices]
        for i in idx:
            self._check(i)
        self.decisions[idx] = value
        self.changed.emit("decisions")

    def _check(self, k: int) -> None:
        if not 0 <= int(k) < self.k:
            raise IndexError(f"class index {k} out of range: there are {self.k} classes (0-based)")

    def selected_classes(self) -> np.ndarray:
        """Indices (0-based) of the selected classes, ascending."""
        return np.flatnonzero(self.decisions == SELECTED)

    def gallery_order(self) -> np.ndarray:
        """Class indices (0-based) from the largest class to the smallest (the gallery's order)."""
        return gallery_order(self.sizes)

    # ------------------------------------------------------------------------------------------------ particles
    def particles_of_class(self, k: int) -> np.ndarray:
        """Indices (into the input particle file) of the particles in class ``k`` (after :meth:`finish`)."""
        self._check(k)
        return np.flatnonzero(self._assignments() == int(k))

    def selected_particle_indices(self) -> np.ndarray:
        """Indices (into the input particle file) of the particles in the selected classes, ascending."""
        return np.flatnonzero(np.isin(self._assignments(), self.selected_classes()))

    def _assignments(self) -> np.ndarray:
        if self.assignments is None:
            raise RuntimeError("the classification has not finished: no particle has a final class yet")
        return self.assignments

    def classified_star(self) -> Path:
        """The job's ``particles.star`` (every particle with its class), written when the job finishes."""
        if self.job_dir is None:
            raise RuntimeError("no job folder yet")
        return self.job_dir / "particles.star"

    def default_export_path(self) -> Path:
        """``<job>/particles_selected.star``, or ``particles_selected_2.star``, ``_3`` … when taken."""
        if self.job_dir is None:
            raise RuntimeError("no job folder yet")
        path = self.job_dir / EXPORT_NAME
        i = 2
        while path.exists():
            path = self.job_dir / f"{Path(EXPORT_NAME).stem}_{i}.star"
            i += 1
        return path

    def export_star(self, path: str | os.PathLike | None = None, overwrite: bool = False) -> tuple[Path, int]:
        """Write the selected classes' particles as a RELION STAR file; returns ``(path, number of particles)``.

        ``path`` defaults to :meth:`default_export_path`. FileExistsError when ``path`` exists and ``overwrite``
        is False; ValueError when no class is selected (or the selected classes are empty).
        """
        from cryolive.io import read_star, write_star

        indices = self.selected_particle_indices()
        if len(self.selected_classes()) == 0:
            raise ValueError("no class is selected")
        if len(indices) == 0:
            raise ValueError("the selected classes hold no particles")
        dest = Path(path) if path is not None else self.default_export_path()
        if dest.exists() and not overwrite:
            raise FileExistsError(f"{dest} exists")
        stack = read_star(self.classified_star())
        if len(stack) != len(self._assignments()):
            raise ValueError(f"{self.classified_star()} holds {len(stack)} particles, the run classified "
                             f"{len(self._assignments())}")
        write_star(_without_in_plane_angles(stack).subset(indices), dest, overwrite=overwrite)
        return dest, int(len(indices))


def _without_in_plane_angles(stack: Any) -> Any:
    """``stack`` without poses and without ``rlnAngle*`` columns (origins and classes kept)."""
    table = stack.table.drop(columns=[c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
                                      if c in stack.table.columns])
    return stack.replace(rotations=None, table=table)
