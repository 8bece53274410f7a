"""The 2D classification dock: run 2D classification, watch the class gallery grow, pick classes, export.

Threading (as in the Refinement and Classification docks)
----------------------------------------------------------
``class2d_job`` (a generator yielding one :class:`~cryolive.class2d.Class2DIteration` per iteration) runs inside
:func:`_class2d_stream` in a napari ``GeneratorWorker``. The worker thread only computes and yields; on the main
thread :meth:`Class2DWidget._on_yielded` keeps only the newest iteration and schedules one render, which hands it
to the Qt-free run model (:class:`~cryolive.plugin.class2d_model.Class2DRunModel`) and then updates the
``class averages`` layer. Stop, Pause/Resume and failure reports come from :class:`JobDockMixin`.

The dock is a view of the model: the gallery draws the model's averages, sizes, resolutions and decisions, and a
click on a thumbnail only calls ``model.toggle``; the model's ``changed`` signal redraws what changed.

Layers: ``class averages`` (K, n, n), replaced every iteration (class k is plane k - 1), and on request
``class N particles``: up to :data:`MAX_SHOWN_PARTICLES` of class N's particle images.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QPoint, Qt, Signal
from qtpy.QtGui import QColor, QFont, QImage, QPainter, QPixmap
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from cryolive.backend import device_label
from cryolive.class2d import Class2DParams
from cryolive.params import param_spec
from cryolive.plugin._common import replace_image_data, robust_limits
from cryolive.plugin._job_dock import JobDockMixin, JobHandle, job_stream
from cryolive.plugin._param_form import ParamForm
from cryolive.plugin.class2d_model import REJECTED, SELECTED, Class2DRunModel

AVERAGES_LAYER = "class averages"
PARTICLES_LAYER = "class particles"
#: at most this many particle images of a class go into the viewer
MAX_SHOWN_PARTICLES = 200
#: the parameters shown at once; the others (every spec'd field of Class2DParams) are under "More parameters"
MAIN_FIELDS = ("k", "max_iter", "diameter_A")
THUMB_PX = 100  # thumbnail side (screen pixels)
CELL_PX = THUMB_PX + 36  # a thumbnail with its frame, margins and room for its caption on one line
FRAME_COLORS = {SELECTED: "#2ecc40", REJECTED: "#ff4136"}
UNDECIDED_FRAME = "#5a6270"


# ---------------------------------------------------------------------------------------------------- worker side
def _class2d_stream(particles: str, out: str, params: Class2DParams, handle: JobHandle) -> Generator:
    """Yield the job's iterations until it ends or ``handle.stop`` is set; return ``(state, value)`` (see
    :func:`~cryolive.plugin._job_dock.job_stream`). Runs in the worker thread."""
    from cryolive.jobs.class2d import class2d_job

    return (yield from job_stream(handle, lambda: class2d_job(particles, out, params)))


# ---------------------------------------------------------------------------------------------------- gallery
def display_bytes(image: np.ndarray) -> np.ndarray:
    """An image scaled to uint8 for display: the 1st to 99.5th percentile onto 0..255 (a flat image is grey)."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(img, [1.0, 99.5]))
    if not hi > lo:
        return np.full(img.shape, 128, np.uint8)
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def thumbnail(image: np.ndarray, size: int, dim: bool = False, tag: str = "") -> QPixmap:
    """A ``size`` x ``size`` grey pixmap of ``image`` (smoothly scaled); ``dim`` darkens it (a rejected class);
    ``tag`` (the class number) is written in its top left corner."""
    u8 = display_bytes(image)
    if dim:
        u8 = (u8 * 0.3).astype(np.uint8)
    u8 = np.ascontiguousarray(u8)
    h, w = u8.shape
    qimg = QImage(u8.data, w, h, w, QImage.Format.Format_Grayscale8).copy()  # copy: own the pixels
    pix = QPixmap.fromImage(qimg).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                         Qt.TransformationMode.SmoothTransformation)
    if tag:
        _draw_tag(pix, tag)
    return pix


def _draw_tag(pix: QPixmap, tag: str) -> None:
    """White ``tag`` on a dark box in the top left corner of ``pix``."""
    painter = QPainter(pix)
    font = QFont(painter.font())
    font.setPixelSize(12)
    font.setBold(True)
    painter.setFont(font)
    rect = painter.fontMetrics().boundingRect(tag).adjusted(-3, -1, 3, 1)
    rect.moveTopLeft(QPoint(0, 0))
    painter.fillRect(rect, QColor(0, 0, 0, 170))
    painter.setPen(QColor("white"))
    painter.drawText(rect, int(Qt.AlignmentFlag.AlignCenter), tag)
    painter.end()


def caption(size: int, resolution_A: float) -> str:
    """The text under a thumbnail: its particles and resolution ("80 particles · 11 Å")."""
    res = f"{resolution_A:.0f}\u00a0Å" if np.isfinite(resolution_A) else "–\u00a0Å"
    noun = "particle" if size == 1 else "particles"
    return f"{size}\u00a0{noun} · {res}"


class ClassThumb(QFrame):
    """One class in the gallery: its average with a frame in the colour of its decision, and a caption.

    A click emits ``clicked(class index)``; a double click ``doubleClicked(class index)``.
    """

    clicked = Signal(int)
    doubleClicked = Signal(int)

    def __init__(self, class_index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.class_index = class_index
        self.setObjectName("class2dThumb")
        self.setFixedWidth(CELL_PX)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(3, 3, 3, 3)
        lay.setSpacing(2)
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setStyleSheet(f"QLabel {{ border: 3px solid {UNDECIDED_FRAME}; background: black; }}")
        self.image.setFixedSize(THUMB_PX + 6, THUMB_PX + 6)
        lay.addWidget(self.image, 0, Qt.AlignmentFlag.AlignHCenter)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.label.setStyleSheet("QLabel { font-size: 11px; }")
        lay.addWidget(self.label)
        self.decision = 0
        self._average: np.ndarray | None = None

    def show_class(self, average: np.ndarray, size: int, resolution_A: float, decision: int) -> None:
        """Draw class ``class_index`` with this average, size and resolution, framed by ``decision``."""
        self._average = average
        self.label.setText(caption(size, resolution_A))
        self.setToolTip(f"class {self.class_index + 1}: {size} particles, {resolution_A:.1f} Å; click to select "
                        "or reject, double-click to show its particles")
        self.decision = None  # force a redraw
        self.set_decision(decision)

    def set_decision(self, decision: int) -> None:
        """Frame green (selected), red with a darkened image (rejected) or grey (undecided)."""
        if decision == self.decision:
            return
        self.decision = decision
        color = FRAME_COLORS.get(decision, UNDECIDED_FRAME)
        self.image.setStyleSheet(f"QLabel {{ border: 3px solid {color}; background: black; }}")
        if self._average is not None:
            self.image.setPixmap(thumbnail(self._average, THUMB_PX, dim=decision == REJECTED,
                                           tag=str(self.class_index + 1)))

    def text(self) -> str:
        return self.label.text()

    def mousePressEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.class_index)
        super().mousePressEvent(event)

    def mouseDoubleClickEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        if event.button() == Qt.MouseButton.LeftButton:
            self.doubleClicked.emit(self.class_index)
        super().mouseDoubleClickEvent(event)


class ClassGallery(QScrollArea):
    """The class averages as a grid of :class:`ClassThumb`, largest class first; as many columns as fit."""

    classClicked = Signal(int)
    classDoubleClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumHeight(CELL_PX + 40)
        self._content = QWidget()
        self._grid = QGridLayout(self._content)
        self._grid.setContentsMargins(4, 4, 4, 4)
        self._grid.setSpacing(4)
        self._grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.setWidget(self._content)
        self._by_class: list[ClassThumb] = []
        self.thumbs: list[ClassThumb] = []  # in gallery order (largest class first)
        self._columns = 0
        self.placeholder = QLabel("class averages appear here after the first iteration")
        self.placeholder.setWordWrap(True)
        self._grid.addWidget(self.placeholder, 0, 0)

    def thumb(self, k: int) -> ClassThumb:
        """Class ``k``'s (0-based) thumbnail."""
        return self._by_class[k]

    def clear(self) -> None:
        for t in self._by_class:
            self._grid.removeWidget(t)
            t.deleteLater()
        self._by_class, self.thumbs, self._columns = [], [], 0
        self.placeholder.show()

    def render(self, model: Class2DRunModel) -> None:
        """Draw the model's classes (averages, sizes, resolutions, decisions) in size order."""
        if model.averages is None:
            self.clear()
            return
        if len(self._by_class) != model.k:
            self.clear()
            self.placeholder.hide()
            self._by_class = [self._new_thumb(k) for k in range(model.k)]
        for k, t in enumerate(self._by_class):
            t.show_class(model.averages[k], int(model.sizes[k]), float(model.resolution_A[k]), model.decision(k))
        self.thumbs = [self._by_class[k] for k in model.gallery_order()]
        self._place(force=True)

    def show_decisions(self, model: Class2DRunModel) -> None:
        """Re-frame every thumbnail after decisions changed (images and order stay)."""
        for k, t in enumerate(self._by_class):
            t.set_decision(model.decision(k))

    def _new_thumb(self, k: int) -> ClassThumb:
        t = ClassThumb(k, self._content)
        t.clicked.connect(self.classClicked)
        t.doubleClicked.connect(self.classDoubleClicked)
        return t

    def _place(self, force: bool = False) -> None:
        """Lay the thumbnails out in rows of as many as fit the visible width."""
        columns = max(1, (self.viewport().width() - 8) // (CELL_PX + 4))
        if not force and columns == self._columns:
            return
        self._columns = columns
        for t in self.thumbs:
            self._grid.removeWidget(t)
        for i, t in enumerate(self.thumbs):
            self._grid.addWidget(t, i // columns, i % columns)
            t.show()

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if self.thumbs:
            self._place()


# ---------------------------------------------------------------------------------------------------- the dock
class Class2DWidget(JobDockMixin, QWidget):
    """Particles and parameters; Start, Pause/Resume, Stop; a live gallery of class averages to select and
    reject classes from; export of the selected classes' particles; a class's particles in the viewer."""

    iterationShown = Signal(int)  # a new iteration is on screen (gallery, layer, status)
    runFinished = Signal(str)  # "finished", "stopped" or "failed"
    JOB_GLOBS = ("job_class2d_*",)
    PLOTS_DOCK = ""  # no plots dock: the gallery is the plot

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._init_run_state(napari_viewer, None)
        self.model = Class2DRunModel()
        self.current_class: int | None = None
        self.last_export: Path | None = None
        self._max_iter = 0  # of the running job
        self._stack_cache: tuple[Path, Any] | None = None
        self._build()
        self.model.changed.connect(self._on_model_changed)

    # ------------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)
        form = self._add_particles_field(root, "particles.star or particles.cs")
        self._add_out_field(form, "parent folder: the job writes a new job_class2d_<nnn> folder inside it")

        self.main_form = ParamForm(Class2DParams, MAIN_FIELDS)
        root.addWidget(self.main_form.native)
        more = QCollapsible("More parameters")
        self.more_form = ParamForm(Class2DParams, [n for n in param_spec(Class2DParams) if n not in MAIN_FIELDS])
        more.addWidget(self.more_form.native)
        root.addWidget(more)
        self._base_params = Class2DParams()

        self._add_run_controls(root)
        self.start_btn.setText("Run")
        root.addLayout(self._selection_row())
        self.gallery = ClassGallery()
        root.addWidget(self.gallery, 1)
        root.addLayout(self._output_row())
        self.export_label = QLabel("")
        self.export_label.setWordWrap(True)
        self.export_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        root.addWidget(self.export_label)

        log_box = QCollapsible("Log")
        self.log = QTextEdit()
        self.log.setReadOnly(True)
        self.log.setMinimumHeight(90)
        self.log.setPlaceholderText("per-iteration log (also in the job folder's log.txt)")
        log_box.addWidget(self.log)
        root.addWidget(log_box)
        self.setMinimumWidth(3 * (CELL_PX + 4) + 40)

        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.gallery.classClicked.connect(self._on_class_clicked)
        self.gallery.classDoubleClicked.connect(self.show_particles)
        self._enable_results()

    def _selection_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.select_all_btn = QPushButton("Select all")
        self.reject_all_btn = QPushButton("Reject all")
        self.invert_btn = QPushButton("Invert")
        self.invert_btn.setToolTip("selected classes become rejected, the others selected")
        self.select_all_btn.clicked.connect(self.model_select_all)
        self.reject_all_btn.clicked.connect(self.model_reject_all)
        self.invert_btn.clicked.connect(self.model_invert)
        for b in (self.select_all_btn, self.reject_all_btn, self.invert_btn):
            row.addWidget(b)
        return row

    def _output_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.show_btn = QPushButton("Show particles")
        self.show_btn.setToolTip(f"add up to {MAX_SHOWN_PARTICLES} particle images of the last clicked class as a "
                                 "layer (or double-click a class)")
        self.export_btn = QPushButton("Export selected…")
        self.export_btn.setToolTip("write the selected classes' particles as a RELION STAR file (an input of the "
                                   "Refinement and Classification docks)")
        self.show_btn.clicked.connect(lambda: self.show_particles())
        self.export_btn.clicked.connect(self._export_dialog)
        row.addWidget(self.show_btn)
        row.addWidget(self.export_btn)
        return row

    # model actions from the buttons (kept as methods so tests and scripts can call them)
    def model_select_all(self) -> None:
        self.model.select_all()

    def model_reject_all(self) -> None:
        self.model.reject_all()

    def model_invert(self) -> None:
        self.model.invert()

    # ------------------------------------------------------------------------------------------------ params
    def params(self) -> Class2DParams:
        """The parameters the form shows (fields it does not show: those last given to :meth:`set_params`)."""
        return self._form_params()

    def set_params(self, p: Class2DParams) -> None:
        self._set_form_params(p)

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Check the inputs and start the job in a worker thread."""
        run = self._chosen_run()
        if run is None:
            return
        particles, out, params = run
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            show_error(f"{out}: {exc}")
            return
        self._remember_job_folders(out)
        self._input_layers = {}
        self._reset_display()
        self.current_class = None
        self._stack_cache = None
        self.export_label.setText("")
        self.job_label.setText("")
        self.model.start(particles, params.k)
        self._max_iter = params.max_iter
        self.state = "running"
        self.log.clear()
        self._log(f"2D classification of {particles} into {params.k} classes on {device_label()}")
        worker = self._new_worker(_class2d_stream, particles, str(out), params, total=params.max_iter,
                                  desc="cryolive 2D classes")
        worker.start()

    # ------------------------------------------------------------------------------------------------ results
    def _receive(self, it: Any) -> None:
        """Nothing: the model takes an iteration when it is drawn (:meth:`_render`)."""

    def _render(self) -> None:
        """Show the newest iteration: model and gallery, then the averages layer, then the status line."""
        it = self._take_pending()
        if it is None:
            return
        self._steps = [lambda: self.model.update(it), self._show_averages, lambda: self._report(it)]
        self._next_step()

    def _on_model_changed(self, what: str) -> None:
        if what == "decisions":
            self.gallery.show_decisions(self.model)
        else:
            self.gallery.render(self.model)
        if self.job_dir is None and self.model.job_dir is not None:
            self.job_dir = self.model.job_dir
            self.job_label.setText(f"job folder: {self.job_dir}")
        self._enable_results()

    def _enable_results(self) -> None:
        has_classes = self.model.averages is not None
        for b in (self.select_all_btn, self.reject_all_btn, self.invert_btn):
            b.setEnabled(has_classes)
        n_sel = len(self.model.selected_classes())
        self.export_btn.setEnabled(self.model.finished and n_sel > 0)
        self.export_btn.setText(f"Export {n_sel} selected…" if n_sel else "Export selected…")
        k = self.current_class
        self.show_btn.setEnabled(self.model.finished and k is not None)
        self.show_btn.setText(f"Show particles of class {k + 1}" if k is not None else "Show particles")

    def _report(self, it: Any) -> None:
        elapsed = time.perf_counter() - self._t_start
        finite = it.resolution_A[np.isfinite(it.resolution_A)]
        best = f"{finite.min():.1f} Å" if finite.size else "–"
        self._log(f"iteration {it.iteration} ({it.stage}, {it.n_particles} particles): "
                  f"{100 * it.changed_fraction:.1f} % changed class, best class {best}; {it.seconds:.1f} s")
        self.status_label.setText(f"iteration {it.iteration} of ≤ {self._max_iter}: "
                                  f"{100 * it.changed_fraction:.1f} % changed class, best class {best} "
                                  f"({elapsed:.0f} s so far)")
        self._shown(it)

    def _on_returned(self, value: Any) -> None:
        state, payload, elapsed = self._run_returned(value)
        if state == "finished":
            self.model.finish(payload, self.job_dir)
            self._show_averages()
            self._log(f"finished in {elapsed:.1f} s after {payload.iterations} iterations; outputs in {self.job_dir}")
            self.status_label.setText(f"finished: {self.model.k} classes of {len(payload.assignments)} particles "
                                      f"({elapsed:.0f} s); click classes to select (green) or reject (red)")
            show_info("2D classification finished: select the good classes and export them")
        elif state == "stopped":
            self._log(f"stopped after iteration {payload}; the job folder says 'stopped' (no particles.star, so "
                      "nothing to export)")
            self.status_label.setText(f"stopped after iteration {payload}")
        else:
            self._report_failure(payload, "2D classification")
        self.state = state
        self._enable_results()

    # ------------------------------------------------------------------------------------------------ layers
    def _scale2(self) -> tuple[float, float]:
        apix = self.model.pixel_size or 1.0
        return (apix, apix)

    def _set_stack_layer(self, key: str, name: str, data: np.ndarray, metadata: dict) -> Image:
        """Show ``data`` (a stack of images) on this dock's layer ``key``: replaced in place, else added."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        limits = robust_limits(data)
        scale = (1.0, *self._scale2())
        layer = self.own_layer(key)
        if layer is not None and layer.data.shape == data.shape:
            replace_image_data(layer, data, limits)
            if layer.name != name:
                layer.name = name
        else:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(data, name=name, scale=scale, contrast_limits=limits)
            self._own[key] = layer
        layer.metadata.update({"pixel_size": scale[-1], "job_dir": str(self.job_dir) if self.job_dir else None,
                               **metadata})
        return layer

    def _show_averages(self) -> None:
        if self.model.averages is not None:
            self._set_stack_layer(AVERAGES_LAYER, AVERAGES_LAYER, self.model.averages,
                                  {"iteration": self.model.iteration, "class_sizes": self.model.sizes.tolist()})

    def averages_layer(self) -> Image | None:
        return self.own_layer(AVERAGES_LAYER)

    def _on_class_clicked(self, k: int) -> None:
        self.current_class = k
        self.model.toggle(k)

    def _particles(self) -> Any:
        """The job's classified particles (read once per run)."""
        from cryolive.io import read_particles

        star = self.model.classified_star()
        if self._stack_cache is None or self._stack_cache[0] != star:
            self._stack_cache = (star, read_particles(star))
        return self._stack_cache[1]

    def show_particles(self, k: int | None = None) -> Image | None:
        """Add up to :data:`MAX_SHOWN_PARTICLES` images of class ``k`` (0-based; default: the last clicked) as
        the layer "class N particles"; returns it (None, with a message, when there is nothing to show)."""
        k = self.current_class if k is None else int(k)
        if k is None or not self.model.finished:
            show_error("Click a class first (its particles are known when the job has finished)")
            return None
        self.current_class = k
        self._enable_results()
        idx = self.model.particles_of_class(k)
        if len(idx) == 0:
            show_error(f"class {k + 1} holds no particles")
            return None
        try:
            images = self._particles().images(idx[:MAX_SHOWN_PARTICLES])
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"Could not read the particles of class {k + 1}: {exc}")
            return None
        layer = self._set_stack_layer(PARTICLES_LAYER, f"class {k + 1} particles", images,
                                      {"class": k + 1, "particle_indices": idx[:MAX_SHOWN_PARTICLES].tolist()})
        self._log(f"showing {len(images)} of the {len(idx)} particles of class {k + 1}")
        return layer

    # ------------------------------------------------------------------------------------------------ export
    def _export_dialog(self) -> None:
        try:
            default = str(self.model.default_export_path())
        except RuntimeError:
            default = ""
        path, _ = QFileDialog.getSaveFileName(self, "Export the selected classes' particles", default,
                                              "RELION STAR (*.star)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.export_selected(path)

    def _confirm_overwrite(self, path: Path) -> bool:
        answer = QMessageBox.question(self, "Replace file?", f"{path} exists. Replace it?",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def export_selected(self, path: str | Path | None = None) -> Path | None:
        """Write the selected classes' particles to ``path`` (default: ``<job>/particles_selected.star``); an
        existing file is replaced only after a yes to a question. Returns the path (None when nothing was
        written; the reason is shown)."""
        try:
            dest = Path(path) if path else self.model.default_export_path()
            overwrite = dest.exists()
            if overwrite and not self._confirm_overwrite(dest):
                return None
            dest, n = self.model.export_star(dest, overwrite=overwrite)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"Export failed: {exc}")
            return None
        classes = ", ".join(str(k + 1) for k in self.model.selected_classes())
        self.last_export = dest
        self.export_label.setText(f"exported {n} particles (classes {classes}) to {dest}")
        self._log(f"exported {n} particles of class(es) {classes} to {dest}")
        show_info(f"Wrote {n} particles to {dest.name}")
        return dest
