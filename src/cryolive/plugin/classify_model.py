"""The state of a 3D classification (or heterogeneous refinement) run as the Classification dock shows it,
without Qt.

:class:`ClassifyRunModel` holds the run's parameters, every iteration's class sizes (the bars of the size chart),
the newest iteration, the warnings the job gave (each once), the final particles per class, the classes ticked
for export, the two classes being compared, and the text of every status, log and plot-title line. The dock
(:mod:`cryolive.plugin._classify_widget`) owns the Qt widgets and the napari layers (one per class, and the
difference map of a comparison); it hands each iteration the worker yields to :meth:`ClassifyRunModel.receive`,
draws it and shows the model's text. Everything here can be used and tested from plain Python::

    model = ClassifyRunModel()
    model.start("particles.star", ClassifyParams(n_classes=3))
    gen = classify_job("particles.star", "jobs", model.params)
    steps, result = drain(gen, model.receive)
    model.finish(result, steps[-1].job_dir)
    model.set_selected([1, 3])
    model.export()  # <job>/particles_selected_classes_1_3.star

Classes are numbered from 1 (RELION's ``rlnClassNumber``) everywhere here; sizes are fractions of the particles.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cryolive.classification.classify import ClassifyParams
from cryolive.jobs.jobdir import interrupted_jobs, interrupted_text, job_state

#: the dock's modes: (what the mode list says, ``ClassifyParams.mode``)
MODES = (("3D classification (fixed poses)", "fixed"),
         ("3D classification (local pose search)", "local"),
         ("heterogeneous refinement", "hetero"))


#: the names of the job folders of 3D classifications and heterogeneous refinements
JOB_GLOBS = ("job_classify_*", "job_hetero_*")


def interrupted_classifications(out: str | os.PathLike) -> list[tuple[Path, str]]:
    """The 3D classifications and heterogeneous refinements in the output folder ``out`` that were interrupted
    (their process is gone) and can be continued, newest first: ``(job folder, "job_classify_002 was interrupted
    after iteration 3")``."""
    return [(job, interrupted_text(job)) for job in interrupted_jobs(out, JOB_GLOBS)]


def mode_text(mode: str) -> str:
    """What the dock calls ``mode`` ("fixed", "local" or "hetero")."""
    return dict((m, t) for t, m in MODES)[mode]


def class_layer_name(k: int) -> str:
    """The layer showing class ``k`` (1-based)."""
    return f"class {k}"


def diff_layer_name(a: int, b: int) -> str:
    """The difference layer of a comparison of classes ``a`` and ``b`` (1-based)."""
    return f"class {a} − class {b}"


def difference_map(map_a: np.ndarray, map_b: np.ndarray) -> tuple[np.ndarray, float]:
    """``(map_a − map_b, limit)``: the difference (float32, the maps' shape) and a symmetric contrast limit (the
    99.9th percentile of its magnitude; 1 for a zero difference)."""
    diff = np.asarray(map_a, dtype=np.float32) - np.asarray(map_b, dtype=np.float32)
    return diff, float(np.percentile(np.abs(diff), 99.9)) or 1.0


class ClassifyRunModel:
    """One classification run as the dock shows it: size history, warnings, final counts, selection, comparison.

    A run goes :meth:`start` → :meth:`receive` (each iteration the worker yields, in order) → :meth:`finish`
    (or it stops or fails: :meth:`stopped_text`). The dock calls the text methods when it draws an iteration.
    """

    def __init__(self) -> None:
        self.particles_path: str | None = None
        self.params = ClassifyParams()
        self.size_history: list[np.ndarray] = []  # every iteration's (K,) class sizes, in order
        self.iterations: list[int] = []  # the iterations received
        self.latest: Any = None  # the newest ClassIteration
        self.warnings: list[str] = []  # the job's warnings, each once, in the order they came
        self.final: Any = None  # the last ClassIteration, once the job has finished
        self.class_counts: np.ndarray | None = None  # (K,) particles per class (class k at k - 1) at the end
        self.job_dir: Path | None = None
        self.selected: list[int] = []  # the classes ticked for export (1-based, ascending)
        self.compared: tuple[int, int] | None = None  # the classes (a, b) being compared
        self.last_export: Path | None = None

    @property
    def n_classes(self) -> int:
        """K, the number of classes of the run."""
        return int(self.params.n_classes)

    @property
    def finished(self) -> bool:
        """True once the job has finished (the particles per class are known)."""
        return self.class_counts is not None

    # ------------------------------------------------------------------------------------------------ run
    def start(self, particles: str | os.PathLike, params: ClassifyParams) -> None:
        """Forget the previous run (its selection and comparison too): ``params`` on ``particles``."""
        self.particles_path = str(particles)
        self.params = params
        self.size_history = []
        self.iterations = []
        self.latest = None
        self.warnings = []
        self.final = None
        self.class_counts = None
        self.job_dir = None
        self.selected = []
        self.compared = None

    def continue_from(self, job_dir: str | os.PathLike) -> str:
        """Forget the previous run: the interrupted job in ``job_dir`` goes on (its particles and parameters from
        ``params.json``). Returns the status line ("continued job_classify_002 after iteration 3…"); OSError or
        ValueError when ``params.json`` cannot be read."""
        folder = Path(job_dir)
        prm = json.loads((folder / "params.json").read_text())
        names = {f.name for f in dataclasses.fields(ClassifyParams)}
        done = int(job_state(folder).get("iteration") or 0)
        self.start(prm["particles"], ClassifyParams(**{k: v for k, v in prm.items() if k in names}))
        self.job_dir = folder
        return f"continued {folder.name} after iteration {done}…"

    def receive(self, it: Any) -> None:
        """An iteration yielded by the job (main thread, before it is drawn): its sizes join the history (every
        iteration gets its bar, even one that is never drawn)."""
        self.size_history.append(np.asarray(it.class_sizes, dtype=float))
        self.iterations.append(int(it.iteration))
        self.latest = it
        if self.job_dir is None and getattr(it, "job_dir", None):
            self.job_dir = Path(it.job_dir)

    def new_warnings(self, warnings: Iterable[str]) -> list[str]:
        """The warnings among ``warnings`` (an iteration's) not seen before this run; they are remembered."""
        new = []
        for w in warnings:
            if w not in self.warnings:
                self.warnings.append(w)
                new.append(w)
        return new

    def finish(self, result: Any, job_dir: str | os.PathLike | None = None) -> np.ndarray:
        """The job's ClassifyResult: keep its final iteration and count each class's particles; returns the
        counts ``(K,)``."""
        self.final = result.final
        k = len(result.final.class_sizes)
        self.class_counts = np.bincount(np.asarray(result.classes, dtype=int), minlength=k + 1)[1:]
        if job_dir is not None:
            self.job_dir = Path(job_dir)
        return self.class_counts

    # ------------------------------------------------------------------------------------------------ text
    def start_log(self, device: str, layer_inputs: dict[str, str] | None = None) -> str:
        """The log's first line: the mode, the particles, K and the device; ``layer_inputs`` (input name →
        layer name) says which inputs were written from layers."""
        notes = "".join(f"; {k.replace('_', ' ')} from layer '{v}'" for k, v in (layer_inputs or {}).items())
        return f"{mode_text(self.params.mode)} of {self.particles_path}, {self.n_classes} classes, on {device}{notes}"

    @staticmethod
    def log_line(it: Any) -> str:
        """The log line of iteration ``it``."""
        sizes = ", ".join(f"{100 * s:.0f} %" for s in it.class_sizes)
        return (f"iteration {it.iteration} ({it.stage}, {it.n_particles} particles, similarity {it.similarity:.2f}): "
                f"sizes {sizes}; {100 * it.changed_fraction:.1f} % changed class; mean ESS {it.mean_ess:.2f}; "
                f"{it.timings.get('total_s', float('nan')):.1f} s")

    def status(self, it: Any, elapsed_s: float) -> str:
        """The status line while iteration ``it`` is on screen."""
        return (f"iteration {it.iteration} of ≤ {self.params.max_iter} ({it.stage}): "
                f"{100 * it.changed_fraction:.1f} % changed class, mean ESS {it.mean_ess:.2f} "
                f"({elapsed_s:.0f} s so far)")

    def sizes_title(self) -> str:
        """The class-size chart's title."""
        return f"class sizes, iterations 1–{len(self.size_history)}"

    @staticmethod
    def fsc_title(it: Any) -> str:
        """The class-FSC plot's title for iteration ``it`` (each class's resolution at 0.5)."""
        res = ", ".join(f"{c + 1}: {r:.1f} Å" for c, r in enumerate(it.class_resolution_A))
        return f"class FSC, iteration {it.iteration} (at 0.5: {res})"

    def finished_text(self, elapsed_s: float) -> tuple[str, str, str]:
        """``(log line, status line, notification)`` once the job has finished (after :meth:`finish`)."""
        final = self.final
        sizes = ", ".join(f"{100 * s:.1f} %" for s in final.class_sizes)
        log = (f"finished in {elapsed_s:.1f} s after {final.iteration} iterations: class sizes {sizes}; "
               f"outputs in {self.job_dir}")
        status = (f"finished: {final.iteration} iterations, {final.mean_ess:.2f} mean ESS, "
                  f"{100 * final.changed_fraction:.1f} % changed in the last ({elapsed_s:.0f} s)")
        return log, status, f"Classification finished: class sizes {sizes}"

    @staticmethod
    def stopped_text(last_iteration: int | None) -> tuple[str, str]:
        """``(log line, status line)`` of a stopped run."""
        return (f"stopped after iteration {last_iteration}; the job folder says 'stopped' (no particles.star, so "
                "nothing to export)", f"stopped after iteration {last_iteration}")

    def class_rows(self) -> list[str]:
        """One line per class for the class list once the job has finished ("class 1: 210 particles (35.0 %),
        9.8 Å")."""
        if self.final is None or self.class_counts is None:
            return []
        final = self.final
        return [f"class {c + 1}: {n} particles ({100 * final.class_sizes[c]:.1f} %), "
                f"{final.class_resolution_A[c]:.1f} Å" for c, n in enumerate(self.class_counts)]

    # ------------------------------------------------------------------------------------------------ export
    def set_selected(self, classes: Iterable[int]) -> None:
        """Tick exactly ``classes`` (1-based) for export."""
        self.selected = sorted({int(c) for c in classes})

    def default_export_path(self, classes: Iterable[int] | None = None) -> Path | None:
        """``<job>/particles_selected_classes_1_3.star`` for ``classes`` (default: the ticked ones); ``_2``,
        ``_3`` … appended when taken. None before the job folder is known."""
        if self.job_dir is None:
            return None
        chosen = self.selected if classes is None else sorted(int(c) for c in classes)
        stem = "particles_selected_classes_" + "_".join(map(str, chosen))
        path = self.job_dir / f"{stem}.star"
        i = 2
        while path.exists():
            path = self.job_dir / f"{stem}_{i}.star"
            i += 1
        return path

    def classified_star(self) -> Path | None:
        """The job's ``particles.star`` (every particle with its class) when it exists (written at the end)."""
        star = self.job_dir / "particles.star" if self.job_dir else None
        return star if star is not None and star.is_file() else None

    def export_problem(self, dest: str | os.PathLike | None = None) -> str:
        """Why the ticked classes cannot be exported to ``dest`` (default: :meth:`default_export_path`); ""
        when they can."""
        if not self.selected:
            return "Tick the classes to export"
        if self.classified_star() is None:
            return "No finished classification to export from (particles.star is written when the job ends)"
        path = Path(dest) if dest else self.default_export_path()
        if path is not None and path.exists():
            return f"{path} exists: choose a new file name"
        return ""

    def export(self, dest: str | os.PathLike | None = None) -> tuple[Path, int]:
        """Write the ticked classes' particles to ``dest`` (default: :meth:`default_export_path`), a new STAR
        file; returns ``(path, number of particles)``. ValueError (saying why) when :meth:`export_problem`
        finds one; the job layer's errors (an empty selection of particles) pass through."""
        from cryolive.jobs.classify import export_classes

        problem = self.export_problem(dest)
        if problem:
            raise ValueError(problem)
        path = Path(dest) if dest else self.default_export_path()
        n = export_classes(self.classified_star(), self.selected, path)
        self.last_export = path
        return path, int(n)

    # ------------------------------------------------------------------------------------------------ compare
    @staticmethod
    def compare_problem(a: int, b: int, shape_a: tuple[int, ...] | None, shape_b: tuple[int, ...] | None) -> str:
        """Why classes ``a`` and ``b`` (1-based; maps of shapes ``shape_a``, ``shape_b``, None when a class has
        no map yet) cannot be compared; "" when they can."""
        if a == b or shape_a is None or shape_b is None:
            return "Choose two different classes whose layers exist (they appear after the first iteration)"
        if tuple(shape_a) != tuple(shape_b):
            return f"class {a} and class {b} have different boxes"
        return ""

    def start_compare(self, a: int, b: int) -> bool:
        """Compare classes ``a`` and ``b`` (1-based); True when that is a different pair from the one before."""
        new = self.compared != (a, b)
        self.compared = (a, b)
        return new

    def end_compare(self) -> None:
        """No comparison any more."""
        self.compared = None
