"""The 2D classification dock in a real napari viewer (under Xvfb): a run on a small simulated set with the truth
(3 views x 60 particles + 20 % junk), the live gallery, clicking good classes in and junk out, the export read back
as the input of the refinement and 3D classification docks, and a class's particles in the viewer."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cryolive.class2d import Class2DParams
from cryolive.plugin.class2d_model import REJECTED, SELECTED, UNDECIDED

pytestmark = pytest.mark.gui

RUN_TIMEOUT_MS = 120_000
BOX, APIX, K = 32, 4.0, 6
PARAMS = Class2DParams(k=K, max_iter=6)
_DOCKS: list = []


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """``(particles.star, truth)``: a phantom at 3 views x 60 particles + 45 junk, box 32, SNR 0.1."""
    from cryolive.simulator.phantom import make_phantom, render
    from cryolive.simulator.views2d import simulate_views

    vol = render(make_phantom(BOX, APIX, seed=1), BOX, APIX, 1.6)
    return simulate_views(tmp_path_factory.mktemp("class2d_dock") / "data", vol, APIX, n_views=3, per_view=60,
                          junk_fraction=0.2, snr=0.1, max_shift_px=3.0, seed=0)


@pytest.fixture(autouse=True)
def _stop_jobs(make_napari_viewer, qtbot):
    """A failing test must not leave a job running into the next one (torn down before the viewer closes)."""
    yield
    while _DOCKS:
        w = _DOCKS.pop()
        if w.running:
            with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS, raising=False):
                w.stop()


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def _dock(viewer, star, out):
    _, widget = viewer.window.add_plugin_dock_widget("cryolive", "2D classification")
    widget.particles_edit.setText(str(star))
    widget.out_edit.setText(str(out))
    widget.set_params(PARAMS)
    _DOCKS.append(widget)
    return widget


def _caption_size(thumb) -> int:
    return int(re.search(r"(\d+)\sparticles?", thumb.text()).group(1))


def test_manifest_has_the_class2d_dock():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    widgets = {w.display_name: w.command for w in pm.get_manifest("cryolive").contributions.widgets}
    assert widgets["2D classification"] == "cryolive.class2d_widget"


def test_form_is_built_from_the_spec(make_napari_viewer, views, tmp_path):
    from cryolive.params import param_spec

    w = _dock(make_napari_viewer(), *views[:1], tmp_path)
    shown = {**w.main_form.widgets, **w.more_form.widgets}
    assert set(shown) == set(param_spec(Class2DParams))  # every spec'd parameter, once
    assert shown["k"].label == "Classes" and shown["diameter_A"].native.specialValueText() == "auto"
    assert w.params() == PARAMS
    shown["diameter_A"].value = 110.0
    shown["k"].value = 9
    assert w.params() == Class2DParams(k=9, max_iter=6, diameter_A=110.0)
    w.set_params(Class2DParams(seed=4))  # a field the form does not show is kept
    assert w.params().seed == 4 and w.params().diameter_A is None


def test_gallery_select_export_and_show(make_napari_viewer, qtbot, views, tmp_path, monkeypatch):
    from cryolive.class2d.evaluate import correlation_matrix
    from cryolive.io import read_particles
    from cryolive.io.particles import check_image_statistics

    star, truth = views
    n = len(truth.view)
    viewer = make_napari_viewer()
    w = _dock(viewer, star, tmp_path / "jobs")
    with qtbot.waitSignal(w.runFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(w.start_btn, _left())
    assert finished.args[0] == "finished"
    assert w.iterations_shown and w.iterations_shown[-1] <= PARAMS.max_iter
    assert w.job_dir == tmp_path / "jobs" / "job_class2d_001" and w.model.finished

    # the gallery: K thumbnails, largest class first, sizes summing to the particles
    thumbs = w.gallery.thumbs
    assert len(thumbs) == K and all(t.image.pixmap() is not None and not t.image.pixmap().isNull() for t in thumbs)
    sizes = [_caption_size(t) for t in thumbs]
    assert sum(sizes) == n and sizes == sorted(sizes, reverse=True)
    assert all("Å" in t.text() for t in thumbs)
    layer = w.averages_layer()
    assert layer.name == "class averages" and layer.data.shape == (K, BOX, BOX)
    assert layer.scale[-1] == pytest.approx(APIX)
    np.testing.assert_allclose(layer.data, w.model.averages)

    # click the classes that are true views in (one click: green), the rest out (two clicks: red)
    corr = correlation_matrix(w.model.averages, truth.projections, APIX, w.model.resolution_A)
    good_classes = set(np.flatnonzero(corr.max(axis=1) >= 0.9).tolist())
    assert good_classes, np.round(corr, 2)
    for t in thumbs:
        assert t.decision == UNDECIDED
        qtbot.mouseClick(t, _left())
        if t.class_index not in good_classes:
            qtbot.mouseClick(t, _left())
    assert {t.class_index for t in thumbs if t.decision == SELECTED} == good_classes
    assert all(t.decision == REJECTED for t in thumbs if t.class_index not in good_classes)
    assert "#2ecc40" in w.gallery.thumb(min(good_classes)).image.styleSheet()
    assert w.export_btn.isEnabled() and w.export_btn.text() == f"Export {len(good_classes)} selected…"

    # export through the button (the dialog offers <job>/particles_selected.star)
    offered = []

    def dialog(parent, title, default, *args, **kwargs):
        offered.append(default)
        return default, ""

    monkeypatch.setattr("qtpy.QtWidgets.QFileDialog.getSaveFileName", dialog)
    qtbot.mouseClick(w.export_btn, _left())
    dest = w.job_dir / "particles_selected.star"
    assert offered == [str(dest)] and w.last_export == dest and str(dest) in w.export_label.text()

    # read back as the refinement and 3D classification docks read their input: images, CTF, the right particles
    back = read_particles(dest)
    check_image_statistics(back)
    assert back.box == BOX and back.pixel_size == pytest.approx(APIX) and back.rotations is None
    assert back.images(np.arange(4)).shape == (4, BOX, BOX) and np.all(back.ctf.defocus_u > 0)
    kept = w.model.selected_particle_indices()
    assert len(back) == len(kept)
    good = truth.view >= 0
    chosen = np.zeros(n, bool)
    chosen[kept] = True
    assert chosen[good].mean() >= 0.95, chosen[good].mean()
    assert chosen[~good].mean() <= 0.10, chosen[~good].mean()
    assert set(back.class_number.tolist()) == {k + 1 for k in good_classes}

    # an existing file is replaced only after a yes
    monkeypatch.setattr("qtpy.QtWidgets.QMessageBox.question", lambda *a, **k: __import__(
        "qtpy.QtWidgets", fromlist=["QMessageBox"]).QMessageBox.StandardButton.No)
    before = dest.read_bytes()
    assert w.export_selected(dest) is None and dest.read_bytes() == before

    # a class's particles in the viewer (the last clicked class)
    last = thumbs[-1].class_index
    assert w.current_class == last and w.show_btn.text() == f"Show particles of class {last + 1}"
    qtbot.mouseClick(w.show_btn, _left())
    shown = viewer.layers[f"class {last + 1} particles"]
    count = min(len(w.model.particles_of_class(last)), 200)
    assert shown.data.shape == (count, BOX, BOX) and shown.data.dtype == np.float32
    np.testing.assert_array_equal(shown.data[:2], read_particles(star).images(w.model.particles_of_class(last)[:2]))

    # the selection buttons
    qtbot.mouseClick(w.invert_btn, _left())
    assert {t.class_index for t in thumbs if t.decision == SELECTED} == set(range(K)) - good_classes
    qtbot.mouseClick(w.reject_all_btn, _left())
    assert all(t.decision == REJECTED for t in thumbs) and not w.export_btn.isEnabled()
    qtbot.mouseClick(w.select_all_btn, _left())
    assert all(t.decision == SELECTED for t in thumbs)
