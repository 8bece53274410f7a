"""The Refinement dock's run model without Qt: map history, iteration summaries, ab-initio steps, the dock's text."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryolive.plugin.refine_model import (
    MapHistory,
    RefineRunModel,
    is_sgd_step,
    mask_choice_warning,
    relax_symmetry_value,
)
from cryolive.refinement.refine import RefineIteration, RefineParams
from cryolive.refinement.sgd import SGDStep
from cryolive.resolution.fsc import FSCResult

N = 8  # box of the synthetic maps
APIX = 2.5


def _map(value: float, n: int = N) -> np.ndarray:
    return np.full((n, n, n), value, np.float32)


def _iteration(i: int, resolution: float, search: str = "global") -> RefineIteration:
    shells = N // 2 + 1
    freq = np.arange(shells) / (N * APIX)
    curve = np.linspace(1.0, 0.0, shells)
    fsc = FSCResult(freq=freq, fsc=curve, fsc_unmasked=curve, res_0143=resolution)
    return RefineIteration(iteration=i, search=search, n_particles=100, align_resolution_A=12.0,
                           resolution_A=resolution, resolution_unmasked_A=resolution + 2, fsc=fsc, map=_map(i),
                           half_a=_map(i), half_b=_map(i), mask=_map(1.0), angular_distribution=np.ones((18, 36)),
                           pose_summary={"median_pose_change_deg": 3.25}, sigma2=np.ones(shells),
                           timings={"align_s": 1.5, "total_s": 2.0})


def _sgd(step: int, n_steps: int = 20) -> SGDStep:
    return SGDStep(step=step, n_steps=n_steps, resolution_A=30.0, beta=0.5, map=_map(step, 4), box=4,
                   pixel_size=2 * APIX, seconds=0.25)


def test_map_history_grows_and_bins_past_its_memory_bound():
    h = MapHistory(_map(0), capacity=2)
    assert not h.binned and h.factor == 1.0
    for i in range(1, 5):  # past the capacity: the buffer doubles
        h.append(_map(i))
    assert h.count == 5 and h.data.shape == (5, N, N, N)
    np.testing.assert_array_equal(h.data[:, 0, 0, 0], np.arange(5))
    small = MapHistory(_map(0), capacity=10, max_bytes=5 * _map(0).nbytes)
    small.append(_map(2))
    assert small.binned and small.factor == 2.0 and small.data.shape == (2, N // 2, N // 2, N // 2)
    np.testing.assert_allclose(small.data[1], 2.0)


def test_model_follows_a_run_with_ab_initio_steps():
    model = RefineRunModel()
    params = RefineParams(max_iter=3, sgd_steps=20, symmetry="C2")
    model.start("p.star", "ref.mrc", _map(0), APIX, params, mask="mask.mrc", translate=(1.0, 2.0, 3.0))
    assert model.box == N and model.scale3 == (APIX,) * 3 and model.translate == (1.0, 2.0, 3.0)
    first, params_line = model.start_log("CPU (NumPy)")
    assert first == "refinement of p.star against ref.mrc with mask mask.mrc on CPU (NumPy)"
    logged = json.loads(params_line.removeprefix("parameters: "))
    assert logged == {"symmetry": "C2", "max_iter": 3, "sgd_steps": 20}  # what differs from the defaults, and these

    for s in (1, 2, 10):
        step = _sgd(s)
        assert is_sgd_step(step)
        model.receive(step)  # not kept in the history
    assert model.history.count == 1 and model.iterations == []
    assert model.sgd_step_shown(_sgd(1)) and not model.sgd_step_shown(_sgd(2))
    assert model.log_line(_sgd(2)) is None and "ab-initio step 10/20 at 30.0 Å" in model.log_line(_sgd(10))
    assert model.status(_sgd(2), 7.0).startswith("ab-initio step 2 of 20 at 30.0 Å (7 s so far)")
    assert model.map_title(_sgd(2)) == "ab-initio step 2/20 (30.0 Å)"
    assert model.stopped_where(None) == "after ab-initio step 2, before the first iteration"

    for i, res in ((1, 12.0), (2, 9.5)):
        model.receive(_iteration(i, res, "global" if i == 1 else "local"))
    assert model.history.count == 3
    np.testing.assert_array_equal(model.history.data[:, 0, 0, 0], [0, 1, 2])
    assert [(s.iteration, s.search, s.resolution_A) for s in model.iterations] == [(1, "global", 12.0),
                                                                                 (2, "local", 9.5)]
    it = _iteration(2, 9.5, "local")
    assert model.map_title(it) == "iteration 2 (local): 9.50 Å"
    assert model.status(it, 61.0) == "iteration 2 of ≤ 3: 9.50 Å (61 s so far)"
    line = model.log_line(it)
    assert "9.50 Å masked+corrected, 11.50 Å unmasked; median pose change 3.25°; 2.0 s (align 1.5 s)" in line
    assert "<b>9.50 Å</b>" in model.fsc_title(it) and "(100 particles)" in model.angular_title(it)
    assert model.stopped_where(2) == "after iteration 2"


def test_finish_adds_a_final_iteration_only_when_it_was_not_received(tmp_path):
    model = RefineRunModel()
    model.start("p.star", "ref.mrc", _map(0), APIX, RefineParams(max_iter=2))
    model.receive(_iteration(1, 12.0))
    model.job_dir = tmp_path / "job_refine_001"
    received = dataclasses.make_dataclass("Result", ["final"])
    assert not model.finish(received(_iteration(1, 12.0)))  # the last one received is the final: nothing to add
    assert model.history.count == 2
    assert model.finish(received(_iteration(2, 8.0)))  # the final came only as the result: it joins the history
    assert model.history.count == 3 and model.iterations[-1].iteration == 2
    log, status, notice = model.finished_text(90.0)
    assert log.startswith("finished in 90.0 s: 8.00 Å (GSFSC 0.143); outputs in ") and "job_refine_001" in log
    assert status == "finished: 8.00 Å after 2 iterations (90 s)"
    assert notice == "Refinement finished: 8.00 Å (job_refine_001)"
    # the job's warnings (status.json) reach the log, the status line and the notification
    model.job_dir.mkdir()
    (model.job_dir / "status.json").write_text(json.dumps({"state": "finished", "warnings": [
        "solvent FSC 0.134 (mean over 23 shells finer than 15 Å; chance level 0.050): the half maps correlate"]}))
    log, status, notice = model.finished_text(90.0)
    assert log.endswith("\nWARNING: solvent FSC 0.134 (mean over 23 shells finer than 15 Å; chance level 0.050): "
                        "the half maps correlate")
    assert status.endswith("; 1 warning in the log") and notice.startswith("Refinement finished: 8.00 Å")
    assert "WARNING: solvent FSC 0.134" in notice


def test_history_geometry_of_a_binned_history():
    model = RefineRunModel()
    model.start("p.star", "ref.mrc", _map(0), APIX, RefineParams(max_iter=2), translate=(10.0, 0.0, 0.0),
                max_bytes=_map(0).nbytes)
    assert model.history.binned
    scale, translate = model.history_geometry()
    assert scale == (1.0, 2 * APIX, 2 * APIX, 2 * APIX)
    assert translate == (0.0, 10.0 + 0.5 * APIX, 0.5 * APIX, 0.5 * APIX)  # the binned voxel's centre


def test_mask_choice_and_relaxed_symmetry():
    assert "focus mask" in mask_choice_warning("f", "focus", _map(1.0))
    assert "focus mask" in mask_choice_warning("o", "outside", _map(1.0))
    assert "not a mask" in mask_choice_warning("map", None, _map(3.0))
    assert mask_choice_warning("m", None, _map(1.0)) == "" and mask_choice_warning("s", "solvent", _map(9.0)) == ""
    assert [relax_symmetry_value(t) for t in ("", "none", "c1", " d2 ")] == [None, None, None, "D2"]


def test_model_follows_a_real_refinement(tmp_path):
    """The real job's steps (two ab-initio steps, one iteration) streamed into the model on the sample data."""
    from cryolive.io import read_map
    from cryolive.jobs import drain
    from cryolive.jobs.refine import refine_job
    from cryolive.sample import sample_path

    ref, apix = read_map(sample_path("reference.mrc"))
    params = RefineParams(max_iter=1, global_iters=1, minibatch_iters=0, coarse_step_deg=15, levels=2, sgd_steps=2)
    model = RefineRunModel()
    model.start(sample_path("particles.star"), sample_path("reference.mrc"), ref, apix, params)
    steps, result = drain(refine_job(str(sample_path("particles.star")), str(sample_path("reference.mrc")),
                                     str(tmp_path), params), model.receive)
    assert [is_sgd_step(s) for s in steps] == [True, True, False]
    assert not model.finish(result)
    assert model.history.data.shape == (2, *ref.shape)
    np.testing.assert_array_equal(model.history.data[-1], read_map(next(Path(tmp_path).glob("job_refine_*"))
                                                                   / "map.mrc")[0])
    assert model.iterations[-1].resolution_A == pytest.approx(result.final.resolution_A)


def test_model_imports_no_qt():
    code = ("import sys, cryolive.plugin.refine_model; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'napari', 'magicgui', 'superqt', 'psygnal', 'vispy')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _fake_job(out: Path, name: str, state: str, iteration: int, params: dict, checkpoint: bool = True,
              mtime: float | None = None) -> Path:
    """A job folder as a killed (``state`` "running", pid 999999) or ended job leaves it."""
    import os
    import socket

    job = out / name
    job.mkdir(parents=True)
    (job / "params.json").write_text(json.dumps(params))
    (job / "status.json").write_text(json.dumps({"state": state, "pid": 999999, "host": socket.gethostname(),
                                                 "iteration": iteration}))
    if checkpoint:
        (job / "checkpoint.npz").write_bytes(b"")
    if mtime is not None:
        os.utime(job / "status.json", (mtime, mtime))
    return job


def test_interrupted_refinements_are_listed_newest_first_and_continue_from_their_folder(tmp_path):
    from cryolive.io import write_map
    from cryolive.plugin.refine_model import interrupted_refinements

    write_map(tmp_path / "ref.mrc", _map(1.0), APIX)
    prm = {"particles": "p.star", "reference": str(tmp_path / "ref.mrc"), "mask": None,
           **dataclasses.asdict(RefineParams(max_iter=6, symmetry="C2")), "backend": "numpy"}
    out = tmp_path / "jobs"
    assert interrupted_refinements(out) == []  # no folder yet
    old = _fake_job(out, "job_refine_001", "running", 2, prm, mtime=1000.0)
    new = _fake_job(out, "job_refine_003", "running", 4, prm, mtime=2000.0)
    _fake_job(out, "job_refine_002", "finished", 6, prm)
    _fake_job(out, "job_refine_004", "stopped", 1, prm)
    _fake_job(out, "job_refine_005", "running", 0, prm, checkpoint=False)  # nothing to continue from
    _fake_job(out, "job_classify_001", "running", 3, prm)  # another dock's kind
    assert interrupted_refinements(out) == [(new, "job_refine_003 was interrupted after iteration 4"),
                                            (old, "job_refine_001 was interrupted after iteration 2")]
    model = RefineRunModel()
    assert model.continue_from(new) == "continued job_refine_003 after iteration 4…"
    assert model.job_dir == new and model.done_before == 4 and model.particles_path == "p.star"
    assert model.params.max_iter == 6 and model.params.symmetry == "C2"
    assert model.history.count == 1 and model.pixel_size == pytest.approx(APIX)
