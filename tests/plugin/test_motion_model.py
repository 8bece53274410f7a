"""The Motion correction dock's run model without Qt: job arguments, progress, plots' data, status line."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from cryolive.motion import Hyper, MotionParams, MotionStep
from cryolive.motion.hyper import SearchPoint
from cryolive.params import param_spec
from cryolive.plugin.motion_model import (
    MotionRunModel,
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


def test_model_imports_no_qt():
    code = ("import sys, cryolive.plugin.motion_model; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'napari', 'magicgui', 'superqt', 'psygnal', 'vispy')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
