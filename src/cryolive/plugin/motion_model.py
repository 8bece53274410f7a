"""The state of a motion-correction run as the Motion correction dock shows it, without Qt.

:class:`MotionRunModel` holds the run's job arguments, the newest step (:class:`~cryolive.motion.MotionStep`), the
progress of the current stage, the newest dose weights and hyper-parameter search, the result, and the text of the
status line. The dock (:mod:`cryolive.plugin._motion_widget`) owns the Qt widgets and napari layers; it hands each
step the worker yields to :meth:`MotionRunModel.update` and draws it. Everything here can be used and tested from
plain Python::

    model = MotionRunModel()
    args = job_args({"particles": "p.star", "movies": "movies", "half_a": "a.mrc", "half_b": "b.mrc"}, params)
    model.start(args)
    steps, result = drain(motion_job(**args), model.update)
    model.finish("finished", result)
    model.status_text  # "finished: r 5, θ 0.80, z 300 Å"

A motion correction that was killed goes on in its folder: :func:`interrupted_motions` lists those of an output
folder, :meth:`MotionRunModel.continue_from` takes one (the dock then runs ``continue_motion_job(job_dir)``).

Positions and trajectories are in pixels of the movie frames, ``(x, y)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cryolive.jobs.jobdir import interrupted_jobs, job_state

#: the dock's path fields: (key, label, a folder?) in the order shown
PATH_FIELDS = (("particles", "particles STAR", False), ("movies", "movies folder or STAR", True),
               ("half_a", "half map A", False), ("half_b", "half map B", False),
               ("mask", "mask (optional)", False), ("out", "output folder", True),
               ("hyper", "hyper JSON (optional)", False), ("dose", "dose weights (optional)", False))
#: ``motion_job`` arguments a run cannot do without
REQUIRED = ("particles_path", "movies", "half_a_path", "half_b_path")
#: the prefix of the trajectories layer's name (the magnification follows)
TRACKS_PREFIX = "motion trajectories"
#: the motion job folders' names (``motion_job`` makes ``job_motion_<nnn>``)
JOB_GLOBS = ("job_motion_*",)


def job_args(paths: dict[str, str | None], params: Any) -> dict[str, Any]:
    """Keyword arguments of ``motion_job`` from the dock's path fields (``PATH_FIELDS`` keys → text; empty or
    missing ones are None, the output folder defaults to ``jobs``) and a MotionParams."""

    def val(key: str) -> str | None:
        text = (paths.get(key) or "").strip()
        return text or None

    return {"particles_path": val("particles"), "movies": val("movies"), "half_a_path": val("half_a"),
            "half_b_path": val("half_b"), "mask_path": val("mask"), "out": val("out") or "jobs",
            "params": params, "hyper_path": val("hyper"), "dose_path": val("dose")}


def missing_inputs(args: dict[str, Any]) -> list[str]:
    """The required ``motion_job`` arguments that ``args`` lacks."""
    return [k for k in REQUIRED if not args.get(k)]


def progress_text(folder: str | os.PathLike) -> str:
    """How far the motion job in ``folder`` got by its ``status.json``: "after final 1/3" (its last step: stage,
    units done of the stage's total), or "before its first step ended"."""
    status = job_state(folder)
    stage, done, total = status.get("stage"), status.get("done"), status.get("total")
    if not done or stage not in ("hyper", "dose", "final"):
        return "before its first step ended"
    return f"after {stage} {done}" + (f"/{total}" if total else "")


def interrupted_motions(out: str | os.PathLike) -> list[tuple[Path, str]]:
    """The motion corrections in the output folder ``out`` that were interrupted (their process is gone) and can be
    continued from their checkpoint, newest first: ``(job folder, "job_motion_002 was interrupted after final
    1/3")``."""
    return [(job, f"{job.name} was interrupted {progress_text(job)}") for job in interrupted_jobs(out, JOB_GLOBS)]


def track_data(positions: np.ndarray, traj: np.ndarray, magnify: float) -> np.ndarray:
    """Tracks rows ``(N F, 4)`` = ``[particle, frame, y, x]``: each trajectory ``(N, F, 2)`` px (x, y), minus its mean,
    magnified and drawn around the particle position ``(N, 2)`` px (x, y)."""
    n, f = traj.shape[:2]
    rel = (traj - traj.mean(axis=1, keepdims=True)) * magnify
    ids = np.repeat(np.arange(n), f)
    frames = np.tile(np.arange(f), n)
    y = (positions[:, None, 1] + rel[..., 1]).ravel()
    x = (positions[:, None, 0] + rel[..., 0]).ravel()
    return np.stack([ids, frames, y, x], axis=1).astype(float)


def tracks_layer_name(magnify: float) -> str:
    """The trajectories layer's name at magnification ``magnify`` ("motion trajectories (×10)")."""
    return f"{TRACKS_PREFIX} (×{magnify:g})"


def search_curves(search: tuple) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], tuple[float, float] | None]:
    """The hyper-parameter search as plot data: ``{ray: (r, score)}`` (each ray's total prior strengths and
    cross-validation scores, in search order) and the best point ``(r, score)`` (None before the first)."""
    rays = {}
    for ray in sorted({s.ray for s in search}):
        pts = [s for s in search if s.ray == ray]
        rays[ray] = (np.array([s.hyper.r for s in pts], float), np.array([s.score for s in pts], float))
    best = min(search, key=lambda s: s.score) if search else None
    return rays, (None if best is None else (float(best.hyper.r), float(best.score)))


class MotionRunModel:
    """One motion-correction run as the dock shows it: arguments, progress, newest step, plots' data, status.

    ``state``: "idle", "running", then "finished", "stopped" or "failed" (:meth:`finish`).
    """

    def __init__(self) -> None:
        self._reset()
        self.state = "idle"
        self.status_text = "idle"

    def _reset(self) -> None:
        self.args: dict[str, Any] | None = None
        self.latest: Any = None  # the newest MotionStep
        self.steps = 0  # steps received this run
        self.done = 0  # of the current stage
        self.total = 0
        self.dose_weights: np.ndarray | None = None  # (frames, shells), the newest
        self.search: tuple = ()  # the newest hyper-parameter search (SearchPoints)
        self.result: Any = None  # the MotionResult, once finished
        self.job_dir: Path | None = None  # the folder of a continued run (a new run's is made by the job)

    def start(self, args: dict[str, Any]) -> None:
        """A new run of ``motion_job(**args)``: nothing received yet."""
        self._reset()
        self.args = args
        self.state = "running"
        self.status_text = "running…"

    def continue_from(self, job_dir: str | os.PathLike) -> str:
        """A continued run: the interrupted motion correction in ``job_dir`` goes on (its inputs and parameters
        from its ``params.json``, as ``continue_motion_job(job_dir)`` reads them). Returns the status line
        ("continued job_motion_002 after final 1/3…"); an InputError of one line naming the folder when it
        cannot go on (not a motion job, still running, finished, no checkpoint)."""
        from cryolive.jobs.motion import continuable_motion

        folder = Path(job_dir)
        continuable_motion(folder)
        self._reset()  # no job arguments: the job reads them from its folder
        self.job_dir = folder
        self.state = "running"
        self.status_text = f"continued {folder.name} {progress_text(folder)}…"
        return self.status_text

    def update(self, step: Any) -> None:
        """The newest step (main thread): progress, status line, dose weights and search when it has them."""
        self.latest = step
        self.steps += 1
        self.done, self.total = int(step.done), int(step.total)
        if step.dose_weights is not None:
            self.dose_weights = step.dose_weights
        if step.search:
            self.search = tuple(step.search)
        self.status_text = (f"{step.stage}: {step.done}/{step.total} (micrograph {step.micrograph + 1} of "
                            f"{step.n_micrographs}) — {step.message}")

    @staticmethod
    def has_micrograph(step: Any) -> bool:
        """Whether ``step`` carries a frame sum and trajectories to draw (not during the search)."""
        return step.frame_sum is not None and step.trajectories is not None

    def stopping(self) -> None:
        """Stop was asked for: the job ends after the current step."""
        self.status_text = "stopping after the current step…"

    def finish(self, state: str, payload: Any) -> str:
        """The run ended: ``state`` "finished" (``payload``: the MotionResult), "stopped" or "failed" (the
        exception). Returns the status line (also :attr:`status_text`)."""
        self.state = state
        if state == "failed":
            self.status_text = f"failed: {payload}"
        elif state == "finished":
            self.result = payload
            h = payload.hyper
            self.status_text = "finished" + (f": r {h.r:.3g}, θ {h.theta:.2f}, z {h.z_A:g} Å" if h is not None
                                             else "")
        else:
            self.status_text = "stopped"
        return self.status_text
