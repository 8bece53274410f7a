"""The Motion correction dock in a real napari viewer (under Xvfb) on a tiny simulated movie set."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

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
