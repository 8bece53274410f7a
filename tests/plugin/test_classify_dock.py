"""The Classification dock in a real napari viewer (under Xvfb) on a small simulated three-state data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryolive.classification.classify import ClassifyParams
from cryolive.io import read_star
from cryolive.plugin._common import MASK_KEY

pytestmark = pytest.mark.gui

RUN_TIMEOUT_MS = 120_000
APIX = 4.0
BOX = 24
TINY = ClassifyParams(n_classes=3, mode="fixed", max_iter=3, online_em_iters=0, anneal_iters=1)

_DOCKS: list = []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from cryolive.simulator.dataset import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("classify") / "data"
    simulate_dataset(out, SimulationParams(n=600, box=BOX, pixel_size=APIX, snr=0.1, n_states=3, seed=3))
    return out


@pytest.fixture(autouse=True)
def _stop_jobs(make_napari_viewer, qtbot):
    """A failing test must not leave a job running into the next one (torn down before the viewer closes)."""
    yield
    while _DOCKS:
        w = _DOCKS.pop()
        if w.running:
            with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS, raising=False):
                w.stop()


def _dock(viewer, dataset: Path, out: Path, params: ClassifyParams = TINY):
    _, widget = viewer.window.add_plugin_dock_widget("cryolive", "Classification")
    widget.particles_edit.setText(str(dataset / "particles.star"))
    widget.out_edit.setText(str(out))
    widget.set_params(params)
    _DOCKS.append(widget)
    return widget


def _run(qtbot, w) -> str:
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(w.start_btn, _left())
    return finished.args[0]


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_manifest_has_the_classification_dock():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    widgets = {w.display_name: w.command for w in pm.get_manifest("cryolive").contributions.widgets}
    assert widgets["Classification"] == "cryolive.classify_widget"


def test_classification_dock_live_export_and_compare(make_napari_viewer, qtbot, tmp_path, dataset, monkeypatch):
    viewer = make_napari_viewer()
    w = _dock(viewer, dataset, tmp_path / "jobs")
    assert w.params() == TINY
    data_events: dict[int, int] = {}

    def count_data_events(event):
        layer = event.value
        k = layer.metadata.get("cryolive_class") if hasattr(layer, "metadata") else None
        if k:
            data_events[k] = data_events.get(k, 0) + 1  # the creation counts as the first update
            layer.events.data.connect(lambda e, k=k: data_events.__setitem__(k, data_events[k] + 1))

    viewer.layers.events.inserted.connect(count_data_events)

    assert _run(qtbot, w) == "finished"
    job = w.job_dir
    assert job is not None and job.name.startswith("job_classify_") and (job / "particles.star").is_file()
    n_iter = len(w.model.size_history)
    assert 1 <= n_iter <= TINY.max_iter
    assert w.iterations_shown == list(range(1, n_iter + 1))

    # one layer per class, updated (created, then data replaced) once per iteration
    names = [layer.name for layer in viewer.layers]
    assert [n for n in names if n.startswith("class ")] == ["class 1", "class 2", "class 3"]
    for k in (1, 2, 3):
        layer = w.class_layer(k)
        assert layer.data.shape == (BOX,) * 3 and layer.scale[-1] == pytest.approx(APIX)
        assert w.layer_updates[k] == n_iter and data_events[k] == n_iter

    # the class-size chart has one stacked bar per iteration, the FSC plot one curve per class
    assert len(w.plots.sizes.history) == n_iter
    assert len(w.plots.sizes.ax.containers) == 3 and all(len(c) == n_iter for c in w.plots.sizes.ax.containers)
    assert len(w.plots.fsc.lines) == 3 and len(w.plots.fsc.lines[0].get_xdata()) > 0
    assert f"iteration {n_iter}" in w.log.toPlainText() and "ESS" in w.log.toPlainText()

    # export: the written STAR holds exactly that class's particles
    classes = read_star(job / "particles.star").class_number
    assert w.class_list.count() == 3
    np.testing.assert_array_equal(w.model.class_counts, np.bincount(classes, minlength=4)[1:])
    w.set_selected_classes([2])
    n = w.export_selected()
    dest = job / "particles_selected_classes_2.star"
    assert n == int(np.sum(classes == 2)) > 0 and w.model.last_export == dest
    assert len(read_star(dest)) == n and set(read_star(dest).class_number) == {2}
    # the button goes through a file dialog
    w.set_selected_classes([1, 3])
    dest13 = tmp_path / "picked.star"
    monkeypatch.setattr("qtpy.QtWidgets.QFileDialog.getSaveFileName", lambda *a, **k: (str(dest13), ""))
    qtbot.mouseClick(w.export_btn, _left())
    assert len(read_star(dest13)) == int(np.sum((classes == 1) | (classes == 3)))

    # compare: grid mode, A and B side by side with their difference
    w.cmp_a.setCurrentIndex(0)
    w.cmp_b.setCurrentIndex(2)
    qtbot.mouseClick(w.compare_btn, _left())
    assert viewer.grid.enabled
    diff = viewer.layers["class 1 − class 3"]
    np.testing.assert_allclose(diff.data, w.class_layer(1).data - w.class_layer(3).data, atol=1e-6)
    assert {layer.name for layer in viewer.layers if layer.visible} == {"class 1", "class 3", "class 1 − class 3"}
    w.compare(2, 3)  # the same layer, renamed and updated
    assert diff.name == "class 2 − class 3" and len([n for n in viewer.layers if "−" in n.name]) == 1
    w.end_compare()
    assert not viewer.grid.enabled and all(layer.visible for layer in viewer.layers if layer.name.startswith("class"))


def test_focus_only_warns_in_the_dock(make_napari_viewer, qtbot, tmp_path, dataset, monkeypatch):
    from cryolive.masks import soft_sphere

    shown = []
    monkeypatch.setattr("cryolive.plugin._classify_widget.show_warning", shown.append)
    viewer = make_napari_viewer()
    focus = np.asarray(soft_sphere(BOX, 20.0, APIX, 6.0), dtype=np.float32)
    viewer.add_image(focus, name="focus mask", scale=(APIX,) * 3, metadata={MASK_KEY: "focus"})
    w = _dock(viewer, dataset, tmp_path / "jobs", ClassifyParams(n_classes=2, max_iter=1, online_em_iters=0))
    assert w.focus_combo.currentText() == "focus mask"  # picked up as the focus mask, not as the solvent mask
    assert w.solvent_combo.current_layer() is None
    assert _run(qtbot, w) == "finished"
    assert "only a focus mask" in w.warnings_box.toPlainText()
    assert sum("only a focus mask" in m for m in shown) == 1
    assert (w.job_dir / "focus_mask.mrc").is_file()
    assert not list((tmp_path / "jobs").glob("gui_*.mrc")) and not list((tmp_path / "jobs").glob("classify_inputs_*"))
    assert (w.job_dir / "input_focus_mask.mrc").is_file()


def test_heterogeneous_refinement_from_starting_map_layers(make_napari_viewer, qtbot, tmp_path, dataset):
    from cryolive.io import read_map

    viewer = make_napari_viewer()
    for k in (0, 1):
        vol, apix = read_map(dataset / "truth" / f"state_{k}.mrc")
        viewer.add_image(vol, name=f"start {k}", scale=(apix,) * 3)
    fast = ClassifyParams(mode="hetero", n_classes=2, max_iter=1, online_em_iters=0, coarse_step_deg=20, levels=2)
    w = _dock(viewer, dataset, tmp_path / "jobs", fast)
    assert not w.starts_list.isHidden() and not w.consensus_combo.isEnabled()
    w.starts_list.select(["start 0", "start 1"])
    assert w.field("n_classes").value == 2 and w.params().coarse_step_deg == 20
    assert _run(qtbot, w) == "finished"
    assert w.job_dir.name.startswith("job_hetero_")
    assert w.class_layer(1) is not None and w.class_layer(2) is not None and w.class_layer(3) is None
    assert w.class_list.count() == 2 and w.model.class_counts.sum() == 600
    # the layers reached the job in memory: nothing beside the job folder, the job's own copies inside it
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == [w.job_dir.name]
    assert sorted(p.name for p in w.job_dir.glob("input_*.mrc")) == ["input_starts_001.mrc", "input_starts_002.mrc"]


def test_pause_and_stop(make_napari_viewer, qtbot, tmp_path, dataset):
    import json

    viewer = make_napari_viewer()
    w = _dock(viewer, dataset, tmp_path / "jobs", ClassifyParams(n_classes=2, max_iter=20, online_em_iters=0))
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(w.start_btn, _left())
        qtbot.waitUntil(lambda: bool(w.iterations_shown), timeout=RUN_TIMEOUT_MS)
        qtbot.mouseClick(w.pause_btn, _left())
        qtbot.waitUntil(lambda: w.worker is None or w.worker.is_paused, timeout=RUN_TIMEOUT_MS)
        qtbot.wait(300)  # the iteration that was running when Pause was clicked is still shown
        shown = len(w.iterations_shown)
        qtbot.wait(1000)
        assert len(w.iterations_shown) == shown  # nothing new while paused
        qtbot.mouseClick(w.stop_btn, _left())  # stops a paused job too
    assert finished.args[0] == "stopped" and w.class_list.count() == 0 and not w.export_btn.isEnabled()
    assert json.loads((w.job_dir / "status.json").read_text())["state"] == "stopped"


def test_classification_form_is_built_from_the_spec(make_napari_viewer):
    """Every spec'd field of ClassifyParams is in the form once; fields the dock does not show are kept."""
    import dataclasses

    from cryolive.params import param_spec

    _, w = make_napari_viewer().window.add_plugin_dock_widget("cryolive", "Classification")
    shown = {**w.main_form.widgets, **w.more_form.widgets}
    assert set(shown) == set(param_spec(ClassifyParams))
    assert shown["class_box"].native.specialValueText() == "auto"
    p = dataclasses.replace(TINY, mode="local", online_step=0.25, class_box=32, local_step_deg=1.0, symmetry="C2",
                            seed=5)
    w.set_params(p)
    assert w.params() == p and w.mode == "local" and w.main_form.widgets["mode"].native.currentText().startswith("3D")
    w.set_mode("hetero")  # K follows the starting maps picked (none yet: 1)
    assert w.params().mode == "hetero" and w.params().n_classes == 1 and not w.field("n_classes").enabled


def test_continue_an_interrupted_classification(make_napari_viewer, qtbot, tmp_path, dataset):
    import json
    import socket

    from cryolive.jobs.classify import classify_job
    from cryolive.jobs.jobdir import job_state

    params = ClassifyParams(n_classes=2, max_iter=2, online_em_iters=0, anneal_iters=1)
    gen = classify_job(str(dataset / "particles.star"), str(tmp_path / "jobs"), params)
    first = next(gen)  # iteration 1 and its checkpoint; then the process "dies"
    gen.close()
    job = Path(first.job_dir)
    done = json.loads((job / "status.json").read_text())["last_iteration"]
    status = {"state": "running", "pid": 999999, "host": socket.gethostname(), "iteration": done}
    (job / "status.json").write_text(json.dumps(status))

    viewer = make_napari_viewer()
    w = _dock(viewer, dataset, tmp_path / "jobs")
    assert w.continue_row.isVisibleTo(w) and w.continue_btn.text() == f"Continue {job.name}"
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(w.continue_btn, _left())
        assert w.status_label.text().startswith(f"continued {job.name} after iteration 1")
    assert finished.args == ["finished"] and job_state(job)["state"] == "finished"
    assert w.job_dir == job and w.iterations_shown == [2] and w.class_list.count() == 2
    assert not w.continue_row.isVisibleTo(w)
