"""Screenshot of the Refinement dock for docs/user-guide.md: a short refinement of the bundled sample data (two
iterations), with the dock's whole form on the right ("More parameters" open), the refined map in the viewer and
the FSC and angular-distribution plots below.

Needs a display; on a headless machine run it under Xvfb:

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1700x1900x24" .venv/bin/python docs/screenshot_refine.py

Writes docs/images/refine_dock.png (the whole window); about a minute on two cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
from napari._qt.dialogs.qt_notification import NapariQtNotification
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication
from superqt import QCollapsible

from cryolive.refinement.refine import RefineParams
from cryolive.sample import sample_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import spin, wait_for  # noqa: E402 - the docs folder's own helpers

OUT = Path(__file__).resolve().parent / "images"
SIZE = (1700, 1850)
PARAMS = RefineParams(max_iter=2, global_iters=1, minibatch_iters=0, coarse_step_deg=15, levels=2)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="cryolive_refine_shot_"))
    viewer = napari.Viewer(show=True, title="cryolive")
    viewer.window.resize(*SIZE)
    viewer.open_sample("cryolive", "sample_map")
    ref = viewer.layers["reference"]
    ref.colormap = "gray"
    dock, w = viewer.window.add_plugin_dock_widget("cryolive", "Refinement")
    w.particles_edit.setText(str(sample_path("particles.star")))
    w.out_edit.setText(str(work / "jobs"))
    w.set_params(PARAMS)
    for box in w.findChildren(QCollapsible):  # the whole form: "More parameters" open
        box.expand(animate=False)
    spin(0.5)
    w.start()
    wait_for(lambda: w.state != "running" and not w.running, timeout=900)
    assert w.state == "finished", (w.state, w.status_label.text())
    ref.visible = False
    refmap = viewer.layers["refinement map"]
    viewer.layers.selection.active = refmap
    viewer.dims.set_point(0, refmap.data.shape[0] // 2 * float(refmap.scale[0]))  # the middle slice
    viewer.reset_view()
    # wide enough for the form's labels and values; no focus frame, no notification toast
    viewer.window._qt_window.resizeDocks([dock], [560], Qt.Orientation.Horizontal)  # noqa: SLF001
    focused = QApplication.focusWidget()
    if focused is not None:
        focused.clearFocus()
    for form in (w.main_form, w.more_form):  # napari's notification toasts move focus (and a selection) under Xvfb
        form.set_value(w.params())
    spin(2.0)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):  # noqa: SLF001
        toast.close()
    spin(1.0)
    viewer.screenshot(str(OUT / "refine_dock.png"), canvas_only=False, flash=False)
    print(f"wrote {OUT / 'refine_dock.png'}; job folder {w.job_dir}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
