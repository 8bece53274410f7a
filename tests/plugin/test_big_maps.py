"""napari with big maps (box 256): the Masks dock previews on a binned grid and makes the full-size mask at the end;
a map streamed from a job's iteration reaches its layer without being copied."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from cryolive.backend import to_numpy
from cryolive.masks import solvent_mask_from_map
from cryolive.plugin import _mask_compute as mc

pytestmark = pytest.mark.gui

BIG, APIX = 256, 1.25
ORIGIN = (10.0, -20.0, 5.0)  # the map layer's translate (Å): the preview must follow it


def _blobs(n: int) -> np.ndarray:
    """Three Gaussian blobs of different sizes and heights plus a little noise (float32)."""
    rng = np.random.default_rng(0)
    c = np.arange(n, dtype=np.float32) - n / 2
    z, y, x = c[:, None, None], c[None, :, None], c[None, None, :]
    vol = rng.normal(0.0, 0.01, (n, n, n)).astype(np.float32)
    for (pz, py, px), s, h in (((-20, 10, 5), 16.0, 1.0), ((25, -15, 20), 10.0, 0.8), ((5, 30, -30), 7.0, 0.6)):
        vol += h * np.exp(-((z - pz * n / 128) ** 2 + (y - py * n / 128) ** 2 + (x - px * n / 128) ** 2)
                          / (2 * (s * n / 128) ** 2)).astype(np.float32)
    return vol


@pytest.fixture(scope="module")
def big_map() -> np.ndarray:
    return _blobs(BIG)


def _wait_idle(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a >= 0.5, b >= 0.5
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _masks_dock(viewer, vol, apix=APIX, translate=ORIGIN):
    viewer.add_image(vol, name="map", scale=(apix,) * 3, translate=translate)
    _, w = viewer.window.add_plugin_dock_widget("cryolive", "Masks")
    return w


# ------------------------------------------------------------------------------------------------- masks dock
def test_preview_factors_keep_small_boxes_as_they_were():
    assert [mc.preview_factor(n) for n in (64, 96, 97, 128, 129, 192, 193, 256, 288, 289, 400)] == \
        [1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 5]
    geo = mc.binned_geometry((2.0, 2.0, 2.0), (1.0, 0.0, -4.0), 3)
    assert geo == ((6.0, 6.0, 6.0), (3.0, 2.0, -2.0))  # binned voxel 0 is centred on map voxel 1


def test_big_map_preview_on_the_binned_grid_then_the_full_mask(make_napari_viewer, qtbot, big_map):
    viewer = make_napari_viewer()
    w = _masks_dock(viewer, big_map)
    w.threshold.setValue(0.25)
    w.dilate.setValue(4.0)
    w.soft.setValue(8.0)
    _wait_idle(qtbot, w)
    p = w.solvent_params()
    layer = w.layer("solvent")
    f = mc.preview_factor(BIG)
    m = BIG // f
    # the preview: computed on the binned map's grid (85³ for box 256), nothing of the full box's size
    assert f == 3 and layer.data.shape == (m, m, m) and layer.data.dtype == np.float32
    assert layer.metadata["preview"] and layer.metadata["grid"] == f and layer.metadata["binning"] == f
    # ... and the same function of the binned map with the binned voxel size (dilation / soft edge in Å)
    expected = to_numpy(solvent_mask_from_map(mc.bin_by(big_map, f), f * APIX, p.threshold, p.dilate_A, p.soft_A))
    np.testing.assert_array_equal(layer.data, expected)
    # it overlays the map in world coordinates: binned voxel i is centred on map voxel f i + (f - 1) / 2
    the_map = viewer.layers["map"]
    for voxel in ((0, 0, 0), (10, 40, 84), (84, 84, 84)):
        centre = np.asarray(voxel) * f + (f - 1) / 2
        np.testing.assert_allclose(layer.data_to_world(voxel), the_map.data_to_world(centre))
    np.testing.assert_allclose(layer.scale, (f * APIX,) * 3)
    # the preview, scaled up, agrees with the full-size mask
    full = to_numpy(solvent_mask_from_map(big_map, APIX, p.threshold, p.dilate_A, p.soft_A))
    up = np.zeros_like(full)
    up[: m * f, : m * f, : m * f] = np.repeat(np.repeat(np.repeat(layer.data, f, 0), f, 1), f, 2)
    assert _dice(up, full) >= 0.9
    assert "3× binned" in w.solvent_label.text()

    # "Create mask (full size)": the full mask replaces the preview in the same layer, exactly the direct computation
    w.create_btn.click()
    _wait_idle(qtbot, w, timeout=180_000)
    assert w.layer("solvent") is layer
    assert layer.data.shape == (BIG,) * 3 and not layer.metadata["preview"] and layer.metadata["grid"] == 1
    np.testing.assert_array_equal(layer.data, full)
    np.testing.assert_allclose(layer.scale, the_map.scale)
    np.testing.assert_allclose(layer.translate, the_map.translate)
    assert "full size" in w.solvent_label.text()


def test_big_map_binned_once_while_dragging(make_napari_viewer, qtbot, big_map, monkeypatch):
    calls = []
    bin_by = mc.bin_by
    monkeypatch.setattr(mc, "bin_by", lambda vol, f: calls.append(vol.shape) or bin_by(vol, f))
    mc._BINNED.clear()
    viewer = make_napari_viewer()
    w = _masks_dock(viewer, big_map)
    _wait_idle(qtbot, w)
    for t in (0.3, 0.35, 0.4):
        w.threshold.setValue(t)
        _wait_idle(qtbot, w)
    assert w.layer("solvent").metadata["threshold"] == pytest.approx(0.4)
    assert calls == [(BIG,) * 3]  # the map was binned for the first preview only


def test_box_between_96_and_128_previews_at_full_size_as_before(make_napari_viewer, qtbot):
    vol = _blobs(112)
    viewer = make_napari_viewer()
    w = _masks_dock(viewer, vol, translate=(0.0, 0.0, 0.0))
    _wait_idle(qtbot, w)
    layer = w.layer("solvent")
    p = w.solvent_params()
    assert layer.data.shape == (112,) * 3 and layer.metadata["preview"] and layer.metadata["grid"] == 1
    binned = to_numpy(solvent_mask_from_map(mc.bin2(vol), 2 * APIX, p.threshold, p.dilate_A, p.soft_A))
    np.testing.assert_array_equal(layer.data, mc.unbin2(binned, 112))  # what the dock always showed
    np.testing.assert_allclose(layer.scale, (APIX,) * 3)


def test_focus_overlap_on_the_preview_grid(make_napari_viewer, qtbot, big_map):
    viewer = make_napari_viewer()
    w = _masks_dock(viewer, big_map)
    _wait_idle(qtbot, w)
    solvent = w.layer("solvent")
    assert solvent.metadata["grid"] == 3
    # a sphere on the edge of the biggest blob (centre (88, 148, 138)): partly outside the solvent mask
    w.radius.setValue(40.0)
    w.place_sphere_voxel((88.0, 148.0, 200.0))
    _wait_idle(qtbot, w)
    assert w.focus_mask.shape == (BIG,) * 3
    assert w.outside_fraction is not None and 0.01 < w.outside_fraction < 0.99
    outside = w.layer("outside")
    assert outside.data.shape == solvent.data.shape
    np.testing.assert_allclose(outside.scale, solvent.scale)
    np.testing.assert_allclose(outside.translate, solvent.translate)
    preview_fraction = w.outside_fraction
    w.create_btn.click()
    _wait_idle(qtbot, w, timeout=180_000)
    assert w.layer("outside").data.shape == (BIG,) * 3
    assert w.outside_fraction == pytest.approx(preview_fraction, abs=0.05)


def test_a_mask_loaded_over_a_big_preview_is_full_size(make_napari_viewer, qtbot, big_map, tmp_path):
    from cryolive.io import write_map

    viewer = make_napari_viewer()
    w = _masks_dock(viewer, big_map)
    _wait_idle(qtbot, w)
    layer = w.layer("solvent")
    assert layer.metadata["preview"]
    mask = (big_map > 0.5).astype(np.float32)
    write_map(tmp_path / "m.mrc", mask, APIX)
    assert w.load_mask(tmp_path / "m.mrc") is layer
    assert layer.data.shape == (BIG,) * 3 and not layer.metadata.get("preview") and w._mask_grid("solvent") == 1
    np.testing.assert_allclose(layer.translate, ORIGIN)
    assert w.save_mask(tmp_path / "saved.mrc")  # written at once: not a preview to recompute first


# ------------------------------------------------------------------------------------------------- streaming
def _iteration(i: int, n: int) -> SimpleNamespace:
    rng = np.random.default_rng(i)
    m = rng.random((n, n, n), dtype=np.float32)
    return SimpleNamespace(iteration=i, search="global", n_particles=100, align_resolution_A=12.0, resolution_A=8.0,
                           resolution_unmasked_A=9.0, map=m, half_a=m, half_b=m, mask=np.ones_like(m),
                           timings={"total_s": 1.0}, pose_summary={})


def test_a_streamed_map_reaches_its_layer_without_a_copy(make_napari_viewer):
    from cryolive.refinement.refine import RefineParams

    n = 192
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("cryolive", "Refinement")
    ref = _iteration(0, n).map
    w.model.start("particles.star", "reference.mrc", ref, APIX, RefineParams(max_iter=4))
    w._show_map(w.model.history.data[0], "reference")
    w._update_history()
    w._show_mask(np.zeros_like(ref), 0)
    for i in (1, 2):  # an iteration as the dock's _render draws it: model, map, history, mask
        it = _iteration(i, n)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        w.model.receive(it)
        w._show_map(it.map, w.model.map_title(it))
        w._update_history()
        w._show_mask(it.mask, it.iteration)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        layer = w.own_layer("refinement map")
        assert layer.data is it.map  # the iteration's own array: no copy
        assert w.own_layer("refinement mask").data is it.mask
        # the one copy: into the history (kept for scrubbing), a buffer made at the start
        np.testing.assert_array_equal(w.model.history.data[-1], it.map)
        assert not np.shares_memory(w.model.history.data, it.map)
        assert peak <= 0.25 * it.map.nbytes, peak / it.map.nbytes  # no other map-sized allocation on the way


def test_a_streamed_class_map_reaches_its_layer_without_a_copy(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("cryolive", "Classification")
    maps = np.stack([_iteration(k, 128).map for k in (1, 2)])  # ClassIteration.class_maps: (K, n, n, n) float32
    for k in (1, 2):  # the layers are made (napari's add_image does its own one-off work) ...
        w._show_class(k, maps[k - 1], APIX)
    maps = maps + 1.0
    for _ in range(2):  # ... then each iteration replaces their data
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for k in (1, 2):
            w._show_class(k, maps[k - 1], APIX)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        for k in (1, 2):
            assert np.shares_memory(w.class_layer(k).data, maps[k - 1])
        assert peak <= 0.25 * maps[0].nbytes, peak / maps[0].nbytes


def test_refinement_hands_on_its_float32_maps():
    from cryolive.refinement.refine import _host32

    a = np.ones((8, 8, 8), np.float32)
    assert _host32(a) is a
    b = _host32(a.astype(np.float64))
    assert b.dtype == np.float32 and np.array_equal(a, b)
