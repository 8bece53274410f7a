"""Screenshot of the 2D classification dock for docs/user-guide.md: a run on simulated data (a phantom at 6 views
plus 20 % junk), the good classes selected and the junk rejected as a user would, the selection exported.

Needs a display; on a headless machine run it under Xvfb:

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshot_class2d.py

Writes docs/images/class2d_dock.png (the whole window, the dock on the right); under a minute on two cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from cryolive.class2d import Class2DParams
from cryolive.class2d.evaluate import correlation_matrix
from cryolive.simulator.phantom import make_phantom, render
from cryolive.simulator.views2d import simulate_views

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import spin, wait_for  # noqa: E402 - the docs folder's own helpers

OUT = Path(__file__).resolve().parent / "images"
BOX, APIX = 40, 3.0
PARAMS = Class2DParams(k=12, max_iter=10)


def simulate(folder: Path):
    """``(particles.star, truth)``: 6 views x 80 particles + 120 junk, box 40, SNR 0.1."""
    vol = render(make_phantom(BOX, APIX, seed=1), BOX, APIX, 1.6)
    return simulate_views(folder, vol, APIX, n_views=6, per_view=80, junk_fraction=0.2, snr=0.1, seed=0)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="cryolive_class2d_shot_"))
    star, truth = simulate(work / "data")
    viewer = napari.Viewer(show=True, title="cryolive")
    viewer.window.resize(1600, 1000)
    dock, w = viewer.window.add_plugin_dock_widget("cryolive", "2D classification")
    w.particles_edit.setText(str(star))
    w.out_edit.setText(str(work / "jobs"))
    w.set_params(PARAMS)
    spin(0.5)
    w.start()
    wait_for(lambda: w.state != "running" and not w.running, timeout=900)
    assert w.state == "finished", w.state
    # what a user does by eye, here from the truth: the classes that are views in, the junk out
    corr = correlation_matrix(w.model.averages, truth.projections, APIX, w.model.resolution_A)
    good = np.flatnonzero(corr.max(axis=1) >= 0.9)
    w.model.reject(range(w.model.k))
    w.model.select(good)
    w.current_class = int(good[0])
    w.export_selected()
    w.show_particles(int(good[0]))
    viewer.layers[f"class {good[0] + 1} particles"].visible = False
    viewer.layers.selection.active = w.averages_layer()
    viewer.dims.set_current_step(0, int(w.model.gallery_order()[0]))
    # wide enough for six thumbnails a row (all twelve classes in view); no focus frame, no notification toast
    viewer.window._qt_window.resizeDocks([dock], [900], Qt.Orientation.Horizontal)  # noqa: SLF001
    focused = QApplication.focusWidget()
    if focused is not None:
        focused.clearFocus()
    for form in (w.main_form, w.more_form):  # napari's notification toasts move focus (and a selection) under Xvfb
        form.set_value(w.params())
    spin(8.0)
    viewer.screenshot(str(OUT / "class2d_dock.png"), canvas_only=False, flash=False)
    print(f"wrote {OUT / 'class2d_dock.png'}; {len(good)} classes selected")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
