"""Screenshots of the cryolive docks at work on the bundled sample data, for docs/user-guide.md.

Needs a display; on a headless machine run it under Xvfb:

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/make_screenshots.py

Writes docs/images/masks_2d.png, masks_3d.png, refinement.png and refinement_2d.png (two to three minutes
under Xvfb's software OpenGL: the refinement uses small settings, two iterations).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import QApplication

from cryolive.backend import to_numpy
from cryolive.io import write_map
from cryolive.masks import threshold_mask
from cryolive.refinement.refine import RefineParams
from cryolive.sample import sample_path

OUT = Path(__file__).resolve().parent / "images"
SIZE = (1800, 1080)


def spin(seconds: float) -> None:
    """Let the event loop run (layers, docks and plots draw) for a while."""
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def wait_for(cond, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("gave up waiting")
        spin(0.05)


def new_viewer() -> napari.Viewer:
    viewer = napari.Viewer(show=True, title="cryolive")
    viewer.window.resize(*SIZE)
    viewer.open_sample("cryolive", "sample_map")
    ref = viewer.layers["reference"]
    ref.colormap = "gray"
    apix = float(ref.scale[0])
    viewer.dims.set_point(0, ref.data.shape[0] // 2 * apix)  # the middle slice
    return viewer


def shot(viewer: napari.Viewer, name: str) -> None:
    spin(0.8)
    path = OUT / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")


def masks_shots() -> None:
    viewer = new_viewer()
    _, masks = viewer.window.add_plugin_dock_widget("cryolive", "Masks")
    masks.threshold.setValue(0.25)
    masks.dilate.setValue(float(viewer.layers["reference"].scale[0]))  # one voxel
    masks.soft.setValue(7.0)
    wait_for(lambda: not masks.busy)
    # a focus sphere placed (as by a click) on the edge of the solvent mask, beside the densest voxel of the
    # middle slice: about half of it lies outside, which the dock flags
    sl = np.asarray(viewer.layers["reference"].data[16])
    y0, x0 = np.unravel_index(int(np.argmax(sl)), sl.shape)
    row = masks.solvent_mask[16, y0]
    xb = x0 + int(np.argmax(row[x0:] < 0.5))
    masks.radius.setValue(10.5)
    masks.place_sphere_voxel((16.0, float(y0), float(xb)))
    wait_for(lambda: not masks.busy)
    viewer.layers.selection.active = viewer.layers["reference"]
    viewer.reset_view()
    shot(viewer, "masks_2d.png")

    ref = viewer.layers["reference"]
    ref.rendering = "iso"
    ref.iso_threshold = 0.3 * float(np.max(ref.data))
    viewer.dims.ndisplay = 3
    viewer.scene.camera.angles = (10.0, -35.0, 60.0)
    viewer.reset_view()
    viewer.scene.camera.zoom *= 1.3
    shot(viewer, "masks_3d.png")
    viewer.close()


def refinement_shots() -> None:
    viewer = new_viewer()
    ref = viewer.layers["reference"]
    work = Path(tempfile.mkdtemp(prefix="cryolive_shots_"))
    apix = float(ref.scale[0])
    mask = to_numpy(threshold_mask(np.asarray(ref.data), 0.2, apix, 2 * apix, apix))
    write_map(work / "mask.mrc", mask, apix)
    viewer.open(str(work / "mask.mrc"), plugin="cryolive", name="mask")
    viewer.layers["mask"].visible = False
    _, refine = viewer.window.add_plugin_dock_widget("cryolive", "Refinement")
    refine.particles_edit.setText(str(sample_path("particles.star")))
    refine.out_edit.setText(str(work / "jobs"))
    refine.mask_combo.set_layer("mask")
    refine.set_params(RefineParams(max_iter=2, global_iters=1, minibatch_iters=0, coarse_step_deg=15, levels=2))
    refine.show_halves.setChecked(False)
    done: list[str] = []
    refine.runFinished.connect(done.append)
    refine.start()
    wait_for(lambda: bool(done))
    if done != ["finished"]:
        sys.exit(f"the refinement did not finish: {done} — {refine.status_label.text()}")
    spin(5.0)  # let the "finished" notification fade
    ref.visible = False
    # 2D: scrub back to iteration 1 on the iteration axis
    refine.scrub.setChecked(True)
    viewer.dims.set_current_step(0, 1)
    viewer.layers.selection.active = viewer.layers["refinement history"]
    viewer.reset_view()
    shot(viewer, "refinement_2d.png")

    refine.scrub.setChecked(False)
    viewer.dims.set_current_step(0, viewer.dims.nsteps[0] - 1)
    refmap = viewer.layers["refinement map"]
    refmap.rendering = "iso"
    refmap.iso_threshold = 0.3 * float(np.max(refmap.data))
    viewer.dims.ndisplay = 3
    viewer.scene.camera.angles = (10.0, -35.0, 60.0)
    viewer.reset_view()
    viewer.scene.camera.zoom *= 1.3
    shot(viewer, "refinement.png")
    print(f"job folder: {refine.job_dir}")
    viewer.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    QApplication.instance() or napari.qt.get_qapp()
    masks_shots()
    refinement_shots()
    return 0


if __name__ == "__main__":
    sys.exit(main())
