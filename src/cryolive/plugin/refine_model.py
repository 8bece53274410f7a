"""The state of a refinement run as the Refinement dock shows it, without Qt.

:class:`RefineRunModel` holds what the dock knows about the running (or last) refinement: its inputs and
parameters, the reference's voxel size and origin, every map so far (a :class:`MapHistory`), a summary of each
iteration, the ab-initio steps shown, the final result, and the text of every status, log and plot-title line.
The dock (:mod:`cryolive.plugin._refine_widget`) owns the Qt widgets and napari layers; it hands each step the
worker yields to :meth:`RefineRunModel.receive`, draws it, and shows the model's text. Everything here can be
used and tested from plain Python::

    model = RefineRunModel()
    model.start("particles.star", "reference.mrc", ref_map, pixel_size=2.0, params=RefineParams(max_iter=2))
    gen = refine_job("particles.star", "reference.mrc", "jobs", model.params)
    for step in gen:  # SGDStep (ab-initio) or RefineIteration
        model.receive(step)
        print(model.status(step, elapsed_s=0.0))
    model.history.data  # (iterations + 1, n, n, n): the reference, then every iteration's map

Maps are NumPy float32 ``[z, y, x]``; lengths in Å, angles in degrees.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryolive.jobs.jobdir import input_in_folder, interrupted_jobs, interrupted_text, job_state
from cryolive.refinement.refine import RefineParams
from cryolive.refinement.sgd import SGDStep

#: the names of refinement job folders
JOB_GLOBS = ("job_refine_*",)
#: fields always named in the log's "parameters:" line (the others only when they differ from the default)
ALWAYS_LOGGED = ("symmetry", "max_iter")
#: the default memory bound of a :class:`MapHistory` (bytes): above it the maps are kept 2x binned
HISTORY_MAX_BYTES = 2 << 30


class MapHistory:
    """Every iteration's map in one growing ``(iterations, z, y, x)`` float32 buffer (the history layer shows a view).

    ``first``: the first map ``(n, n, n)`` (the reference); ``capacity``: how many maps to make room for at once
    (the buffer doubles when full). Memory is bounded: when ``capacity`` full-size maps would pass ``max_bytes``,
    maps are stored 2x binned (``binned`` is True and the voxel size of :attr:`data` is twice the map's).
    """

    def __init__(self, first: np.ndarray, capacity: int, max_bytes: int = HISTORY_MAX_BYTES) -> None:
        self.binned = first.nbytes * max(capacity, 1) > max_bytes
        m = self._prep(first)
        self._buf = np.empty((max(capacity, 2), *m.shape), dtype=np.float32)
        self._buf[0] = m
        self.count = 1

    def _prep(self, vol: np.ndarray) -> np.ndarray:
        from cryolive.plugin._mask_compute import bin2

        v = np.asarray(vol, dtype=np.float32)
        return bin2(v) if self.binned else v

    def append(self, vol: np.ndarray) -> None:
        """Add one map ``(n, n, n)`` (binned when the history is)."""
        if self.count == self._buf.shape[0]:
            grown = np.empty((2 * self.count, *self._buf.shape[1:]), dtype=np.float32)
            grown[: self.count] = self._buf
            self._buf = grown
        self._buf[self.count] = self._prep(vol)
        self.count += 1

    @property
    def data(self) -> np.ndarray:
        """The maps so far, ``(count, m, m, m)`` float32 (a view of the buffer; ``m`` is ``n`` or ``n // 2``)."""
        return self._buf[: self.count]

    @property
    def factor(self) -> float:
        """The stored maps' voxel size over the input maps' (2 when binned, else 1)."""
        return 2.0 if self.binned else 1.0


@dataclass(frozen=True)
class IterationSummary:
    """What the dock keeps of one iteration besides its map: resolutions in Å, time in s."""

    iteration: int
    search: str
    n_particles: int
    resolution_A: float
    resolution_unmasked_A: float
    seconds: float


def mask_choice_warning(name: str, kind: str | None, data: np.ndarray) -> str:
    """Why the layer ``name`` is a doubtful refinement mask ("" when it is fine).

    ``kind``: the layer's ``cryolive_mask`` metadata ("solvent", "focus", "outside" or None); ``data``: its
    values (a mask lies in 0 … 1).
    """
    if kind in ("focus", "outside"):
        return (f"'{name}' is a focus mask: refinement expects a solvent mask around the whole particle (make one "
                "in the Masks dock).")
    if kind is None:
        values = np.asarray(data)
        if float(values.min()) < -1e-3 or float(values.max()) > 1 + 1e-3:
            return f"'{name}' is not a mask (values outside 0 … 1)."
    return ""


def interrupted_refinements(out: str | Path) -> list[tuple[Path, str]]:
    """The refinements in the output folder ``out`` that were interrupted (their process is gone) and can be
    continued, newest first: ``(job folder, "job_refine_003 was interrupted after iteration 4")``."""
    return [(job, interrupted_text(job)) for job in interrupted_jobs(out, JOB_GLOBS)]


def continued_text(job_dir: str | Path, done: int) -> str:
    """The status line of a job continued in ``job_dir`` after ``done`` iterations."""
    return f"continued {Path(job_dir).name} after iteration {done}…"


def relax_symmetry_value(text: str) -> str | None:
    """``RefineParams.relax_symmetry`` from what the dock's field says: None for "", "none" or "C1"."""
    relax = text.strip().upper()
    return None if relax in ("", "NONE", "C1") else relax


class RefineRunModel:
    """One refinement run as the dock shows it: inputs, map history, iteration summaries, status and log text.

    A run goes :meth:`start` → :meth:`receive` (each step the worker yields, in order) → :meth:`finish` or
    :meth:`stopped_where`. The dock calls the text methods when it draws a step.
    """

    def __init__(self) -> None:
        self.particles_path: str | None = None
        self.reference_path: str | None = None
        self.mask_path: str | None = None
        self.params = RefineParams()
        self.pixel_size = 1.0  # Å, of the reference (and the maps)
        self.translate: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the reference layer's origin (Å)
        self.box = 0
        self.history: MapHistory | None = None
        self.iterations: list[IterationSummary] = []  # every iteration received, in order
        self.sgd_steps_shown: list[int] = []  # the ab-initio steps drawn (step numbers, from 1)
        self.final: Any = None  # the last RefineIteration, once the job has finished
        self.job_dir: Path | None = None
        self.done_before = 0  # iterations a continued job had run before (0 for a new run)

    # ------------------------------------------------------------------------------------------------ run
    def start(self, particles: str, reference: Any, reference_map: np.ndarray, pixel_size: float,
              params: RefineParams, mask: Any = None,
              translate: tuple[float, ...] = (0.0, 0.0, 0.0), max_bytes: int = HISTORY_MAX_BYTES) -> None:
        """Forget the previous run: a new run of ``params`` on ``particles`` against ``reference_map``
        (``reference``: its file, or the :class:`cryolive.io.MapInput` of a layer; ``mask`` likewise)
        ``(n, n, n)`` (voxel size ``pixel_size`` Å, origin ``translate`` Å), the first map of the history."""
        ref = np.asarray(reference_map, dtype=np.float32)
        self.particles_path = str(particles)
        self.reference_path = str(reference)
        self.mask_path = str(mask) if mask else None
        self.params = params
        self.pixel_size = float(pixel_size)
        self.translate = tuple(float(t) for t in translate)  # type: ignore[assignment]
        self.box = int(ref.shape[-1])
        self.history = MapHistory(ref, params.max_iter + 3, max_bytes)
        self.iterations = []
        self.sgd_steps_shown = []
        self.final = None
        self.job_dir = None
        self.done_before = 0

    def continue_from(self, job_dir: str | Path) -> str:
        """Forget the previous run: the interrupted refinement in ``job_dir`` goes on (its particles, reference,
        mask and parameters from ``params.json``; the reference is the history's first map). Returns the status
        line ("continued job_refine_003 after iteration 4…"); OSError or ValueError when the folder's
        files cannot be read."""
        from cryolive.io import read_map

        folder = Path(job_dir)
        prm = json.loads((folder / "params.json").read_text())
        names = {f.name for f in dataclasses.fields(RefineParams)}
        params = RefineParams(**{k: v for k, v in prm.items() if k in names})
        reference = input_in_folder(folder, prm["reference"])  # the job's own input_reference.mrc for a layer
        ref, apix = read_map(reference)
        done = int(job_state(folder).get("iteration") or 0)
        self.start(prm["particles"], reference, ref, apix, params, input_in_folder(folder, prm.get("mask")))
        self.job_dir = folder
        self.done_before = done
        return continued_text(folder, done)

    def receive(self, step: Any) -> None:
        """A step yielded by the job (main thread, before it is drawn): an iteration's map joins the history and
        its summary the list; ab-initio steps (:class:`~cryolive.refinement.sgd.SGDStep`) are not kept."""
        if is_sgd_step(step):
            return
        self._add_iteration(step)

    def _add_iteration(self, it: Any) -> None:
        if self.history is not None:
            self.history.append(it.map)
        self.iterations.append(IterationSummary(int(it.iteration), str(it.search), int(it.n_particles),
                                                float(it.resolution_A), float(it.resolution_unmasked_A),
                                                float(it.timings.get("total_s", float("nan")))))

    def sgd_step_shown(self, step: SGDStep) -> bool:
        """Record that ab-initio ``step`` is on screen; True for the first one of the run."""
        first = not self.sgd_steps_shown
        self.sgd_steps_shown.append(int(step.step))
        return first

    def finish(self, result: Any) -> bool:
        """The job's RefineResult: keep its final iteration. True when that iteration was never received (the
        job's ``map.mrc`` is ``final.map``: it then joins the history and the dock must draw it)."""
        final = result.final
        self.final = final
        if self.iterations and self.iterations[-1].iteration == final.iteration:
            return False
        self._add_iteration(final)
        return True

    # ------------------------------------------------------------------------------------------------ geometry
    @property
    def scale3(self) -> tuple[float, float, float]:
        """The maps' voxel size per axis (Å)."""
        return (self.pixel_size,) * 3

    def history_geometry(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Scale and translate (Å; iteration axis first, 1 and 0) of the history layer: a binned history has
        twice the voxel size, its first voxel's centre half a voxel further in."""
        f = self.history.factor if self.history is not None else 1.0
        scale = (1.0, *(f * a for a in self.scale3))
        translate = (0.0, *(t + (f - 1) * 0.5 * self.pixel_size for t in self.translate))
        return scale, translate

    # ------------------------------------------------------------------------------------------------ text
    def start_log(self, device: str) -> list[str]:
        """The log's first lines: what runs where, and the parameters that differ from the defaults."""
        where = f"refinement of {self.particles_path} against {self.reference_path}"
        if self.mask_path:
            where += f" with mask {self.mask_path}"
        defaults = RefineParams()
        changed = {k: v for k, v in dataclasses.asdict(self.params).items()
                   if v != getattr(defaults, k) or k in ALWAYS_LOGGED}
        return [f"{where} on {device}", "parameters: " + json.dumps(changed)]

    def map_title(self, step: Any) -> str:
        """The map layer's ``title`` metadata for an iteration or an ab-initio step."""
        if is_sgd_step(step):
            return f"ab-initio step {step.step}/{step.n_steps} ({step.resolution_A:.1f} Å)"
        return f"iteration {step.iteration} ({step.search}): {step.resolution_A:.2f} Å"

    def status(self, step: Any, elapsed_s: float) -> str:
        """The status line while ``step`` (an iteration or an ab-initio step) is on screen."""
        if is_sgd_step(step):
            return (f"ab-initio step {step.step} of {step.n_steps} at {step.resolution_A:.1f} Å "
                    f"({elapsed_s:.0f} s so far); the refinement starts from its map")
        return (f"iteration {step.iteration} of ≤ {self.params.max_iter}: {step.resolution_A:.2f} Å "
                f"({elapsed_s:.0f} s so far)")

    def log_line(self, step: Any) -> str | None:
        """The log line of ``step``: every iteration; an ab-initio step only every 10th and the last (None)."""
        if is_sgd_step(step):
            if not step.milestone:
                return None
            return (f"ab-initio step {step.step}/{step.n_steps} at {step.resolution_A:.1f} Å "
                    f"({step.seconds:.2f} s per step)")
        t = step.timings
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items() if k != "total_s")
        change = step.pose_summary.get("median_pose_change_deg")
        moved = f"; median pose change {change:.2f}°" if change is not None and np.isfinite(change) else ""
        return (f"iteration {step.iteration} ({step.search}, {step.n_particles} particles, aligned to "
                f"{step.align_resolution_A:.1f} Å): {step.resolution_A:.2f} Å masked+corrected, "
                f"{step.resolution_unmasked_A:.2f} Å unmasked{moved}; {t.get('total_s', float('nan')):.1f} s "
                f"({parts})")

    @staticmethod
    def fsc_title(it: Any) -> str:
        """The FSC plot's title for iteration ``it`` (HTML)."""
        return (f"iteration {it.iteration} ({it.search}): <b>{it.resolution_A:.2f} Å</b> masked+corrected "
                f"(0.143), {it.resolution_unmasked_A:.2f} Å unmasked")

    @staticmethod
    def angular_title(it: Any) -> str:
        """The angular-distribution plot's title for iteration ``it``."""
        return f"angular distribution, iteration {it.iteration} ({it.n_particles} particles)"

    #: the FSC plot's title while only ab-initio steps have run
    SGD_FSC_TITLE = "FSC: ab-initio steps first (no half maps before iteration 1)"

    def finished_text(self, elapsed_s: float) -> tuple[str, str, str]:
        """``(log line, status line, notification)`` once the job has finished (after :meth:`finish`)."""
        final = self.final
        log = (f"finished in {elapsed_s:.1f} s: {final.resolution_A:.2f} Å (GSFSC 0.143); outputs in "
               f"{self.job_dir}")
        status = f"finished: {final.resolution_A:.2f} Å after {final.iteration} iterations ({elapsed_s:.0f} s)"
        notice = f"Refinement finished: {final.resolution_A:.2f} Å" + (f" ({self.job_dir.name})" if self.job_dir
                                                                         else "")
        # the job's own warnings (status.json): a GSFSC inside the shared starting band, half maps that share noise
        warnings = [] if self.job_dir is None else list(job_state(self.job_dir).get("warnings") or [])
        if warnings:
            log += "".join(f"\nWARNING: {w}" for w in warnings)
            status += f"; {len(warnings)} warning{'s' if len(warnings) > 1 else ''} in the log"
            notice += f". WARNING: {warnings[0]}"
        return log, status, notice

    def stopped_where(self, last_iteration: int | None) -> str:
        """Where a stopped run ended: "after iteration N", or after an ab-initio step when no iteration ran."""
        if last_iteration:
            return f"after iteration {last_iteration}"
        step = self.sgd_steps_shown[-1] if self.sgd_steps_shown else 0
        return f"after ab-initio step {step}, before the first iteration"


def is_sgd_step(step: Any) -> bool:
    """Whether a step the refinement job yielded is an ab-initio step (else a RefineIteration)."""
    return isinstance(step, SGDStep)
