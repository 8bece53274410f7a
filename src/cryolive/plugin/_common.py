"""Pieces the cryolive docks share: layer pickers, mask layer styling, a latest-only background runner, small
widgets (symmetry fields, the log, colour swatches) and in-place image-layer updates.

Everything here runs on the Qt main thread except the functions handed to :class:`LatestOnlyRunner`, which run
in a napari ``thread_worker`` and must not touch Qt or layers.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.qt.threading import create_worker
from napari.utils.colormaps import Colormap
from qtpy.QtCore import QObject, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QScrollArea,
    QTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

# metadata key set on every layer a cryolive dock makes as a mask: "solvent", "focus", "outside", "refinement"
MASK_KEY = "cryolive_mask"
#: the point groups the symmetry fields offer (any other can be typed)
SYMMETRIES = ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "D2", "D3", "D4", "D5", "D6", "D7", "T", "O", "I1", "I2")

# 2D: transparent outside, a bright line where the soft edge crosses 0.5 and a faint fill inside.
# 3D: the layers render as an iso-surface at 0.5, coloured by the colormap there (opaque).
_EDGE_CONTROLS = [0.0, 0.3, 0.45, 0.55, 0.7, 1.0]


def _edge_colormap(name: str, rgb: tuple[float, float, float], fill: float = 0.22) -> Colormap:
    r, g, b = rgb
    colors = [[r, g, b, 0.0], [r, g, b, 0.0], [r, g, b, 1.0], [r, g, b, 1.0], [r, g, b, fill], [r, g, b, fill]]
    return Colormap(colors=colors, controls=_EDGE_CONTROLS, name=name)


def _fill_colormap(name: str, rgb: tuple[float, float, float], alpha: float = 1.0) -> Colormap:
    r, g, b = rgb
    return Colormap(colors=[[r, g, b, 0.0], [r, g, b, 0.0], [r, g, b, alpha], [r, g, b, alpha]],
                    controls=[0.0, 0.49, 0.5, 1.0], name=name)


_COLORS = {"solvent": (1.0, 0.78, 0.1), "focus": (0.2, 0.85, 1.0), "outside": (1.0, 0.15, 0.15),
           "refinement": (1.0, 0.78, 0.1)}
# per kind: (2D colormap, 3D colormap, 2D opacity, 3D opacity)
MASK_STYLES: dict[str, tuple[Colormap, Colormap, float, float]] = {
    kind: (_fill_colormap(f"cryolive {kind} fill", rgb, 0.5) if kind == "outside"
           else _edge_colormap(f"cryolive {kind} outline", rgb),
           _fill_colormap(f"cryolive {kind} surface", rgb),
           0.8, 0.7 if kind == "outside" else 0.3)
    for kind, rgb in _COLORS.items()
}


def style_mask_layer(layer: Image, ndisplay: int) -> None:
    """Outline with a faint fill in 2D, a translucent iso-surface at 0.5 in 3D."""
    kind = layer.metadata.get(MASK_KEY)
    if kind not in MASK_STYLES:
        return
    cmap2, cmap3, op2, op3 = MASK_STYLES[kind]
    layer.colormap = cmap3 if ndisplay == 3 else cmap2
    layer.opacity = op3 if ndisplay == 3 else op2


_STYLED_VIEWERS: weakref.WeakSet = weakref.WeakSet()


def _restyle_all(viewer: Any) -> None:
    for layer in viewer.layers:
        if isinstance(layer, Image) and MASK_KEY in layer.metadata:
            style_mask_layer(layer, viewer.dims.ndisplay)


def follow_ndisplay(viewer: Any) -> None:
    """Restyle cryolive's mask layers whenever the viewer switches between 2D and 3D (connected once)."""
    if viewer in _STYLED_VIEWERS:
        return
    _STYLED_VIEWERS.add(viewer)
    ref = weakref.ref(viewer)

    def on_ndisplay(event: Any = None) -> None:
        v = ref()
        if v is not None:
            _restyle_all(v)

    viewer.dims.events.ndisplay.connect(on_ndisplay)


def set_mask_layer(viewer: Any, name: str, data: np.ndarray, like: Layer | tuple, kind: str,
                   metadata: dict | None = None, layer: Image | None = None) -> Image:
    """Show ``data`` (a [0, 1] volume) as a mask layer over ``like`` (same scale and translate); returns it.

    ``like`` is a layer or a ``(scale, translate)`` pair. ``layer`` is the dock's own layer from before: it is
    updated in place (data, scale and translate; the shape may change, e.g. from a binned preview to the full-size
    mask) while it is still in the viewer; otherwise a new layer called ``name`` is added (napari adds a suffix if
    a layer of the user's already has that name — it is never touched). ``data`` is shown as it is when it is
    float32 and C-contiguous (no copy). In 2D it is drawn as an outline at 0.5 with a faint fill; in 3D as an
    iso-surface at 0.5.
    """
    data = np.ascontiguousarray(data, dtype=np.float32)
    scale, translate = (like.scale, like.translate) if isinstance(like, Layer) else like
    scale, translate = tuple(scale), tuple(translate)
    meta = {MASK_KEY: kind, "pixel_size": float(scale[-1]), **(metadata or {})}
    follow_ndisplay(viewer)
    if layer is not None and layer in viewer.layers and layer.data.ndim == data.ndim:
        # data, scale and translate each make napari slice the layer again: the new geometry goes with whichever
        # data is smaller, so a big volume is sliced (in 3D: sent to the GPU) once (binned preview <-> full size)
        moved = not (np.allclose(layer.scale, scale) and np.allclose(layer.translate, translate))
        geometry_first = moved and data.size >= layer.data.size
        if geometry_first:
            layer.scale, layer.translate = scale, translate
        layer.data = data
        if moved and not geometry_first:
            layer.scale, layer.translate = scale, translate
        if tuple(layer.contrast_limits) != (0.0, 1.0):
            layer.contrast_limits = (0.0, 1.0)
        layer.metadata.clear()  # what the layer was before (e.g. a binned preview) does not carry over
        layer.metadata.update(meta)
        return layer
    if layer is not None and layer in viewer.layers:
        viewer.layers.remove(layer)
    # the region outside is drawn additively: in 3D it coincides with the focus surface (no z-fighting)
    blending = "additive" if kind == "outside" else "translucent"
    layer = viewer.add_image(
        data, name=name, scale=scale, translate=translate, contrast_limits=(0.0, 1.0), blending=blending,
        rendering="iso", iso_threshold=0.5, interpolation2d="linear", interpolation3d="linear", metadata=meta)
    style_mask_layer(layer, viewer.dims.ndisplay)
    return layer


def voxel_size(layer: Layer) -> float:
    """A map layer's voxel size in Å: its scale (the reader sets it from the MRC header)."""
    return float(layer.scale[-1])


def is_map_layer(layer: Layer) -> bool:
    """A 3D cubic image that is not one of our masks."""
    return (isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb and MASK_KEY not in layer.metadata
            and len(set(layer.data.shape)) == 1)


def is_mask_candidate(layer: Layer) -> bool:
    """Any 3D cubic image (masks included)."""
    return isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb and len(set(layer.data.shape)) == 1


def is_labels_3d(layer: Layer) -> bool:
    return isinstance(layer, Labels) and layer.ndim == 3


def follow_layer_list(widget: QWidget, viewer: Any, refresh: Callable[..., Any]) -> None:
    """Call ``refresh`` whenever the viewer's layer list changes, until ``widget`` is destroyed; then disconnect it
    from the list's events and from the layers' name events (which ``refresh`` may have connected)."""
    ev = viewer.layers.events
    emitters = (ev.inserted, ev.removed, ev.moved, ev.reordered)
    for emitter in emitters:
        emitter.connect(refresh)

    def disconnect(*_: Any) -> None:
        for emitter in emitters:
            emitter.disconnect(refresh)
        for layer in viewer.layers:
            layer.events.name.disconnect(refresh)

    widget.destroyed.connect(disconnect)


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers that pass ``accept``; follows additions, removals and renames.

    ``none_text`` adds a first entry meaning "no layer" (``current_layer()`` returns None for it). A new layer
    for which ``auto_select`` is true becomes the choice when nothing is chosen yet (default: ``accept``).
    """

    def __init__(self, viewer: Any, accept: Callable[[Layer], bool], none_text: str | None = None,
                 auto_select: Callable[[Layer], bool] | None = None, parent: Any = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._accept = accept
        self._auto = auto_select or accept
        self._none = none_text
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        follow_layer_list(self, viewer, self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        try:
            current = before = self.currentText()
        except RuntimeError:  # the C++ widget is gone (viewer closing)
            return
        names = []
        for layer in self._viewer.layers:
            layer.events.name.disconnect(self.refresh)
            layer.events.name.connect(self.refresh)
            if self._accept(layer):
                names.append(layer.name)
        if event is None and self._none is not None and not current:
            # first fill: prefer a layer auto_select likes, else "none"
            current = next((n for n in names if self._auto(self._viewer.layers[n])), self._none)
        if event is not None and getattr(event, "type", "") == "inserted":
            new = event.value
            if self._accept(new) and self._auto(new) and (not current or current == self._none):
                current = new.name  # pick up the first suitable layer that appears
        self.blockSignals(True)
        self.clear()
        if self._none is not None:
            self.addItem(self._none)
        self.addItems(names)
        idx = self.findText(current) if current else -1
        self.setCurrentIndex(idx if idx >= 0 else (0 if self.count() else -1))
        self.blockSignals(False)
        if self.currentText() != before:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self) -> Layer | None:
        name = self.currentText()
        if not name or name == self._none or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]

    def set_layer(self, name: str) -> None:
        idx = self.findText(name)
        if idx >= 0:
            self.setCurrentIndex(idx)


class _Failure:
    """A background call that raised: carried back as a value so napari's worker does not re-raise it."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # reported on the main thread by LatestOnlyRunner
        return _Failure(exc)


class LatestOnlyRunner(QObject):
    """Run ``fn(*args)`` in a napari thread worker, one call at a time, delivering only the newest request.

    ``request(*args)`` while a call is running queues the arguments (replacing older queued ones); when the
    running call ends, its result is dropped if a newer request exists and the newest request starts. So moving
    a slider quickly runs at most two computations and never shows a stale mask. ``done(tag, result)`` and
    ``failed(tag, exception)`` fire on the main thread; ``idle`` when nothing is running or queued.
    """

    done = Signal(object, object)
    failed = Signal(object, object)
    idle = Signal()

    def __init__(self, fn: Callable[..., Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._fn = fn
        self._seq = 0
        self._pending: tuple[int, Any, tuple] | None = None
        self._worker: Any = None
        self._running_seq = -1
        self._running_tag: Any = None

    @property
    def busy(self) -> bool:
        return self._worker is not None or self._pending is not None

    def request(self, tag: Any, *args: Any) -> None:
        self._seq += 1
        self._pending = (self._seq, tag, args)
        if self._worker is None:
            self._start_next()

    def cancel(self) -> None:
        """Forget queued requests and drop the result of the running one."""
        self._seq += 1
        self._pending = None

    def _start_next(self) -> None:
        if self._pending is None:
            self.idle.emit()
            return
        seq, tag, args = self._pending
        self._pending = None
        self._running_seq, self._running_tag = seq, tag
        worker = create_worker(_guarded, self._fn, *args, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _on_returned(self, result: Any) -> None:
        if self._running_seq != self._seq:
            return  # a newer request superseded this one: stale, drop it
        if isinstance(result, _Failure):
            self.failed.emit(self._running_tag, result.exc)
        else:
            self.done.emit(self._running_tag, result)

    def _on_finished(self) -> None:
        self._worker = None
        self._start_next()


def layer_map_input(layer: Image) -> Any:
    """What a job is given for a map layer, without a temporary file: the MRC file the layer was opened from (its
    ``source``, while that file exists), else the layer's data in memory as a :class:`cryolive.io.MapInput`
    (a float32 copy, the layer's voxel size and name; the job checks it as a file and writes it into its own
    folder)."""
    from cryolive.io import MapInput

    src = layer.metadata.get("source")
    if src and layer.metadata.get("cryolive_kind") == "map" and Path(src).is_file():
        return Path(src)
    return MapInput(np.array(layer.data, dtype=np.float32), voxel_size(layer), layer.name)


def job_map_input(layer: Image | None) -> Any:
    """:func:`layer_map_input` for a layer chosen as a job's map or mask input (None: none chosen); a binned
    preview from the Masks dock is refused (ValueError)."""
    if layer is None:
        return None
    if layer.metadata.get("preview"):
        raise ValueError(f"'{layer.name}' is a binned preview: press 'Create mask (full size)' in the Masks dock")
    return layer_map_input(layer)


#: :func:`robust_limits` reads at most this many voxels (an evenly strided sample of bigger maps, e.g. 64³)
LIMITS_SAMPLE = 1 << 18


def robust_limits(vol: np.ndarray) -> tuple[float, float]:
    """Contrast limits for a map: the 1st and 99.9th percentiles (a sensible display for density).

    Maps of more than :data:`LIMITS_SAMPLE` voxels are sampled with an even stride (a view): a quarter of a million
    voxels give percentiles as good for a display, and no copy of the whole map is made (``np.percentile`` sorts a
    copy of what it is given: 64 MiB and half a second for a 256³ map)."""
    flat = np.asarray(vol).reshape(-1)  # a view for a contiguous map
    step = max(1, -(-flat.size // LIMITS_SAMPLE))
    lo, hi = (float(v) for v in np.percentile(flat[::step], [1.0, 99.9]))
    if not np.isfinite(lo) or not np.isfinite(hi):
        return 0.0, 1.0
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a frameless scroll area and return the vertical layout inside it (docks stay usable when
    napari gives them little height)."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    outer.addWidget(scroll)
    content = QWidget()
    scroll.setWidget(content)
    return QVBoxLayout(content)


def with_browse(edit: QLineEdit, slot: Callable[[], Any]) -> QWidget:
    """``edit`` with a "…" button beside it that calls ``slot`` (a file or folder dialog)."""
    w = QWidget()
    h = QHBoxLayout(w)
    h.setContentsMargins(0, 0, 0, 0)
    h.addWidget(edit, 1)
    b = QToolButton()
    b.setText("…")
    b.clicked.connect(slot)
    h.addWidget(b)
    return w


def symmetry_combo(items: Sequence[str] = SYMMETRIES, current: str = "C1", tooltip: str = "") -> QComboBox:
    """An editable combo box of point groups (``items``), showing ``current``; any other group can be typed."""
    combo = QComboBox()
    combo.setEditable(True)
    combo.addItems(list(items))
    combo.setCurrentText(current)
    if tooltip:
        combo.setToolTip(tooltip)
    return combo


def symmetry_text(combo: QComboBox, default: str = "C1") -> str:
    """The point group a symmetry field shows, upper-case (``default`` when it is empty)."""
    return combo.currentText().strip().upper() or default


def log_view(min_height: int, placeholder: str = "per-iteration log (also in the job folder's log.txt)") -> QTextEdit:
    """The read-only text area a dock logs its run in (at least ``min_height`` px high)."""
    log = QTextEdit()
    log.setReadOnly(True)
    log.setLineWrapMode(QTextEdit.LineWrapMode.WidgetWidth)
    log.setMinimumHeight(min_height)
    log.setPlaceholderText(placeholder)
    return log


def color_swatch(hex_color: str, size: int = 12) -> QIcon:
    """A small square icon in ``hex_color`` ("#rrggbb"), ``size`` px."""
    pix = QPixmap(size, size)
    pix.fill(QColor(hex_color))
    return QIcon(pix)


def replace_image_data(layer: Image, data: np.ndarray, limits: tuple[float, float]) -> None:
    """Show ``data`` on ``layer`` in place (the layer keeps the user's display settings): the contrast range grows
    to take in ``limits`` (never shrinks), and the contrast limits become ``limits``."""
    layer.data = data
    lo, hi = layer.contrast_limits_range
    if limits[0] < lo or limits[1] > hi:
        layer.contrast_limits_range = (min(lo, limits[0]), max(hi, limits[1]))
    layer.contrast_limits = limits


class LayerList(QListWidget):
    """A multi-select list of the viewer's layers that pass ``accept`` (follows additions, removals, renames)."""

    def __init__(self, viewer: Any, accept: Callable[[Layer], bool], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._accept = accept
        self.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        follow_layer_list(self, viewer, self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        try:
            chosen = set(self.selected_names())
        except RuntimeError:  # the C++ widget is gone (viewer closing)
            return
        self.blockSignals(True)
        self.clear()
        for layer in self._viewer.layers:
            layer.events.name.disconnect(self.refresh)
            layer.events.name.connect(self.refresh)
            if self._accept(layer):
                item = QListWidgetItem(layer.name)
                self.addItem(item)
                item.setSelected(layer.name in chosen)
        self.blockSignals(False)
        self.itemSelectionChanged.emit()

    def selected_names(self) -> list[str]:
        """The chosen layers' names, in the list's order."""
        return [self.item(i).text() for i in range(self.count()) if self.item(i).isSelected()]

    def select(self, names: list[str]) -> None:
        """Choose exactly these layers."""
        for i in range(self.count()):
            self.item(i).setSelected(self.item(i).text() in names)

    def selected_layers(self) -> list[Layer]:
        return [self._viewer.layers[n] for n in self.selected_names() if n in self._viewer.layers]
