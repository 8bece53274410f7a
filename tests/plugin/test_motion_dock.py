"""The Motion correction dock in a real napari viewer (under Xvfb) on a tiny simulated movie set."""

from __future__ import annotations

import json
import os

import mrcfile
import numpy as np
import pytest
from qtpy.QtCore import Qt

from cryolive.plugin._motion_widget import TRACKS_PREFIX, MotionWidget, track_data
from cryolive.simulator.movies import MovieSimParams, simulate_movies

pytestmark = pytest.mark.gui


def test_track_data_one_track_per_particle():
    traj = np.zeros((3, 5, 2))
    traj[1, :, 0] = np.arange(5)  # particle 1 moves +x by 1 px per frame
    rows = track_data(np.array([[10, 20], [50, 60], [90, 30]], float), traj, 10)
    assert rows.shape == (15, 4) and sorted(set(rows[:, 0])) == [0, 1, 2]
    p1 = rows[rows[:, 0] == 1]
    assert np.allclose(p1[:, 3], 50 + 10 * (np.arange(5) - 2)) and np.allclose(p1[:, 2], 60)


def test_motion_dock_shows_one_track_per_particle(make_napari_viewer, qtbot, tmp_path):
    sim = simulate_movies(tmp_path / "sim", MovieSimParams(n_micrographs=2, n_frames=8, particles_per_micrograph=6,
                                                           mic_size=200, seed=4, snr=2.0))
    hyper = tmp_path / "hyper.json"
    hyper.write_text(json.dumps({"r": 5.0, "theta": 0.8, "z_A": 300.0}))
    viewer = make_napari_viewer(show=True)
    widget = MotionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Motion correction")
    for key, value in (("particles", sim / "particles.star"), ("movies", sim / "movies"),
                       ("half_a", sim / "half_A.mrc"), ("half_b", sim / "half_B.mrc"), ("mask", sim / "mask.mrc"),
                       ("out", tmp_path / "jobs"), ("hyper", hyper)):
        widget.edits[key].setText(str(value))
    with qtbot.waitSignal(widget.runFinished, timeout=120_000) as finished:
        assert widget.start() is not None
    assert finished.args == ["finished"]
    tracks = [ly for ly in viewer.layers if ly.name.startswith(TRACKS_PREFIX)]
    assert len(tracks) == 1 and "×10" in tracks[0].name
    ids = np.unique(tracks[0].data[:, 0])
    assert len(ids) == 6  # one track per particle of the micrograph on screen
    assert tracks[0].data.shape[0] == 6 * 8
    assert "motion micrograph" in viewer.layers
    assert widget.dose_plot.cbar is not None  # dose weights shown with a colour bar
    assert widget.progress.value() == widget.progress.maximum() == 2
    assert (tmp_path / "jobs" / "job_motion_001" / "particles.star").exists()
    shot = os.environ.get("CRYOLIVE_MOTION_SCREENSHOT")
    if shot:
        viewer.screenshot(shot, canvas_only=False)


def test_motion_dock_stop_leaves_a_stopped_job(make_napari_viewer, qtbot, tmp_path):
    sim = simulate_movies(tmp_path / "sim", MovieSimParams(n_micrographs=2, n_frames=6, particles_per_micrograph=4,
                                                           mic_size=160, seed=5, snr=2.0))
    viewer = make_napari_viewer(show=False)
    widget = MotionWidget(viewer)
    for key, value in (("particles", sim / "particles.star"), ("movies", sim / "movies"),
                       ("half_a", sim / "half_A.mrc"), ("half_b", sim / "half_B.mrc"), ("out", tmp_path / "jobs")):
        widget.edits[key].setText(str(value))
    widget.stepShown.connect(lambda _stage: widget.stop())  # Stop as soon as the first step is on screen
    with qtbot.waitSignal(widget.runFinished, timeout=120_000) as finished:
        assert widget.start() is not None
    assert finished.args == ["stopped"]
    status = json.loads((tmp_path / "jobs" / "job_motion_001" / "status.json").read_text())
    assert status["state"] == "stopped"
    assert widget.start_btn.isEnabled()


def test_motion_form_keeps_the_fields_it_does_not_show(make_napari_viewer):
    from cryolive.motion import MotionParams
    from cryolive.params import param_spec

    widget = MotionWidget(make_napari_viewer(show=False))
    assert widget.params() == MotionParams()
    p = MotionParams(final_stage="dose", thoroughness="balanced", target_particles=50, float16=True, seed=3,
                     crop_box=64)
    widget.set_params(p)
    assert widget.params() == p and widget.job_args()["params"] == p
    widget.form.widgets["target_particles"].value = 70
    assert widget.params().target_particles == 70 and widget.params().seed == 3
    shown = {**widget.form.widgets, **widget.more_form.widgets}
    assert set(shown) == set(param_spec(MotionParams))  # every spec'd parameter, once


def _interrupted_motion_job(sim, out, params, upto):
    """A motion job in ``out`` whose process "died" after its step ``upto`` (stage, done): the generator is closed
    there and ``status.json`` put back as the running job had last written it, with a process id that is gone."""
    import socket

    from cryolive.jobs.motion import motion_job

    gen = motion_job(str(sim / "particles.star"), str(sim / "movies"), str(sim / "half_A.mrc"),
                     str(sim / "half_B.mrc"), out=str(out), params=params)
    for step in gen:
        if (step.stage, step.done) == upto:
            break
    job = out / "job_motion_001"
    status = json.loads((job / "status.json").read_text())  # "running", by this process
    gen.close()  # the folder now says "stopped"; a kill would have left the status above
    status.update(pid=999999, host=socket.gethostname())
    (job / "status.json").write_text(json.dumps(status))
    return job


def test_motion_dock_continues_an_interrupted_job(make_napari_viewer, qtbot, tmp_path):
    from cryolive.jobs import drain
    from cryolive.jobs.jobdir import job_state
    from cryolive.jobs.motion import motion_job
    from cryolive.motion import MotionParams

    sim = simulate_movies(tmp_path / "sim", MovieSimParams(n_micrographs=3, n_frames=6, particles_per_micrograph=4,
                                                           mic_size=160, seed=2))
    p = MotionParams(override_r=1.0, override_theta=1.0, override_z_A=100.0, dose_target_particles=8)
    drain(motion_job(str(sim / "particles.star"), str(sim / "movies"), str(sim / "half_A.mrc"),
                     str(sim / "half_B.mrc"), out=str(tmp_path / "unbroken"), params=p))
    job = _interrupted_motion_job(sim, tmp_path / "jobs", p, ("final", 1))
    assert job_state(job)["state"] == "interrupted" and (job / "checkpoint.npz").exists()

    viewer = make_napari_viewer(show=True)
    widget = MotionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Motion correction")
    widget.edits["out"].setText(str(tmp_path / "elsewhere"))
    assert not widget.continue_row.isVisibleTo(widget)
    widget.edits["out"].setText(str(tmp_path / "jobs"))  # the output folder holds the interrupted job
    row = widget.continue_row
    assert row.isVisibleTo(widget) and not row.combo.isVisibleTo(widget)  # one job: no list
    assert widget.interrupted_jobs() == [job] and row.button.text() == "Continue job_motion_001"
    assert row.combo.currentText() == "job_motion_001 was interrupted after final 1/3"
    shot = os.environ.get("CRYOLIVE_MOTION_CONTINUE_SCREENSHOT")
    if shot:
        qtbot.wait(200)
        widget.grab().save(shot)
    with qtbot.waitSignal(widget.runFinished, timeout=120_000) as finished:
        qtbot.mouseClick(row.button, Qt.MouseButton.LeftButton)
        assert widget.busy and not row.isVisibleTo(widget) and not widget.start_btn.isEnabled()
        assert widget.status.text() == "continued job_motion_001 after final 1/3…"
    assert finished.args == ["finished"]
    assert job_state(job)["state"] == "finished" and "continuing after final 1" in (job / "log.txt").read_text()
    assert not (job / "checkpoint.npz").exists() and not list((tmp_path / "jobs").glob("job_motion_002"))
    # the same layers and progress as a run started here: the last micrograph and its 4 tracks
    tracks = [ly for ly in viewer.layers if ly.name.startswith(TRACKS_PREFIX)]
    assert len(tracks) == 1 and len(np.unique(tracks[0].data[:, 0])) == 4 and "motion micrograph" in viewer.layers
    assert widget.progress.value() == widget.progress.maximum() == 3
    assert widget.status.text().startswith("finished") and widget.start_btn.isEnabled()
    # the outputs are those of the unbroken run
    unbroken = tmp_path / "unbroken" / "job_motion_001"
    np.testing.assert_allclose(np.load(job / "trajectories.npz")["trajectories"],
                               np.load(unbroken / "trajectories.npz")["trajectories"], atol=1e-9)
    with mrcfile.open(job / "particles.mrcs") as a, mrcfile.open(unbroken / "particles.mrcs") as b:
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-5)
    assert (job / "particles.star").exists()
    assert not row.isVisibleTo(widget) and widget.interrupted_jobs() == []  # nothing left to continue
