"""Screenshot of the Masks dock on a big map (box 256) for docs/user-guide.md: the threshold moved, the live preview
(computed on a 3× binned map, 85³) drawn over the full map by the layer's scale.

Needs a display; on a headless machine run it under Xvfb:

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshot_masks_big.py [--full]

Writes docs/images/masks_dock_big.png (the whole window, the dock on the right); with ``--full`` also
docs/images/masks_dock_big_full.png after "Create mask (full size)" (to compare; not used in the docs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from bench_napari_maps import blobs  # noqa: E402 - the benchmark's synthetic map
from make_screenshots import spin, wait_for  # noqa: E402 - the docs folder's own helpers

OUT = HERE / "images"


def main() -> None:
    n, apix = 256, 1.0
    vol = blobs(n)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.add_image(vol, name="map", scale=(apix,) * 3, colormap="gray")
    _, w = viewer.window.add_plugin_dock_widget("cryolive", "Masks")
    wait_for(lambda: not w.busy)
    z = int(np.unravel_index(int(np.argmax(vol)), vol.shape)[0])
    viewer.dims.set_point(0, z * apix)
    for t in (0.25, 0.3, 0.35):  # the user drags the threshold
        w.threshold.setValue(t)
        spin(0.05)
    wait_for(lambda: not w.busy)
    spin(1.0)
    viewer.screenshot(str(OUT / "masks_dock_big.png"), canvas_only=False, flash=False)
    if "--full" in sys.argv:
        w.create_full_mask()
        wait_for(lambda: not w.busy)
        spin(1.0)
        viewer.screenshot(str(OUT / "masks_dock_big_full.png"), canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main()
