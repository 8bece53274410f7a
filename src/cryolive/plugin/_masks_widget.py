"""The Masks dock: solvent masks by threshold, focus masks by painting, a clicked sphere or a second map.

Threading: every mask is computed by a :class:`LatestOnlyRunner` (a napari ``thread_worker`` running one call at a
time; a request made while one runs replaces any queued request, and the running call's result is dropped when it
is stale). Slider moves are debounced (``DEBOUNCE_MS``) before a request. Results come back on the main thread,
where the layers are updated. The worker functions (``_mask_compute``) see NumPy arrays only.

Big maps: boxes above ``_mask_compute.PREVIEW_MAX_BOX`` are previewed on a binned map. Up to
``UPSAMPLED_MAX_BOX`` (128) the preview is 2× binned and interpolated back to the full box, as it always was; bigger
boxes are binned to ≤ 96 voxels and the layer holds that grid, with the layer's scale and translate set so that it
lies over the map in world coordinates (the map is binned once, in the worker, and kept while the user drags). The
full-size mask is computed by "Create mask (full size)" and before a save, and replaces the preview in the same
layer. While the solvent layer is such a preview, the overlap with a focus mask is checked on the preview's grid
(the focus mask binned the same way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from cryolive.masks import MASK_LEVEL, focus_outside_solvent, mask_volume_fraction
from cryolive.plugin import _mask_compute as mc
from cryolive.plugin._common import (
    LatestOnlyRunner,
    LayerCombo,
    is_labels_3d,
    is_map_layer,
    scrolling_layout,
    set_mask_layer,
    voxel_size,
)

SOLVENT_LAYER = "mask"
FOCUS_LAYER = "focus mask"
OUTSIDE_LAYER = "focus outside solvent"
PAINT_LAYER = "focus paint"
DEBOUNCE_MS = 150

FOCUS_SOURCES = ("Sphere at a clicked point", "Painted labels", "Threshold of a second map")


def _slider(lo: float, hi: float, value: float, step: float, decimals: int, tip: str) -> QLabeledDoubleSlider:
    s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setDecimals(decimals)
    s.setValue(value)
    s.setToolTip(tip)
    return s


class MasksWidget(QWidget):
    """Design solvent and focus masks by eye over a map, check their overlap, save them as MRC."""

    solventChanged = Signal()  # the "mask" layer got new data
    focusChanged = Signal()  # the "focus mask" layer got new data
    overlapChanged = Signal()  # outside fraction / warnings updated

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.outside_fraction: float | None = None
        self.warning_text = ""
        self._sphere_center: tuple[float, float, float] | None = None
        self._placing = False
        self._painted = False
        self._after_full: list[Any] = []
        self._binned_focus = mc._BinnedCache()  # the focus mask on a big map's preview grid (for the overlap)
        # the dock's own layers by kind ("solvent", "focus", "outside"); a user's layer is never overwritten
        self._own: dict[str, Image | None] = {"solvent": None, "focus": None, "outside": None}

        self._solvent_runner = LatestOnlyRunner(self._compute_solvent, self)
        self._solvent_runner.done.connect(self._on_solvent_done)
        self._solvent_runner.failed.connect(self._on_solvent_failed)
        self._focus_runner = LatestOnlyRunner(self._compute_focus, self)
        self._focus_runner.done.connect(self._on_focus_done)
        self._focus_runner.failed.connect(self._on_focus_failed)

        self._solvent_timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self._solvent_timer.timeout.connect(self.update_preview)
        self._focus_timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self._focus_timer.timeout.connect(self._request_focus_if_shown)

        self._build()
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._paint_layer: Labels | None = None
        self._labels_changed()
        if self.map_combo.current_layer() is not None:
            self.update_preview()

    # ------------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        v = self.viewer
        root = scrolling_layout(self)

        box = QGroupBox("Solvent mask")
        form = QFormLayout(box)
        self.map_combo = LayerCombo(v, is_map_layer)
        self.map_combo.setToolTip("the map to threshold (a 3D image layer)")
        form.addRow("Map", self.map_combo)
        self.threshold = _slider(0.01, 1.0, 0.2, 0.01, 3, "threshold as a fraction of the map's maximum")
        form.addRow("Threshold (× max)", self.threshold)
        self.dilate = _slider(0.0, 30.0, 3.0, 0.5, 1, "dilation of the thresholded region in Å")
        form.addRow("Dilation (Å)", self.dilate)
        self.soft = _slider(0.0, 30.0, 6.0, 0.5, 1, "width of the raised-cosine soft edge in Å")
        form.addRow("Soft edge (Å)", self.soft)
        row = QHBoxLayout()
        self.lowpass_on = QCheckBox()
        self.lowpass_on.setToolTip("low-pass the map before thresholding (smoother masks from noisy maps)")
        self.lowpass = QDoubleSpinBox(minimum=1.0, maximum=200.0, value=15.0, suffix=" Å", decimals=1)
        self.lowpass.setEnabled(False)
        row.addWidget(self.lowpass_on)
        row.addWidget(self.lowpass)
        form.addRow("Low-pass first", row)
        self.create_btn = QPushButton("Create mask (full size)")
        self.create_btn.setToolTip("compute the mask at full size (the live preview of boxes > "
                                   f"{mc.PREVIEW_MAX_BOX} uses a binned map: 2× up to {mc.UPSAMPLED_MAX_BOX}, "
                                   f"else ≤ {mc.PREVIEW_MAX_BOX} voxels)")
        form.addRow(self.create_btn)
        self.solvent_label = QLabel("no mask yet")
        self.solvent_label.setWordWrap(True)
        form.addRow(self.solvent_label)
        root.addWidget(box)

        box = QGroupBox("Focus mask")
        form = QFormLayout(box)
        self.focus_source = QComboBox()
        self.focus_source.addItems(FOCUS_SOURCES)
        form.addRow("From", self.focus_source)
        self.focus_pages: list[QWidget] = []  # one shown at a time, for the selected source
        # sphere page
        page = QWidget()
        pf = QFormLayout(page)
        pf.setContentsMargins(0, 0, 0, 0)
        self.radius = _slider(1.0, 200.0, 20.0, 0.5, 1, "sphere radius in Å")
        pf.addRow("Radius (Å)", self.radius)
        self.place_btn = QPushButton("Place by clicking on the map")
        self.place_btn.setCheckable(True)
        self.place_btn.setToolTip("while this is pressed, a click in the viewer puts the sphere centre there "
                                  "(2D: the clicked voxel of the current slice; 3D: the densest voxel on the ray)")
        pf.addRow(self.place_btn)
        self.center_label = QLabel("centre: not placed")
        pf.addRow(self.center_label)
        self.focus_pages.append(page)
        # labels page
        page = QWidget()
        pf = QFormLayout(page)
        pf.setContentsMargins(0, 0, 0, 0)
        self.labels_combo = LayerCombo(v, is_labels_3d)
        pf.addRow("Labels", self.labels_combo)
        self.new_paint_btn = QPushButton("New paint layer over the map")
        pf.addRow(self.new_paint_btn)
        self.focus_pages.append(page)
        # second map page
        page = QWidget()
        pf = QFormLayout(page)
        pf.setContentsMargins(0, 0, 0, 0)
        self.focus_map_combo = LayerCombo(v, is_map_layer)
        pf.addRow("Map", self.focus_map_combo)
        self.focus_threshold = _slider(0.01, 1.0, 0.3, 0.01, 3, "threshold of the second map (fraction of max)")
        pf.addRow("Threshold (× max)", self.focus_threshold)
        self.focus_pages.append(page)
        for page in self.focus_pages:
            form.addRow(page)
        self._show_focus_page(0)
        self.focus_dilate = _slider(0.0, 30.0, 0.0, 0.5, 1, "dilation of the focus region in Å")
        form.addRow("Dilation (Å)", self.focus_dilate)
        self.focus_soft = _slider(0.0, 30.0, 6.0, 0.5, 1, "soft edge of the focus mask in Å")
        form.addRow("Soft edge (Å)", self.focus_soft)
        row = QHBoxLayout()
        self.focus_btn = QPushButton("Make focus mask")
        self.clear_focus_btn = QPushButton("Clear")
        row.addWidget(self.focus_btn)
        row.addWidget(self.clear_focus_btn)
        form.addRow(row)
        self.focus_label = QLabel("no focus mask")
        self.focus_label.setWordWrap(True)
        form.addRow(self.focus_label)
        root.addWidget(box)

        self.warning_label = QLabel()
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet("QLabel { color: #ff8c1a; font-weight: bold; }")
        self.warning_label.setVisible(False)
        root.addWidget(self.warning_label)

        box = QGroupBox("Files")
        grid = QVBoxLayout(box)
        row = QHBoxLayout()
        self.save_btn = QPushButton("Save mask…")
        self.save_focus_btn = QPushButton("Save focus mask…")
        row.addWidget(self.save_btn)
        row.addWidget(self.save_focus_btn)
        grid.addLayout(row)
        row = QHBoxLayout()
        self.load_btn = QPushButton("Load mask…")
        self.load_focus_btn = QPushButton("Load focus mask…")
        row.addWidget(self.load_btn)
        row.addWidget(self.load_focus_btn)
        grid.addLayout(row)
        root.addWidget(box)
        root.addStretch(1)
        root.parentWidget().setMinimumWidth(root.parentWidget().sizeHint().width())

        # signals
        for w in (self.threshold, self.dilate, self.soft):
            w.valueChanged.connect(self._solvent_changed)
        self.lowpass.valueChanged.connect(self._solvent_changed)
        self.lowpass_on.toggled.connect(self.lowpass.setEnabled)
        self.lowpass_on.toggled.connect(self._solvent_changed)
        self.map_combo.currentIndexChanged.connect(self._solvent_changed)
        self.create_btn.clicked.connect(self.create_full_mask)
        self.focus_source.currentIndexChanged.connect(self._show_focus_page)
        self.focus_source.currentIndexChanged.connect(self._focus_changed)
        for w in (self.radius, self.focus_threshold, self.focus_dilate, self.focus_soft):
            w.valueChanged.connect(self._focus_changed)
        self.focus_map_combo.currentIndexChanged.connect(self._focus_changed)
        self.labels_combo.currentIndexChanged.connect(self._labels_changed)
        self.place_btn.toggled.connect(self._set_placing)
        self.new_paint_btn.clicked.connect(self.new_paint_layer)
        self.focus_btn.clicked.connect(self.request_focus)
        self.clear_focus_btn.clicked.connect(self.clear_focus)
        self.save_btn.clicked.connect(lambda: self._save_dialog("solvent"))
        self.save_focus_btn.clicked.connect(lambda: self._save_dialog("focus"))
        self.load_btn.clicked.connect(lambda: self._load_dialog("solvent"))
        self.load_focus_btn.clicked.connect(lambda: self._load_dialog("focus"))

    def _show_focus_page(self, index: int) -> None:
        for i, page in enumerate(self.focus_pages):
            page.setVisible(i == index)

    # ------------------------------------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """True while a mask is being computed or waiting to be (debounce included)."""
        return (self._solvent_runner.busy or self._focus_runner.busy or self._solvent_timer.isActive()
                or self._focus_timer.isActive())

    def solvent_params(self) -> mc.SolventParams:
        low = float(self.lowpass.value()) if self.lowpass_on.isChecked() else None
        return mc.SolventParams(float(self.threshold.value()), float(self.dilate.value()),
                                float(self.soft.value()), low)

    def layer(self, kind: str) -> Image | None:
        """The dock's "solvent", "focus" or "outside" layer, if it is (still) in the viewer."""
        layer = self._own.get(kind)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _set_layer(self, kind: str, name: str, data: np.ndarray, like: Any, meta: dict) -> Image:
        def add() -> Image:
            return set_mask_layer(self.viewer, name, data, like, kind, meta, layer=self.layer(kind))

        self._own[kind] = self._keep_active(add)
        return self._own[kind]

    def _remove_layer(self, kind: str) -> None:
        layer = self.layer(kind)
        self._own[kind] = None
        if layer is not None:
            self.viewer.layers.remove(layer)

    def _mask_grid(self, kind: str) -> int:
        """The voxel size of the ``kind`` layer's data over the map's (1, or the binning of a big box's preview)."""
        layer = self.layer(kind)
        return 1 if layer is None else int(layer.metadata.get("grid", 1))

    def _mask_data(self, kind: str) -> np.ndarray | None:
        layer = self.layer(kind)
        return None if layer is None else np.asarray(layer.data)

    @property
    def solvent_mask(self) -> np.ndarray | None:
        """The solvent layer's data: full size, or a big box's preview on its binned grid (``metadata["grid"]``)."""
        return self._mask_data("solvent")

    @property
    def focus_mask(self) -> np.ndarray | None:
        return self._mask_data("focus")

    # ------------------------------------------------------------------------------------------------ solvent
    def _solvent_changed(self, *_: Any) -> None:
        self._solvent_timer.start()

    def update_preview(self) -> None:
        """Request a preview of the solvent mask with the current settings (binned for big boxes)."""
        self._request_solvent(preview=True)

    def create_full_mask(self) -> None:
        """Compute the solvent mask at full size (what Save writes)."""
        self._solvent_timer.stop()
        self._request_solvent(preview=False)

    def _request_solvent(self, preview: bool) -> None:
        layer = self.map_combo.current_layer()
        if layer is None:
            self.solvent_label.setText("pick a map layer (a 3D image)")
            return
        p = self.solvent_params()
        f = mc.preview_factor(layer.data.shape[0]) if preview else 1
        self.solvent_label.setText(f"computing a {f}× binned preview…" if f > 1 else "computing…")
        self._solvent_runner.request((layer.name, p, preview), layer.data, voxel_size(layer), p, preview)

    @staticmethod
    def _compute_solvent(vol: Any, apix: float, p: mc.SolventParams, preview: bool) -> mc.SolventMask:
        return mc.solvent_mask(np.asarray(vol), apix, p, preview)

    def _on_solvent_done(self, tag: Any, result: mc.SolventMask) -> None:
        name, p, _ = tag
        if name not in self.viewer.layers:
            return
        like = self.viewer.layers[name]
        geometry = mc.binned_geometry(like.scale, like.translate, result.grid) if result.grid > 1 else like
        meta = {"preview": result.preview, "binning": result.factor, "grid": result.grid, "source_map": name,
                "threshold": p.threshold, "dilate_A": p.dilate_A, "soft_A": p.soft_A, "lowpass_A": p.lowpass_A}
        self._set_layer("solvent", SOLVENT_LAYER, result.mask, geometry, meta)
        what = (f"preview on a {result.factor}× binned map; Create for full size" if result.preview
                else "full size")
        self.solvent_label.setText(f"mask covers {100 * result.fraction:.1f} % of the box ({what})")
        self._update_overlap()
        self.solventChanged.emit()
        if not result.preview:
            pending, self._after_full = self._after_full, []
            for action in pending:
                action()

    def _on_solvent_failed(self, tag: Any, exc: BaseException) -> None:
        self._after_full = []
        self.solvent_label.setText(f"could not make the mask: {exc}")

    # ------------------------------------------------------------------------------------------------ focus
    def _focus_changed(self, *_: Any) -> None:
        self._focus_timer.start()

    def _request_focus_if_shown(self) -> None:
        # live updates once a focus mask exists, a sphere was placed or labels painted; else "Make focus mask"
        src = self.focus_source.currentIndex()
        if self.focus_mask is not None or (src == 0 and self._sphere_center) or (src == 1 and self._painted):
            self.request_focus()

    def request_focus(self) -> None:
        """Compute the focus mask from the selected source."""
        self._focus_timer.stop()
        like = self.map_combo.current_layer()
        src = self.focus_source.currentIndex()
        dil, soft = float(self.focus_dilate.value()), float(self.focus_soft.value())
        if src == 0:
            if like is None:
                self.focus_label.setText("pick a map layer first")
                return
            if self._sphere_center is None:
                self.focus_label.setText("press 'Place by clicking' and click on the map")
                return
            args = ("sphere", like.data.shape[0], self._sphere_center, float(self.radius.value()),
                    voxel_size(like), soft)
        elif src == 1:
            labels = self.labels_combo.current_layer()
            if labels is None:
                self.focus_label.setText("add a paint layer ('New paint layer') and paint the region")
                return
            like = like if like is not None and like.data.shape == labels.data.shape else labels
            # a copy taken here, on the main thread: painting may change the labels while the worker runs
            args = ("labels", np.asarray(labels.data) > 0, voxel_size(labels), dil, soft)
        else:
            other = self.focus_map_combo.current_layer()
            if other is None:
                self.focus_label.setText("pick the second map")
                return
            like = other if like is None else like
            args = ("map", other.data, voxel_size(other), float(self.focus_threshold.value()), dil, soft)
        self.focus_label.setText("computing…")
        self._focus_runner.request(like.name, *args)

    @staticmethod
    def _compute_focus(kind: str, *args: Any) -> np.ndarray:
        if kind == "sphere":
            n, center, radius, apix, soft = args
            return mc.focus_sphere(n, center, radius, apix, soft)
        if kind == "labels":
            binary, apix, dil, soft = args
            return mc.focus_from_labels(binary, apix, dil, soft)
        vol, apix, thr, dil, soft = args
        return mc.focus_from_map(np.asarray(vol), apix, thr, dil, soft)

    def _on_focus_done(self, like_name: str, mask: np.ndarray) -> None:
        if like_name not in self.viewer.layers:
            return
        like = self.viewer.layers[like_name]
        self._set_layer("focus", FOCUS_LAYER, mask, like, {"source": FOCUS_SOURCES[self.focus_source.currentIndex()]})
        self.focus_label.setText(f"focus mask covers {100 * mask_volume_fraction(mask):.1f} % of the box")
        self._update_overlap()
        self.focusChanged.emit()

    def _on_focus_failed(self, tag: Any, exc: BaseException) -> None:
        self.focus_label.setText(f"could not make the focus mask: {exc}")

    def clear_focus(self) -> None:
        self._focus_runner.cancel()
        self._remove_layer("focus")
        self._remove_layer("outside")
        self._sphere_center = None
        self.center_label.setText("centre: not placed")
        self.focus_label.setText("no focus mask")
        self._update_overlap()

    # sphere placement ---------------------------------------------------------------------------------
    def _set_placing(self, on: bool) -> None:
        cbs = self.viewer.mouse_drag_callbacks
        if on and self._on_mouse not in cbs:
            cbs.append(self._on_mouse)
            if self.focus_source.currentIndex() != 0:
                self.focus_source.setCurrentIndex(0)
        elif not on and self._on_mouse in cbs:
            cbs.remove(self._on_mouse)
        self._placing = on

    def _on_mouse(self, viewer: Any, event: Any):  # noqa: ANN201 - a napari drag callback (generator)
        """Place the sphere where the user clicks (a press and release without dragging; drags still pan)."""
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self.place_sphere_from_event(event)

    def place_sphere_from_event(self, event: Any) -> None:
        layer = self.map_combo.current_layer()
        if layer is None:
            return
        voxel = self._event_voxel(layer, event)
        if voxel is not None:
            self.place_sphere_voxel(voxel)

    def place_sphere_world(self, position_world: Any) -> None:
        """Centre the focus sphere at a world position (Å; the map layer's scale converts it to voxels)."""
        layer = self.map_combo.current_layer()
        if layer is None:
            return
        self.place_sphere_voxel(tuple(float(c) for c in layer.world_to_data(position_world)))

    def place_sphere_voxel(self, zyx: Any) -> None:
        self._sphere_center = tuple(float(c) for c in zyx)
        z, y, x = self._sphere_center
        self.center_label.setText(f"centre (z, y, x): {z:.1f}, {y:.1f}, {x:.1f} voxels")
        if self.focus_source.currentIndex() != 0:
            self.focus_source.setCurrentIndex(0)
        self.request_focus()

    def _event_voxel(self, layer: Image, event: Any) -> tuple[float, float, float] | None:
        if self.viewer.dims.ndisplay == 3 and getattr(event, "view_direction", None) is not None:
            start, end = layer.get_ray_intersections(event.position, event.view_direction, [0, 1, 2], world=True)
            if start is None or end is None:
                return None
            # the densest voxel along the ray: where the user sees the surface
            from scipy.ndimage import map_coordinates

            npts = int(2 * max(layer.data.shape)) + 2
            pts = np.linspace(np.asarray(start, float), np.asarray(end, float), npts)
            vals = map_coordinates(np.asarray(layer.data, np.float32), pts.T, order=1, mode="nearest")
            return tuple(float(c) for c in pts[int(np.argmax(vals))])
        return tuple(float(c) for c in layer.world_to_data(event.position))

    # painting -----------------------------------------------------------------------------------------
    def new_paint_layer(self) -> None:
        """Add an empty labels layer with the map's shape and scale, ready to paint the focus region."""
        like = self.map_combo.current_layer()
        if like is None:
            show_info("Pick a map layer first")
            return
        name = PAINT_LAYER
        layer = self.viewer.add_labels(np.zeros(like.data.shape, dtype=np.uint8), name=name, scale=like.scale,
                                       translate=like.translate, opacity=0.6)
        layer.brush_size = max(3, like.data.shape[0] // 10)
        layer.mode = "paint"
        self.labels_combo.set_layer(layer.name)
        self.focus_source.setCurrentIndex(1)

    def _labels_changed(self, *_: Any) -> None:
        layer = self.labels_combo.current_layer()
        if self._paint_layer is not None and self._paint_layer is not layer:
            self._paint_layer.events.paint.disconnect(self._on_paint)
            self._paint_layer.events.data.disconnect(self._on_paint)
        self._paint_layer = layer
        if layer is not None:
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._on_paint)

    def _on_paint(self, event: Any = None) -> None:
        if self.focus_source.currentIndex() == 1:
            self._painted = True
            self._focus_timer.start()  # debounced: strokes come in bursts

    # ------------------------------------------------------------------------------------------------ overlap
    def _update_overlap(self) -> None:
        focus, solvent = self.focus_mask, self.solvent_mask
        grid = self._mask_grid("solvent")
        on_preview = focus is not None and solvent is not None and grid > 1
        if on_preview:
            # a big box's preview: compare on its grid (the focus mask binned the same way, once per focus mask)
            focus = self._binned_focus.get(focus, grid)
        warnings = []
        self.outside_fraction = None
        outside = None
        if focus is not None and solvent is None:
            warnings.append("Only a focus mask is set: refinement and classification expect a solvent mask "
                            "too (threshold the consensus map above).")
        elif focus is not None and solvent is not None:
            if focus.shape != solvent.shape:
                warnings.append(f"The focus mask {focus.shape} and the solvent mask {solvent.shape} differ in box.")
            elif float(focus.max()) >= MASK_LEVEL:
                overlap = focus_outside_solvent(focus, solvent)  # the rule the classification jobs warn by
                frac = self.outside_fraction = overlap.fraction
                if overlap.reaches_outside:
                    outside = mc.outside_region(focus, solvent)
                    warnings.append(f"{100 * frac:.1f} % of the focus mask lies outside the solvent mask "
                                    f"(drawn in red as '{OUTSIDE_LAYER}'"
                                    + ("; on the preview's grid: Create for full size)." if on_preview else ")."))
        if outside is not None:
            where = self.layer("solvent") if on_preview else self.layer("focus")  # the grid it was computed on
            layer = self._set_layer("outside", OUTSIDE_LAYER, outside, where,
                                    {"fraction": self.outside_fraction, "grid": grid if on_preview else 1})
            layer.visible = True
        else:
            self._remove_layer("outside")
        if self.outside_fraction is not None:
            self.focus_label.setText(self.focus_label.text().split(";")[0]
                                     + f"; {100 * self.outside_fraction:.1f} % outside the solvent mask")
        self.warning_text = " ".join(warnings)
        self.warning_label.setText("⚠ " + self.warning_text if warnings else "")
        self.warning_label.setVisible(bool(warnings))
        self.overlapChanged.emit()

    def _on_layer_removed(self, event: Any) -> None:
        kinds = [k for k in ("solvent", "focus") if self._own[k] is not None and self._own[k] == event.value]
        if kinds:
            self._own[kinds[0]] = None
            try:
                if kinds[0] == "solvent":
                    self.solvent_label.setText("no mask (the layer was removed)")
                self._update_overlap()
            except RuntimeError:  # the dock is being deleted with the viewer
                pass

    def _keep_active(self, fn: Any) -> Any:
        """Run ``fn`` (which may add a layer) without taking the user's active layer away."""
        active = self.viewer.layers.selection.active
        out = fn()
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return out

    # ------------------------------------------------------------------------------------------------ files
    def _save_dialog(self, kind: str) -> None:
        layer = self.layer(kind)
        if layer is None:
            show_error(f"There is no {kind} mask to save yet")
            return
        path, _ = QFileDialog.getSaveFileName(self, f"Save the {kind} mask as MRC", f"{kind}_mask.mrc",
                                              "MRC maps (*.mrc *.map)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.save_mask(path, kind)

    def confirm_overwrite(self, path: Path) -> bool:
        """Ask before replacing a file (tests replace this method)."""
        answer = QMessageBox.question(self, "Replace file?", f"{path} exists. Replace it?",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def save_mask(self, path: str | Path, kind: str = "solvent") -> bool:
        """Write the dock's ``kind`` ("solvent" or "focus") mask as MRC with its voxel size; asks before replacing.

        A binned preview is first recomputed at full size (the save happens when that is done).
        Returns True when written now, False when cancelled or deferred.
        """
        from cryolive.io import write_map

        path = Path(path)
        layer = self.layer(kind)
        if layer is None:
            show_error(f"There is no {kind} mask to save yet")
            return False
        if layer.metadata.get("preview"):
            self._after_full.append(lambda: self.save_mask(path, kind))
            self.create_full_mask()
            return False
        overwrite = False
        if path.exists():
            if not self.confirm_overwrite(path):
                return False
            overwrite = True
        try:
            write_map(path, np.asarray(layer.data, np.float32), voxel_size(layer), overwrite=overwrite)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"Could not save {path}: {exc}")
            return False
        show_info(f"Saved the {kind} mask to {path} ({voxel_size(layer):.4g} Å/voxel)")
        return True

    def _load_dialog(self, kind: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a mask", "", "MRC maps (*.mrc *.map)")
        if path:
            self.load_mask(path, kind)

    def load_mask(self, path: str | Path, kind: str = "solvent") -> Image | None:
        """Read an MRC mask into the "mask" (``kind="solvent"``) or "focus mask" layer."""
        from cryolive.io import read_map

        try:
            data, apix = read_map(path)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"Could not read {path}: {exc}")
            return None
        if data.min() < -1e-3 or data.max() > 1 + 1e-3:
            show_error(f"{path}: not a mask (values {data.min():.3g} .. {data.max():.3g}, expected 0 .. 1)")
            return None
        like = self.map_combo.current_layer()
        translate = like.translate if like is not None and like.data.shape == data.shape else (0.0,) * 3
        name = SOLVENT_LAYER if kind == "solvent" else FOCUS_LAYER
        (self._solvent_runner if kind == "solvent" else self._focus_runner).cancel()
        layer = self._set_layer(kind, name, np.clip(data, 0, 1), ((apix,) * 3, translate), {"source": str(path)})
        label = self.solvent_label if kind == "solvent" else self.focus_label
        label.setText(f"loaded {Path(path).name}: covers {100 * mask_volume_fraction(data):.1f} % of the box")
        self._update_overlap()
        return layer

    # ------------------------------------------------------------------------------------------------ cleanup
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self._set_placing(False)
        self._solvent_runner.cancel()
        self._focus_runner.cancel()
        super().closeEvent(event)
