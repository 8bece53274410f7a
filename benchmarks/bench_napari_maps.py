"""napari with big maps: the Masks dock's preview at box 256 and the copies a streamed map makes on its way to a layer.

Needs a display (napari draws with OpenGL); on a headless machine run it under Xvfb::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_napari_maps.py [--box 256]

Masks dock (a synthetic map: six Gaussian blobs + noise, float32, 1 Å/voxel): one preview update as the user moves
the threshold, measured on the dock itself (works on this and on older versions of the dock):

* ``compute``: the worker function the dock's runner calls (thread), best of ``--repeat``;
* ``slot``: the main-thread slot that puts the result on the layer (``_on_solvent_done``), then one forced draw of
  the canvas (``draw``: the texture upload), in 2D and in 3D display;
* ``longest stall``: the longest gap between ticks of a 5 ms timer on the main thread during one update (what the
  user feels: the viewer cannot pan or redraw for that long);
* ``create``: the full-size mask (the "Create mask (full size)" button), compute and slot.

Streaming (the Refinement dock, a fake iteration of box ``--box``): tracemalloc peak of each step, in units of the
map's size, and whether the map layer shows the iteration's own array (no copy).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np


def blobs(n: int, seed: int = 0) -> np.ndarray:
    """Six Gaussian blobs (σ n/30 … n/14 voxels) near the centre plus Gaussian noise (σ 0.02), float32."""
    rng = np.random.default_rng(seed)
    c = (np.arange(n) - n / 2).astype(np.float32)
    z, y, x = c[:, None, None], c[None, :, None], c[None, None, :]
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(6):
        p = rng.uniform(-n / 5, n / 5, 3)
        s = rng.uniform(n / 30, n / 14)
        vol += np.exp(-((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * s * s)).astype(np.float32)
    vol += rng.normal(0, 0.02, vol.shape).astype(np.float32)
    return vol


def spin(ms: int) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_until(cond, timeout_s: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while not cond():
        QApplication.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError


class Timed:
    """Wraps the dock's worker function and main-thread slot to time them; a 5 ms timer measures stalls."""

    def __init__(self, w) -> None:  # noqa: ANN001 - the Masks dock
        from qtpy.QtCore import QTimer

        self.w, self.compute, self.slot, self.done = w, [], [], 0
        fn = w._solvent_runner._fn

        def compute(*args):  # noqa: ANN202
            t0 = time.perf_counter()
            out = fn(*args)
            self.compute.append(time.perf_counter() - t0)
            return out

        w._solvent_runner._fn = compute
        w._solvent_runner.done.disconnect(w._on_solvent_done)
        w._solvent_runner.done.connect(self._slot)
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def _slot(self, tag, result) -> None:  # noqa: ANN001
        t0 = time.perf_counter()
        self.w._on_solvent_done(tag, result)
        self.slot.append(time.perf_counter() - t0)
        self.done += 1

    def update(self, change, canvas) -> tuple[float, float, float, float]:  # noqa: ANN001
        """Run ``change`` (a slider move), wait for the layer; (compute, slot, draw, longest stall) in s."""
        before = self.done
        self.ticks = [time.perf_counter()]
        self.timer.start()
        change()
        wait_until(lambda: self.done > before and not self.w.busy)
        t0 = time.perf_counter()
        canvas.render()
        draw = time.perf_counter() - t0
        spin(30)
        self.timer.stop()
        stall = float(np.max(np.diff(self.ticks))) if len(self.ticks) > 1 else float("nan")
        return self.compute[-1], self.slot[-1], draw, stall


def bench_masks(viewer, n: int, repeat: int) -> list[tuple[str, str]]:  # noqa: ANN001
    apix = 1.0
    vol = blobs(n)
    viewer.add_image(vol, name="map", scale=(apix,) * 3)
    _, w = viewer.window.add_plugin_dock_widget("cryolive", "Masks")
    wait_until(lambda: not w.busy)
    spin(200)
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    t = Timed(w)
    rows = []
    for nd in (2, 3):
        viewer.dims.ndisplay = nd
        spin(200)
        res = []
        for i in range(repeat):
            value = 0.2 + 0.01 * (i + 1) * (1 if nd == 2 else -1)
            res.append(t.update(lambda v=value: w.threshold.setValue(v), canvas))
        c, s, d, st = (min(r[k] for r in res) for k in range(4))
        shape = w.layer("solvent").data.shape
        rows.append((f"preview {nd}D (mask layer {shape[0]}³)",
                     f"compute {c:.2f} s, slot {s:.3f} s, draw {d:.3f} s, longest stall {st:.3f} s"))
    viewer.dims.ndisplay = 2
    spin(100)
    c, s, d, st = t.update(w.create_full_mask, canvas)
    rows.append((f"create full size ({w.layer('solvent').data.shape[0]}³, 2D)",
                 f"compute {c:.2f} s, slot {s:.3f} s, draw {d:.3f} s, longest stall {st:.3f} s"))
    return rows


def _iteration(i: int, n: int, rng) -> SimpleNamespace:  # noqa: ANN001
    m = rng.random((n, n, n), dtype=np.float32)
    return SimpleNamespace(iteration=i, search="global", n_particles=100, align_resolution_A=12.0,
                           resolution_A=8.0, resolution_unmasked_A=9.0, map=m, half_a=m, half_b=m,
                           mask=np.ones((n, n, n), np.float32), timings={"total_s": 1.0},
                           pose_summary={}, working_box=n)


def bench_stream(viewer, n: int) -> list[tuple[str, str]]:  # noqa: ANN001
    from cryolive.refinement.refine import RefineParams

    _, w = viewer.window.add_plugin_dock_widget("cryolive", "Refinement")
    rng = np.random.default_rng(1)
    ref = rng.random((n, n, n), dtype=np.float32)
    w.model.start("particles.star", "reference.mrc", ref, 1.0, RefineParams(max_iter=5))
    w._show_map(w.model.history.data[0], "reference")
    w._update_history()
    w._show_mask(np.zeros_like(ref), 0)
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    canvas.render()
    rows = []
    for nd in (2, 3):
        viewer.dims.ndisplay = nd
        spin(100)
        canvas.render()
        it = _iteration(nd, n, rng)
        nbytes = it.map.nbytes
        steps = [("model.receive (history)", lambda it=it: w.model.receive(it)),
                 ("map layer", lambda it=it: w._show_map(it.map, "iteration")),
                 ("history layer", w._update_history),
                 ("mask layer", lambda it=it: w._show_mask(it.mask, it.iteration)),
                 ("draw", canvas.render)]
        gc.collect()
        tracemalloc.start()
        parts, total = [], 0.0
        for name, fn in steps:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            peak = (tracemalloc.get_traced_memory()[1] - base) / nbytes
            total += peak if name != "draw" else 0.0
            parts.append(f"{name} {peak:.2f}× ({dt:.3f} s)")
        tracemalloc.stop()
        layer = w.own_layer("refinement map")
        shares = layer is not None and np.shares_memory(np.asarray(layer.data), it.map)
        rows.append((f"stream one map {nd}D ({n}³, {nbytes / 2**20:.0f} MiB)",
                     "; ".join(parts) + f"; map layer shows the iteration's array: {shares}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--box", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-masks", action="store_true")
    ap.add_argument("--skip-stream", action="store_true")
    a = ap.parse_args()
    import napari

    rows = []
    if not a.skip_masks:
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1400, 900)
        rows += bench_masks(viewer, a.box, a.repeat)
        viewer.close()
    if not a.skip_stream:
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1400, 900)
        rows += bench_stream(viewer, a.box)
        viewer.close()
    print(f"\nbox {a.box}")
    print("| what | numbers |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
