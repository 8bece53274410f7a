"""The Masks and Refinement docks in a real napari viewer (under Xvfb), on the bundled sample data."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cryolive.backend import to_numpy
from cryolive.io import read_map, write_map
from cryolive.masks import fraction_outside, threshold_mask
from cryolive.refinement.refine import RefineParams
from cryolive.sample import sample_path

pytestmark = pytest.mark.gui

SAMPLE = json.loads(sample_path("params.json").read_text())
APIX = SAMPLE["pixel_size"]  # the sample map's pixel size (Å)
BOX = SAMPLE["box"]
# tiny refinement settings: ~10 s per iteration on two cores
TINY = RefineParams(max_iter=2, global_iters=1, minibatch_iters=0, coarse_step_deg=15, levels=2)
RUN_TIMEOUT_MS = 180_000


def _masks_dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("cryolive", "Masks")
    return widget


_REFINE_DOCKS: list = []


@pytest.fixture(autouse=True)
def _stop_refinements(make_napari_viewer, qtbot):
    """A failing test must not leave a job running into the next one (torn down before the viewer closes)."""
    yield
    while _REFINE_DOCKS:
        w = _REFINE_DOCKS.pop()
        if w.running:
            with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS, raising=False):
                w.stop()


def _refine_dock(viewer, out: Path, params: RefineParams = TINY, particles: str | None = None):
    _, widget = viewer.window.add_plugin_dock_widget("cryolive", "Refinement")
    widget.particles_edit.setText(particles or str(sample_path("particles.star")))
    widget.out_edit.setText(str(out))
    widget.set_params(params)
    _REFINE_DOCKS.append(widget)
    return widget


def _wait_idle(qtbot, widget, timeout=20_000):
    qtbot.waitUntil(lambda: widget.busy, timeout=2000) if widget.busy else None
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _cpu_used_by_other_processes() -> float:
    """CPU seconds the whole machine has been busy minus those of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
    except OSError:
        return 0.0
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy - own.user - own.system


def _iterations_csv(job: Path) -> list[dict]:
    with open(job / "iterations.csv") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------------- manifest
def test_manifest_contributes_both_docks():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    widgets = {w.display_name: w.command for w in pm.get_manifest("cryolive").contributions.widgets}
    assert widgets == {"Masks": "cryolive.masks_widget", "Refinement": "cryolive.refine_widget",
                       "Classification": "cryolive.classify_widget", "Motion correction": "cryolive.motion_widget",
                       "2D classification": "cryolive.class2d_widget"}


def test_cryolive_gui_opens_sample_map_and_docks(make_napari_viewer, monkeypatch):
    import napari

    from cryolive.cli import main

    viewers = []

    def viewer_factory(*args, **kwargs):
        viewers.append(make_napari_viewer())
        return viewers[-1]

    monkeypatch.setattr(napari, "Viewer", viewer_factory)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    assert main(["gui"]) == 0
    viewer = viewers[0]
    assert "reference" in viewer.layers
    docks = viewer.window.dock_widgets
    assert {"Masks (cryolive)", "Refinement (cryolive)"} <= set(docks)
    refine = docks["Refinement (cryolive)"]
    assert refine.particles_edit.text().endswith("particles.star")
    assert refine.ref_combo.currentText() == "reference"


# --------------------------------------------------------------------------------------------------- masks dock
def test_masks_dock_matches_threshold_mask(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    ref = viewer.layers["reference"]
    w = _masks_dock(viewer)
    _wait_idle(qtbot, w)
    assert "mask" in viewer.layers  # a preview as soon as the dock sees a map

    w.threshold.setValue(0.3)
    w.dilate.setValue(3.5)
    w.soft.setValue(7.0)
    _wait_idle(qtbot, w)
    p = w.solvent_params()
    assert (p.threshold, p.dilate_A, p.soft_A, p.lowpass_A) == pytest.approx((0.3, 3.5, 7.0, None))
    expected = to_numpy(threshold_mask(np.asarray(ref.data), p.threshold, p.dilate_A, p.soft_A, APIX))
    layer = viewer.layers["mask"]
    np.testing.assert_allclose(layer.data, expected, atol=1e-6)
    np.testing.assert_allclose(layer.scale, ref.scale)
    assert layer.rendering == "iso" and layer.metadata["preview"] is False
    assert "% of the box" in w.solvent_label.text()
    viewer.dims.ndisplay = 3
    assert "surface" in layer.colormap.name
    viewer.dims.ndisplay = 2
    assert "outline" in layer.colormap.name


def test_masks_dock_never_touches_a_users_layer_called_mask(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    mine = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    viewer.add_image(mine.copy(), name="mask", scale=(APIX,) * 3)
    w = _masks_dock(viewer)
    _wait_idle(qtbot, w)
    np.testing.assert_array_equal(viewer.layers["mask"].data, mine)
    assert w.layer("solvent").name != "mask" and w.solvent_mask.max() == 1.0


def test_masks_dock_stale_results_are_dropped(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _masks_dock(viewer)
    _wait_idle(qtbot, w)
    for t in np.linspace(0.1, 0.6, 12):  # a slider dragged quickly: only the last value may show
        w.threshold.setValue(float(t))
        qtbot.wait(5)
    _wait_idle(qtbot, w)
    assert viewer.layers["mask"].metadata["threshold"] == pytest.approx(0.6)


def test_big_boxes_preview_binned_then_full_size():
    from cryolive.plugin import _mask_compute as mc

    n, apix = 128, 2.0
    c = np.arange(n) - n / 2 + 0.5
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.exp(-(x**2 + y**2 + z**2) / (2 * 15.0**2)).astype(np.float32)
    p = mc.SolventParams(0.3, 4.0, 8.0)
    pr, fr = mc.solvent_mask(vol, apix, p, preview=True), mc.solvent_mask(vol, apix, p, preview=False)
    preview, full = pr.mask, fr.mask
    assert (pr.factor, pr.grid, fr.factor, fr.grid) == (2, 1, 1, 1)  # up to box 128: 2x binned, back to full size
    assert pr.preview and not fr.preview and preview.shape == full.shape == (n, n, n)
    np.testing.assert_array_equal(full, to_numpy(threshold_mask(vol, 0.3, 4.0, 8.0, apix)))
    # the preview lies where the full mask does (voxel centres aligned by the binning), within a voxel or so
    assert np.abs(preview - full).mean() < 0.01
    assert abs(float(preview.sum()) / float(full.sum()) - 1) < 0.05


def _cube_map(viewer):
    vol = np.zeros((32, 32, 32), np.float32)
    vol[8:24, 8:24, 8:24] = 1.0
    return viewer.add_image(vol, name="cube", scale=(APIX,) * 3)


def _hard_masks(w):
    """Solvent = the cube exactly; focus masks without dilation and soft edge."""
    w.threshold.setValue(0.5)
    w.dilate.setValue(0.0)
    w.soft.setValue(0.0)
    w.focus_dilate.setValue(0.0)
    w.focus_soft.setValue(0.0)


def test_focus_mask_half_outside_is_flagged(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _cube_map(viewer)
    w = _masks_dock(viewer)
    _hard_masks(w)
    _wait_idle(qtbot, w)
    assert w.solvent_mask.sum() == 16**3
    assert not w.warning_label.isVisibleTo(w)

    # paint a block straddling the cube's +x face: x 20..27, of which 20..23 are inside
    w.new_paint_layer()
    paint = viewer.layers["focus paint"]
    labels = np.zeros(paint.data.shape, paint.data.dtype)
    labels[12:20, 12:20, 20:28] = 1
    paint.data = labels
    _wait_idle(qtbot, w)
    assert w.focus_mask is not None
    assert w.outside_fraction == pytest.approx(0.5, abs=0.05)
    assert w.outside_fraction == pytest.approx(fraction_outside(w.focus_mask, w.solvent_mask))
    assert w.warning_label.isVisibleTo(w) and "outside the solvent mask" in w.warning_label.text()
    outside = viewer.layers["focus outside solvent"]
    assert outside.data.sum() == 8 * 8 * 4

    # a focus mask that fits inside: no warning, no outside layer
    labels[:] = 0
    labels[12:20, 12:20, 12:20] = 1
    paint.data = labels
    _wait_idle(qtbot, w)
    assert w.outside_fraction == 0.0
    assert not w.warning_label.isVisibleTo(w) and "focus outside solvent" not in viewer.layers

    # only a focus mask: warned that a solvent mask is expected
    viewer.layers.remove("mask")
    assert w.warning_label.isVisibleTo(w) and "Only a focus mask" in w.warning_label.text()


def test_dock_and_classification_warn_on_the_same_masks(make_napari_viewer, qtbot):
    """One rule (cryolive.masks.focus_outside_solvent): the Masks dock warns about a focus mask reaching outside
    the solvent mask exactly when the classification job does (the dock used to warn from 0.5 %, the job from 1 %)."""
    from cryolive.classification.masks import mask_warnings

    viewer = make_napari_viewer()
    _cube_map(viewer)
    w = _masks_dock(viewer)
    _hard_masks(w)
    _wait_idle(qtbot, w)
    w.new_paint_layer()
    paint = viewer.layers["focus paint"]
    # a 14^3 block inside the 16^3 cube (2744 voxels) and a few voxels beyond its +x face (x >= 24)
    for rows, warned in ((0, False), (1, False), (3, True)):  # 0, 20 (0.7 %), 60 (2.1 %) voxels outside
        labels = np.zeros(paint.data.shape, paint.data.dtype)
        labels[9:23, 9:23, 9:23] = 1
        labels[14:14 + rows, 14:18, 24:29] = 1
        paint.data = labels
        _wait_idle(qtbot, w)
        job = mask_warnings(True, w.focus_mask, w.solvent_mask)
        assert w.outside_fraction == pytest.approx(20 * rows / (2744 + 20 * rows))
        assert w.warning_label.isVisibleTo(w) is bool(job) is warned, (rows, w.warning_text, job)
        assert ("focus outside solvent" in viewer.layers) is warned


def test_focus_sphere_placed_by_click(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _cube_map(viewer)
    w = _masks_dock(viewer)
    _hard_masks(w)
    w.radius.setValue(3.0 * APIX)
    _wait_idle(qtbot, w)
    w.place_btn.setChecked(True)
    assert w._on_mouse in viewer.mouse_drag_callbacks
    # a click (press + release, no drag) in 2D at voxel (z, y, x) = (16, 16, 23.5): the cube face splits it in two
    viewer.dims.set_point(0, 16 * APIX)
    event = SimpleNamespace(type="mouse_press", position=(16 * APIX, 16 * APIX, 23.5 * APIX), view_direction=None,
                            dims_displayed=[1, 2], modifiers=())
    gen = w._on_mouse(viewer, event)
    next(gen)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    assert w._sphere_center == pytest.approx((16.0, 16.0, 23.5))
    _wait_idle(qtbot, w)
    assert w.outside_fraction == pytest.approx(0.5, abs=0.05)
    assert "focus outside solvent" in viewer.layers and w.warning_label.isVisibleTo(w)
    w.place_btn.setChecked(False)
    assert w._on_mouse not in viewer.mouse_drag_callbacks


def test_masks_save_never_overwrites_without_confirmation(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _masks_dock(viewer)
    _wait_idle(qtbot, w)
    path = tmp_path / "mask.mrc"
    assert w.save_mask(path)
    data, apix = read_map(path)
    assert apix == pytest.approx(APIX)
    np.testing.assert_array_equal(data, viewer.layers["mask"].data)

    write_map(tmp_path / "other.mrc", np.ones((32, 32, 32), np.float32), APIX)
    w.confirm_overwrite = lambda p: False
    assert not w.save_mask(tmp_path / "other.mrc")
    assert read_map(tmp_path / "other.mrc")[0].min() == 1.0
    w.confirm_overwrite = lambda p: True
    assert w.save_mask(tmp_path / "other.mrc")
    np.testing.assert_array_equal(read_map(tmp_path / "other.mrc")[0], data)

    layer = w.load_mask(path, "focus")
    assert layer.name == "focus mask"
    np.testing.assert_allclose(layer.scale, (APIX,) * 3)
    assert w.outside_fraction == 0.0  # the same mask as focus lies entirely inside itself


# --------------------------------------------------------------------------------------------------- refinement
def test_refinement_dock_runs_to_completion(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _refine_dock(viewer, tmp_path)
    assert w.ref_combo.currentText() == "reference"
    assert w.device_label.text().startswith("Device: ")
    updates = []
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.start_btn.click()
        layer = viewer.layers["refinement map"]
        layer.events.data.connect(lambda e: updates.append(np.array(layer.data)))
        # pause after iteration 1 (takes effect when the running iteration ends), check, resume
        qtbot.waitUntil(lambda: bool(w.iterations_shown), timeout=RUN_TIMEOUT_MS)
        w.pause_btn.click()
        qtbot.waitUntil(lambda: w.worker is not None and w.worker.is_paused or w.worker is None,
                        timeout=RUN_TIMEOUT_MS)
        if w.worker is not None:
            assert w.pause_btn.text() == "Resume"
            status = json.loads((w.job_dir / "status.json").read_text())
            assert status["state"] == "running"
            w.pause_btn.click()
    assert finished.args == ["finished"]
    job = w.job_dir
    assert job is not None and job.parent == tmp_path
    assert json.loads((job / "status.json").read_text())["state"] == "finished"
    n_iter = len(_iterations_csv(job))
    assert n_iter >= 1
    assert w.iterations_shown == list(range(1, n_iter + 1))
    assert len(updates) == n_iter  # the map layer was updated in place once per iteration
    final, apix = read_map(job / "map.mrc")
    np.testing.assert_array_equal(viewer.layers["refinement map"].data, final)
    np.testing.assert_array_equal(updates[-1], final)
    np.testing.assert_allclose(viewer.layers["refinement map"].scale, (apix,) * 3)
    w.scrub.setChecked(True)  # the iteration axis: the reference, then every iteration
    history = viewer.layers["refinement history"]
    assert history.visible and not viewer.layers["refinement map"].visible
    assert history.data.shape == (n_iter + 1, BOX, BOX, BOX)
    np.testing.assert_array_equal(history.data[-1], final)
    assert viewer.dims.axis_labels[0] == "iteration"
    assert viewer.dims.nsteps[0] == n_iter + 1 and viewer.dims.current_step[0] == n_iter
    np.testing.assert_array_equal(viewer.layers["refinement mask"].data, read_map(job / "mask_refine.mrc")[0])
    assert w.plots.fsc.updates >= n_iter and "Å" in w.plots.fsc_title.text()
    assert "iteration 1" in w.log.toPlainText() and "finished" in w.log.toPlainText()
    assert w.start_btn.isEnabled() and not w.stop_btn.isEnabled()
    # the reference layer was opened from its MRC file: used from there, no copy anywhere
    assert not list(tmp_path.glob("gui_*.mrc")) and not list(job.glob("input_*.mrc"))


def test_layers_reach_the_refinement_in_memory(make_napari_viewer, qtbot, tmp_path):
    """A reference and a mask made in napari go to the job as arrays: nothing is written in the output folder;
    the job keeps its own copies (input_reference.mrc, input_mask.mrc) and params.json names them."""
    from cryolive.masks import soft_sphere
    from cryolive.plugin._common import MASK_KEY

    viewer = make_napari_viewer()
    ref, apix = read_map(sample_path("reference.mrc"))
    viewer.add_image(ref, name="my reference", scale=(apix,) * 3)
    mask = np.asarray(to_numpy(soft_sphere(BOX, 0.4 * BOX * apix, apix, 3 * apix)), np.float32)
    viewer.add_image(mask, name="my mask", scale=(apix,) * 3, metadata={MASK_KEY: "solvent"})
    w = _refine_dock(viewer, tmp_path, dataclasses.replace(TINY, max_iter=1))
    w.ref_combo.set_layer("my reference")
    w.mask_combo.set_layer("my mask")
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.start()
    assert finished.args == ["finished"]
    job = w.job_dir
    assert sorted(p.name for p in tmp_path.iterdir()) == [job.name]  # no gui_*.mrc beside the job folder
    np.testing.assert_array_equal(read_map(job / "input_reference.mrc")[0], ref)
    np.testing.assert_array_equal(read_map(job / "input_mask.mrc")[0], mask)
    prm = json.loads((job / "params.json").read_text())
    assert prm["reference"] == str((job / "input_reference.mrc").resolve())
    assert prm["mask"] == str((job / "input_mask.mrc").resolve())
    assert "layer 'my reference'" in w.log.toPlainText()


def test_a_zero_reference_layer_is_refused_naming_it(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from cryolive.plugin import _job_dock, _refine_widget

    shown = []
    monkeypatch.setattr(_job_dock, "show_error", shown.append)
    monkeypatch.setattr(_refine_widget, "show_error", shown.append)
    viewer = make_napari_viewer()
    apix = read_map(sample_path("reference.mrc"))[1]
    viewer.add_image(np.zeros((BOX,) * 3, np.float32), name="blank", scale=(apix,) * 3)
    w = _refine_dock(viewer, tmp_path)
    w.ref_combo.set_layer("blank")
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.start()
    assert finished.args == ["failed"]
    assert any("layer 'blank'" in m and "all zeros" in m for m in shown), shown
    assert not list(tmp_path.iterdir())  # refused before a job folder (or any file) was made


def test_refinement_stop_within_one_iteration(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _refine_dock(viewer, tmp_path, dataclasses.replace(TINY, max_iter=4))
    yields: list[float] = []
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.start()
        w.worker.yielded.connect(lambda it: yields.append(time.perf_counter()))
        qtbot.waitUntil(lambda: bool(w.iterations_shown), timeout=RUN_TIMEOUT_MS)
        shown_map = np.array(viewer.layers["refinement map"].data)
        t_stop = time.perf_counter()
        w.stop_btn.click()
    assert finished.args == ["stopped"]
    assert [t for t in yields if t > t_stop] == []  # nothing after Stop reached the GUI
    job = w.job_dir
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "stopped"
    assert len(_iterations_csv(job)) <= 2  # the iteration running at Stop finished; no further one started
    assert w.iterations_shown == [1]
    np.testing.assert_array_equal(viewer.layers["refinement map"].data, shown_map)
    assert w.start_btn.isEnabled()


def test_refinement_dock_parameters_round_trip(make_napari_viewer, tmp_path):
    """Every field the dock shows reaches RefineParams and back (input poses and relaxed symmetry included)."""
    viewer = make_napari_viewer()
    w = _refine_dock(viewer, tmp_path)
    p = dataclasses.replace(TINY, symmetry="C2", sgd_steps=7, use_input_poses=True, relax_symmetry="D2", seed=3)
    w.set_params(p)
    assert w.params() == p
    assert not w.field("global_iters").enabled  # local searches from iteration 1: no global iterations to set
    w.set_params(TINY)
    assert w.params() == TINY and w.relax_sym.currentText() == "none" and w.field("global_iters").enabled


def test_ab_initio_steps_are_shown_live_and_stop_between_steps(make_napari_viewer, qtbot, tmp_path):
    """With ab-initio steps the map layer follows each step before iteration 1, and Stop ends the job within a
    step: nothing of the refinement iterations starts."""
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _refine_dock(viewer, tmp_path, dataclasses.replace(TINY, sgd_steps=200))
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.start()
        qtbot.waitUntil(lambda: len(w.model.sgd_steps_shown) >= 2, timeout=RUN_TIMEOUT_MS)
        layer = viewer.layers["refinement map"]
        assert layer.metadata["title"].startswith("ab-initio step ")
        assert layer.data.shape == (BOX,) * 3 and np.isfinite(layer.data).all() and layer.data.max() > 0
        assert "ab-initio step" in w.status_label.text() and "of 200" in w.status_label.text()
        w.stop_btn.click()
    assert finished.args == ["stopped"]
    assert w.iterations_shown == [] and w.model.sgd_steps_shown == sorted(w.model.sgd_steps_shown)
    status = json.loads((w.job_dir / "status.json").read_text())
    assert status["state"] == "stopped" and status["last_iteration"] == 0
    assert w.model.sgd_steps_shown[-1] <= status["ab_initio_steps"] < 200
    assert "stopped after ab-initio step" in w.log.toPlainText()


def test_cancel_from_activity_dock_stops_the_job(make_napari_viewer, qtbot, tmp_path):
    """napari's activity dock cancels with ``worker.quit()``: the job folder must still say "stopped"."""
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _refine_dock(viewer, tmp_path, dataclasses.replace(TINY, max_iter=4))
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.start()
        qtbot.waitUntil(lambda: bool(w.iterations_shown), timeout=RUN_TIMEOUT_MS)
        w.worker.quit()
    assert finished.args == ["stopped"]
    assert json.loads((w.job_dir / "status.json").read_text())["state"] == "stopped"
    assert len(_iterations_csv(w.job_dir)) <= 2


def test_bad_particles_file_is_a_notification(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from cryolive.plugin import _job_dock, _refine_widget

    errors: list[str] = []
    for module in (_refine_widget, _job_dock):  # input checks / the end of a failed run
        monkeypatch.setattr(module, "show_error", errors.append)
    bad = tmp_path / "broken_particles.star"
    bad.write_text("this is not a STAR file\n")
    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _refine_dock(viewer, tmp_path / "jobs", particles=str(bad))
    with qtbot.waitSignal(w.runFinished, timeout=60_000) as finished:
        w.start()
    assert finished.args == ["failed"]
    assert len(errors) == 1 and "broken_particles.star" in errors[0]
    assert "broken_particles.star" in w.status_label.text()
    assert w.start_btn.isEnabled() and not w.stop_btn.isEnabled()  # the dock is usable again

    errors.clear()
    w.particles_edit.setText("")
    w.start()
    assert errors and "particles" in errors[0].lower()

    # a constant reference layer of another box (padded to the particles' box, still constant): the message names
    # the layer
    errors.clear()
    viewer.add_image(np.ones((24, 24, 24), np.float32), name="small map", scale=(APIX,) * 3)
    w.ref_combo.set_layer("small map")
    w.particles_edit.setText(str(sample_path("particles.star")))
    with qtbot.waitSignal(w.runFinished, timeout=60_000) as finished:
        w.start()
    assert finished.args == ["failed"]
    assert len(errors) == 1 and "small map" in errors[0] and "constant" in errors[0], errors
    assert not list((tmp_path / "jobs").glob("gui_*.mrc"))  # the layer went to the job in memory


def test_gui_stays_responsive_while_refining(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    viewer.open_sample("cryolive", "sample_map")
    w = _refine_dock(viewer, tmp_path)
    ticks: list[float] = []
    marks: list[tuple[str, float]] = []
    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    w.iterationShown.connect(lambda i: marks.append((f"iteration {i} shown", time.perf_counter())))
    others0, wall0 = _cpu_used_by_other_processes(), time.perf_counter()
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.start()  # creates the layers, then the job runs in its thread
        timer.start()
        ticks.append(time.perf_counter())
        w.worker.yielded.connect(lambda it: marks.append(("yielded", time.perf_counter())))
    timer.stop()
    others = (_cpu_used_by_other_processes() - others0) / (time.perf_counter() - wall0)  # cores busy elsewhere
    assert finished.args == ["finished"]
    gaps = np.diff(ticks)
    assert len(gaps) > 50
    t0 = ticks[0]
    worst = sorted(zip(gaps, ticks[1:], strict=True))[-3:]
    print(f"timer gaps: median {np.median(gaps) * 1e3:.0f} ms, max {gaps.max() * 1e3:.0f} ms over {len(gaps)} ticks;",
          "worst (s, at s after start):", [(round(g, 3), round(t - t0, 2)) for g, t in worst],
          "events:", [(m, round(t - t0, 2)) for m, t in marks],
          f"display steps: max {max(w.step_cpu_s) * 1e3:.0f} ms main-thread CPU; other processes used "
          f"{others:.2f} of {os.cpu_count()} cores")
    # what the dock itself does on the main thread per iteration is small, however busy the machine is
    assert max(w.step_cpu_s) < 0.100
    late = gaps.max() - 0.050
    if late >= 0.200 and others > 0.5:
        # other programs kept the (two) cores busy: the stall says nothing about the dock; reported, not hidden
        pytest.xfail(f"timer {late:.3f} s late while other processes used {others:.2f} cores")
    assert late < 0.200, f"the event loop was blocked for {gaps.max():.3f} s"


def test_refinement_form_is_built_from_the_spec(make_napari_viewer, tmp_path):
    """Every spec'd field of RefineParams is in the form once; fields the dock does not show are kept."""
    from cryolive.params import param_spec

    w = _refine_dock(make_napari_viewer(), tmp_path)
    shown = {**w.main_form.widgets, **w.more_form.widgets}
    assert set(shown) == set(param_spec(RefineParams)) and not set(w.main_form.widgets) & set(w.more_form.widgets)
    assert shown["max_shift_px"].native.specialValueText() == "auto" and shown["sgd_steps"].native.text() == "off"
    assert shown["workers"].native.text() == "off" and w.params().workers is None and w.params().scheduler is None
    p = dataclasses.replace(TINY, stop_tolerance=0.005, particle_diameter_A=140.0, stochastic_global=True,
                            dynamic_mask_near=0.5, greyscale=False, marginalize=True, seed=11, workers=2)
    w.set_params(p)
    assert w.params() == p
    w.set_params(dataclasses.replace(p, workers=None, scheduler="tcp://host:8786"))
    assert w.scheduler.text() == "tcp://host:8786" and w.params().scheduler == "tcp://host:8786"
    w.scheduler.setText(" ")
    assert w.params() == dataclasses.replace(p, workers=None)
    w.set_params(p)
    shown["particle_diameter_A"].value = shown["particle_diameter_A"].min  # "auto"
    shown["max_iter"].value = 5
    assert w.params() == dataclasses.replace(p, particle_diameter_A=None, max_iter=5)


def _interrupt(job: Path) -> None:
    """Make a stopped job folder read as one whose process was killed (its pid is gone)."""
    import socket

    done = json.loads((job / "status.json").read_text())["last_iteration"]  # as the running job last wrote it
    status = {"state": "running", "pid": 999999, "host": socket.gethostname(), "iteration": done}
    (job / "status.json").write_text(json.dumps(status))


def test_refinement_dock_continues_an_interrupted_job(make_napari_viewer, qtbot, tmp_path):
    from cryolive.jobs.jobdir import job_state
    from cryolive.jobs.refine import refine_job

    gen = refine_job(str(sample_path("particles.star")), str(sample_path("reference.mrc")), str(tmp_path / "jobs"),
                     TINY)
    first = next(gen)  # iteration 1 (and its checkpoint); then the process "dies"
    gen.close()
    job = Path(first.job_dir) if getattr(first, "job_dir", None) else next((tmp_path / "jobs").glob("job_refine_*"))
    _interrupt(job)
    assert job_state(job)["state"] == "interrupted"

    viewer = make_napari_viewer()
    w = _refine_dock(viewer, tmp_path / "elsewhere")
    assert not w.continue_row.isVisibleTo(w)
    w.out_edit.setText(str(tmp_path / "jobs"))  # the output folder holds the interrupted job: Continue is offered
    assert w.continue_row.isVisibleTo(w) and not w.continue_combo.isVisibleTo(w)
    assert w.continue_btn.text() == f"Continue {job.name}" and w.interrupted_jobs() == [job]
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        w.continue_btn.click()
        assert w.running and not w.continue_row.isVisibleTo(w)
        assert w.status_label.text().startswith(f"continued {job.name} after iteration 1")
    assert finished.args == ["finished"]
    assert w.job_dir == job and job_state(job)["state"] == "finished"
    assert w.iterations_shown and w.iterations_shown[0] == 2  # the continued run streamed its iterations
    np.testing.assert_array_equal(viewer.layers["refinement map"].data, read_map(job / "map.mrc")[0])
    assert w.status_label.text().startswith("finished") and "continued" in w.log.toPlainText()
    assert not w.continue_row.isVisibleTo(w)  # nothing left to continue
