"""The Motion correction dock's run model without Qt: job arguments, progress, plots' data, status line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from cryolive.motion import Hyper, MotionParams, MotionStep
from cryolive.motion.hyper import SearchPoint
from cryolive.params import param_spec
from cryolive.plugin.motion_model import (
    MotionRunModel,
    interrupted_motions,
    job_args,
    missing_inputs,
    search_curves,
    track_data,
    tracks_layer_name,
)


def _step(stage: str, done: int, search: tuple = (), with_micrograph: bool = True, dose: bool = False) -> MotionStep:
    n, f = 3, 5
    return MotionStep(stage=stage, micrograph=done - 1, micrograph_name=f"mic{done}", n_micrographs=2, done=done,
                      total=2, positions=np.zeros((n, 2)),
                      trajectories=np.zeros((n, f, 2)) if with_micrograph else None,
                      frame_sum=np.zeros((20, 20), np.float32) if with_micrograph else None, bin_factor=2,
                      dose_weights=np.ones((f, 4)) if dose else None, search=search, timings={}, message="ok")


def _point(ray: int, step: int, r: float, score: float) -> SearchPoint:
    return SearchPoint(ray=ray, step=step, hyper=Hyper(r, 0.5, 300.0), score=score, activity=1.0)


def test_job_arguments_from_the_fields():
    params = MotionParams(final_stage="dose")
    args = job_args({"particles": " p.star ", "movies": "movies", "half_a": "a.mrc", "half_b": "", "mask": None},
                    params)
    assert args == {"particles_path": "p.star", "movies": "movies", "half_a_path": "a.mrc", "half_b_path": None,
                    "mask_path": None, "out": "jobs", "params": params, "hyper_path": None, "dose_path": None}
    assert missing_inputs(args) == ["half_b_path"]


def test_motion_params_spec_covers_the_dock_fields():
    spec = param_spec(MotionParams)
    assert {"final_stage", "thoroughness", "target_particles", "float16"} <= set(spec)
    assert spec["final_stage"].choices == ("hyper", "dose", "final")
    assert set(spec["thoroughness"].choices) == {"fast", "balanced", "extensive"}


def test_model_follows_a_run():
    model = MotionRunModel()
    assert model.state == "idle" and model.status_text == "idle"
    model.start({"particles_path": "p.star"})
    assert model.state == "running" and model.status_text == "running…" and model.steps == 0
    search = (_point(0, 0, 0.1, 5.0), _point(0, 1, 0.4, 3.0), _point(1, 0, 0.1, 4.0))
    model.update(_step("hyper", 1, search=search, with_micrograph=False))
    assert model.status_text == "hyper: 1/2 (micrograph 1 of 2) — ok" and model.search == search
    assert not model.has_micrograph(model.latest)
    model.update(_step("final", 2, dose=True))
    assert (model.done, model.total, model.steps) == (2, 2, 2) and model.dose_weights.shape == (5, 4)
    assert model.has_micrograph(model.latest) and model.search == search  # the newest search is kept
    model.stopping()
    assert model.status_text == "stopping after the current step…"
    result = SimpleNamespace(hyper=Hyper(5.0, 0.8, 300.0))
    assert model.finish("finished", result) == "finished: r 5, θ 0.80, z 300 Å" and model.result is result
    assert model.finish("finished", SimpleNamespace(hyper=None)) == "finished"
    assert model.finish("failed", ValueError("bad movie")) == "failed: bad movie" and model.state == "failed"
    assert model.finish("stopped", None) == "stopped"


def test_search_curves_and_tracks():
    rays, best = search_curves((_point(0, 0, 0.1, 5.0), _point(1, 0, 0.2, 4.0), _point(0, 1, 0.4, 3.0)))
    assert list(rays) == [0, 1] and rays[0][0].tolist() == [0.1, 0.4] and rays[0][1].tolist() == [5.0, 3.0]
    assert best == (0.4, 3.0)
    assert search_curves(()) == ({}, None)
    traj = np.zeros((2, 3, 2))
    traj[0, :, 1] = [0, 1, 2]  # particle 0 moves +y
    rows = track_data(np.array([[10.0, 20.0], [30.0, 40.0]]), traj, 5)
    assert rows.shape == (6, 4) and np.allclose(rows[:3, 2], 20 + 5 * np.array([-1, 0, 1]))
    assert tracks_layer_name(10) == "motion trajectories (×10)"


def _motion_folder(out, name: str, state: str, stage: str = "final", done: int = 1, total: int = 3,
                   checkpoint: bool = True, params: dict | None = None, mtime: float | None = None):
    """A job folder as a motion job leaves it: ``params.json``, ``status.json`` as its last step wrote it (a job
    whose process was killed still says "running", with a pid that is gone), and ``checkpoint.npz``."""
    job = out / name
    job.mkdir(parents=True)
    prm = {"particles": "p.star", "movies": "movies", "half_a": "a.mrc", "half_b": "b.mrc", "final_stage": "final"}
    (job / "params.json").write_text(json.dumps(prm if params is None else params))
    pid = os.getpid() if state != "running" else 999999  # a running job's process that is gone: interrupted
    (job / "status.json").write_text(json.dumps({"state": state, "stage": stage, "done": done, "total": total,
                                                 "pid": pid, "host": socket.gethostname()}))
    if checkpoint:
        np.savez(job / "checkpoint.npz", stage=np.asarray(stage))
    if mtime is not None:
        os.utime(job / "status.json", (mtime, mtime))
    return job


def test_interrupted_motion_jobs_are_listed_newest_first_and_continue_from_their_folder(tmp_path):
    from cryolive.io import InputError

    out = tmp_path / "jobs"
    assert interrupted_motions(out) == []  # no folder yet
    old = _motion_folder(out, "job_motion_001", "running", "dose", 1, 2, mtime=1000.0)
    new = _motion_folder(out, "job_motion_003", "running", "final", 2, 3, mtime=2000.0)
    finished = _motion_folder(out, "job_motion_002", "finished")
    _motion_folder(out, "job_motion_004", "stopped")
    _motion_folder(out, "job_motion_005", "running", checkpoint=False)  # nothing to continue from
    _motion_folder(out, "job_refine_001", "running")  # another dock's kind
    assert interrupted_motions(out) == [(new, "job_motion_003 was interrupted after final 2/3"),
                                        (old, "job_motion_001 was interrupted after dose 1/2")]
    model = MotionRunModel()
    model.start({"particles_path": "p.star"})
    model.update(_step("final", 2, dose=True))
    model.finish("stopped", None)
    assert model.continue_from(new) == "continued job_motion_003 after final 2/3…"
    assert model.state == "running" and model.status_text == "continued job_motion_003 after final 2/3…"
    assert model.job_dir == new and model.steps == 0 and model.latest is None and model.dose_weights is None
    model.update(_step("final", 3))
    assert model.status_text == "final: 3/2 (micrograph 3 of 2) — ok"
    # a finished job, a folder that is not a motion job, a missing checkpoint: one line naming the folder
    for folder, words in ((finished, "finished"), (tmp_path / "nothing", "not a motion correction job folder"),
                          (out / "job_motion_005", "no checkpoint.npz")):
        with pytest.raises(InputError, match=words) as err:
            MotionRunModel().continue_from(folder)
        assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_model_imports_no_qt():
    code = ("import sys, cryolive.plugin.motion_model; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'napari', 'magicgui', 'superqt', 'psygnal', 'vispy')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
