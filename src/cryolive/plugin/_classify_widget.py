"""The Classification dock: 3D classification and heterogeneous refinement, watched live in the viewer.

Threading (as in the Refinement dock, :mod:`cryolive.plugin._refine_widget`)
-----------------------------------------------------------------------------
``classify_job`` (a generator yielding one :class:`ClassIteration` per iteration) runs inside
:func:`_classify_stream` in a napari ``GeneratorWorker``. The worker thread only computes and yields; everything
that touches Qt or layers happens on the main thread:

* ``yielded`` → :meth:`ClassifyWidget._on_yielded` records the iteration's class sizes (every iteration gets its
  bar) and schedules one render with ``QTimer.singleShot``; an iteration arriving while a render is pending
  replaces it, so the GUI never works through a backlog.
* Stop sets a ``threading.Event``; the stream closes the job generator after the current iteration (the job folder
  then says "stopped"). Pause/Resume use the worker's own pause. Errors are returned by the stream and shown with
  ``show_error`` on the main thread.

Layers: one image layer per class, ``class 1`` … ``class K`` (created once, then ``layer.data`` replaced each
iteration), and for a comparison a ``class A − class B`` difference layer. Layer inputs (masks, consensus,
starting maps) are written as MRC files into a fresh ``classify_inputs_*`` folder inside the output folder, because
the job takes paths.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter
from napari.layers import Image, Layer
from napari.utils.colormaps import Colormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTextEdit,
    QWidget,
)
from superqt import QCollapsible

from cryolive.backend import device_label
from cryolive.classification.classify import ClassifyParams
from cryolive.plugin._common import (
    MASK_KEY,
    LayerCombo,
    follow_layer_list,
    is_map_layer,
    is_mask_candidate,
    robust_limits,
    scrolling_layout,
    with_browse,
    write_layer_copy,
)
from cryolive.plugin._job_dock import JobDockMixin, JobHandle, job_stream
from cryolive.plugin._plots import _BG, _FG, _Canvas, _style_axes, titled_plots
from cryolive.plugin._refine_widget import SYMMETRIES

MODES = (("3D classification (fixed poses)", "fixed"),
         ("3D classification (local pose search)", "local"),
         ("heterogeneous refinement", "hetero"))
# class colours, shared by the plots and the class layers' colormaps (matplotlib's tab10)
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf")
_DEFAULTS = ClassifyParams()


def class_layer_name(k: int) -> str:
    """The layer showing class ``k`` (1-based)."""
    return f"class {k}"


def diff_layer_name(a: int, b: int) -> str:
    """The difference layer of a comparison (1-based class numbers)."""
    return f"class {a} − class {b}"


def class_color(k: int) -> str:
    """Class ``k``'s (1-based) colour in the plots and its layer."""
    return CLASS_COLORS[(k - 1) % len(CLASS_COLORS)]


def _class_colormap(k: int) -> Colormap:
    rgb = [int(class_color(k)[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    return Colormap(colors=[[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]], name=f"cryolive class {k}")


_DIFF_COLORMAP = Colormap(colors=[[0.2, 0.45, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.35, 0.2, 1.0]],
                          controls=[0.0, 0.5, 1.0], name="cryolive difference")


# ---------------------------------------------------------------------------------------------------- worker side
def _classify_stream(particles: str, out: str, params: ClassifyParams, inputs: dict, handle: JobHandle) -> Generator:
    """Yield the job's iterations until it ends or ``handle.stop`` is set; return ``(state, value)``.

    Runs in the worker thread. ``inputs``: ``starts``, ``solvent_mask``, ``focus_mask``, ``consensus`` (paths or
    None). ``state`` is "finished" (value: the ClassifyResult), "stopped" (value: the last iteration number) or
    "failed" (value: the exception).
    """
    from cryolive.jobs.classify import classify_job

    return (yield from job_stream(handle, lambda: classify_job(particles, out, params, **inputs)))


# ---------------------------------------------------------------------------------------------------- plots
class ClassSizesCanvas(FigureCanvasQTAgg):
    """Class sizes per iteration as stacked bars (one bar per iteration, one colour per class)."""

    def __init__(self) -> None:
        fig = Figure(figsize=(4.0, 2.6), dpi=90, facecolor=_BG)
        fig.subplots_adjust(left=0.13, right=0.8, bottom=0.17, top=0.97)
        super().__init__(fig)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(140)
        self.ax = fig.add_subplot(111)
        self.history: list[np.ndarray] = []  # one (K,) array of fractions per iteration drawn
        self.clear_plot()

    def clear_plot(self) -> None:
        self.history = []
        self._redraw()

    def show_sizes(self, history: list[np.ndarray]) -> None:
        """Draw every iteration's sizes (``history[i]`` = iteration i + 1)."""
        self.history = [np.asarray(h, dtype=float) for h in history]
        self._redraw()

    def _redraw(self) -> None:
        ax = self.ax
        ax.clear()
        _style_axes(ax)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("class size", fontsize=8)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylim(0, 1)
        n = len(self.history)
        if n:
            sizes = np.stack(self.history)  # (iterations, K)
            x = np.arange(1, n + 1)
            bottom = np.zeros(n)
            for c in range(sizes.shape[1]):
                ax.bar(x, sizes[:, c], bottom=bottom, width=0.8, color=class_color(c + 1), label=f"class {c + 1}")
                bottom += sizes[:, c]
            ax.set_xlim(0.4, max(n, 5) + 0.6)
            ax.xaxis.set_major_locator(_int_locator())
            leg = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                            borderaxespad=0, reverse=True)
            for t in leg.get_texts():
                t.set_color(_FG)
        else:
            ax.set_xlim(0.4, 5.6)
        self.draw_idle()


def _int_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, nbins=8)


class ClassFSCCanvas(_Canvas):
    """Each class's FSC (plain half-map comparison) with the 0.5 line it is read at."""

    def __init__(self) -> None:
        super().__init__(2.6, {"left": 0.12, "right": 0.8, "bottom": 0.17, "top": 0.97})
        ax = self.ax
        ax.axhline(0.5, color=_FG, lw=0.8, ls="--")
        ax.text(0.99, 0.53, "0.5", color=_FG, fontsize=7, ha="right", transform=ax.get_yaxis_transform())
        ax.set_ylim(-0.1, 1.05)
        ax.set_xlim(0, 0.125)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{1 / x:.1f}" if x > 0 else "∞"))
        ax.set_xlabel("resolution (Å)", fontsize=8)
        ax.set_ylabel("class FSC", fontsize=8)
        self.lines: list[Any] = []
        self._legend: Any = None
        self.draw()

    def set_classes(self, k: int, apix: float | None = None) -> None:
        """``k`` empty curves (a full redraw when their number or the axis changes)."""
        ax = self.ax
        if apix and abs(ax.get_xlim()[1] - 0.5 / apix) > 1e-9:
            ax.set_xlim(0, 0.5 / apix)
            self._background = None
        if len(self.lines) != k:
            for line in self.lines:
                line.remove()
            self.lines = [ax.plot([], [], "-", color=class_color(c + 1), lw=1.5, label=f"class {c + 1}",
                                  animated=True)[0] for c in range(k)]
            self._animated = list(self.lines)
            if self._legend is not None:
                self._legend.remove()
            self._legend = ax.legend(handles=self.lines, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                                     frameon=False, borderaxespad=0)
            for t in self._legend.get_texts():
                t.set_color(_FG)
            self._background = None
        for line in self.lines:
            line.set_data([], [])
        if self._background is None:
            self.draw()
        else:
            self._refresh()

    def show_fsc(self, curves: np.ndarray, apix: float) -> None:
        """Curves ``(K, shells)``; shell i is at frequency ``i / (2 (shells − 1) apix)``."""
        curves = np.asarray(curves, dtype=float)
        if len(self.lines) != len(curves) or abs(self.ax.get_xlim()[1] - 0.5 / apix) > 1e-9:
            self.set_classes(len(curves), apix)
        shells = curves.shape[1]
        freq = np.arange(shells) / (2 * (shells - 1) * apix)
        for line, curve in zip(self.lines, curves, strict=True):
            line.set_data(freq[1:], curve[1:])
        self._refresh()


class ClassPlotsWidget(QWidget):
    """Class sizes over iterations and the classes' FSC curves (a bottom dock beside the Classification dock)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sizes = ClassSizesCanvas()
        self.fsc = ClassFSCCanvas()
        self.sizes_title = QLabel("class sizes: no classification yet")
        self.fsc_title = QLabel("class FSC")
        titled_plots(self, [(self.sizes_title, self.sizes), (self.fsc_title, self.fsc)])

    def clear(self) -> None:
        self.sizes.clear_plot()
        self.fsc.set_classes(0)
        self.sizes_title.setText("class sizes: waiting for the first iteration")
        self.fsc_title.setText("class FSC")

    def show_iteration(self, it: Any, history: list[np.ndarray]) -> None:
        self.sizes.show_sizes(history)
        self.fsc.show_fsc(it.class_fsc, it.pixel_size)
        self.sizes_title.setText(f"class sizes, iterations 1–{len(history)}")
        res = ", ".join(f"{c + 1}: {r:.1f} Å" for c, r in enumerate(it.class_resolution_A))
        self.fsc_title.setText(f"class FSC, iteration {it.iteration} (at 0.5: {res})")


# ---------------------------------------------------------------------------------------------------- inputs
class LayerList(QListWidget):
    """A multi-select list of the viewer's layers that pass ``accept`` (follows additions, removals, renames)."""

    def __init__(self, viewer: Any, accept: Any, parent: QWidget | None = None) -> None:
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


# ---------------------------------------------------------------------------------------------------- the dock
class ClassifyWidget(JobDockMixin, QWidget):
    """Particles, masks, mode and K; Start, Pause/Resume, Stop; live class maps, sizes, FSCs; export and compare."""

    iterationShown = Signal(int)  # a new iteration is on screen (class layers, plots, status)
    runFinished = Signal(str)  # "finished", "stopped" or "failed"
    JOB_GLOBS = ("job_classify_*", "job_hetero_*")
    PLOTS_DOCK = "Classification plots"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._init_run_state(napari_viewer, ClassPlotsWidget())  # self._own: "class k" and "diff"
        self._warned: set[str] = set()
        self._compare: tuple[int, int] | None = None
        self._saved_view: dict | None = None  # visibility and grid before a comparison
        self.n_classes = 0
        self.size_history: list[np.ndarray] = []  # every iteration's class sizes (one bar each)
        self.layer_updates: dict[int, int] = {}  # class (1-based) -> times its layer's data was set this run
        self.class_counts: np.ndarray | None = None  # particles per class (1-based index - 1) at the end
        self.warnings: list[str] = []
        self.last_export: Path | None = None
        self._base_params = _DEFAULTS
        self._build()
        QTimer.singleShot(0, self._ensure_plots_dock)

    # ------------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        v = self.viewer
        root = scrolling_layout(self)
        self.device_label = QLabel(f"Device: {device_label()}")
        root.addWidget(self.device_label)

        form = QFormLayout()
        root.addLayout(form)
        self.particles_edit = QLineEdit()
        self.particles_edit.setPlaceholderText("particles.star or particles.cs (with poses)")
        form.addRow("Particles", with_browse(self.particles_edit, self._browse_particles))
        self.mode_combo = QComboBox()
        self.mode_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.mode_combo.setMinimumContentsLength(14)
        for text, mode in MODES:
            self.mode_combo.addItem(text, mode)
        self.mode_combo.setToolTip("fixed poses: the particles' poses (from a refinement) are kept; local search: "
                                   "a few degrees around them per class; heterogeneous refinement: a pose search "
                                   "per class from K starting maps")
        form.addRow("Mode", self.mode_combo)
        self.k_spin = QSpinBox(minimum=1, maximum=50, value=_DEFAULTS.n_classes)
        form.addRow("Classes (K)", self.k_spin)
        self.starts_list = LayerList(v, is_map_layer)
        self.starts_list.setToolTip("heterogeneous refinement: click the K starting maps (one class each)")
        self.starts_list.setMaximumHeight(90)
        self.starts_label = QLabel("Starting maps")
        form.addRow(self.starts_label, self.starts_list)
        self.solvent_combo = LayerCombo(v, is_mask_candidate, none_text="(none: automatic)",
                                        auto_select=lambda layer: layer.metadata.get(MASK_KEY) == "solvent")
        self.solvent_combo.setToolTip("a solvent mask around the whole particle (Masks dock), or none for one "
                                      "made from the consensus map")
        form.addRow("Solvent mask", self.solvent_combo)
        self.focus_combo = LayerCombo(v, is_mask_candidate, none_text="(none)",
                                      auto_select=lambda layer: layer.metadata.get(MASK_KEY) == "focus")
        self.focus_combo.setToolTip("classify only the region inside this mask (the consensus explains the rest)")
        form.addRow("Focus mask", self.focus_combo)
        self.consensus_combo = LayerCombo(v, is_map_layer, none_text="(none: reconstructed)",
                                          auto_select=lambda layer: False)
        self.consensus_combo.setToolTip("the consensus map (else reconstructed from all particles at their poses)")
        form.addRow("Consensus map", self.consensus_combo)
        self.out_edit = QLineEdit(str(Path.cwd() / "jobs"))
        self.out_edit.setToolTip("parent folder: the job writes a new job_classify_<nnn> (job_hetero_<nnn>) there")
        form.addRow("Output folder", with_browse(self.out_edit, self._browse_out))

        adv = QCollapsible("Advanced")
        adv_w = QWidget()
        af = QFormLayout(adv_w)
        self.max_iter = QSpinBox(minimum=1, maximum=500, value=_DEFAULTS.max_iter)
        af.addRow("Max iterations", self.max_iter)
        self.online_iters = QSpinBox(minimum=0, maximum=100, value=_DEFAULTS.online_em_iters)
        self.online_iters.setToolTip("first iterations on random minibatches (online EM)")
        af.addRow("Online-EM iterations", self.online_iters)
        self.similarity = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2,
                                         value=_DEFAULTS.class_similarity)
        self.similarity.setToolTip("initial class similarity (particles shared between classes), annealed to 0")
        af.addRow("Class similarity", self.similarity)
        self.anneal_iters = QSpinBox(minimum=0, maximum=100, value=_DEFAULTS.anneal_iters)
        af.addRow("Annealing iterations", self.anneal_iters)
        self.max_res = QDoubleSpinBox(minimum=0.0, maximum=100.0, decimals=1, suffix=" Å")
        self.max_res.setSpecialValueText("none")
        self.max_res.setValue(_DEFAULTS.max_resolution_A or 0.0)
        af.addRow("Max resolution", self.max_res)
        self.class_box = QSpinBox(minimum=0, maximum=1024)
        self.class_box.setSpecialValueText("auto")
        self.class_box.setValue(_DEFAULTS.class_box or 0)
        af.addRow("Class box", self.class_box)
        self.sym = QComboBox()
        self.sym.setEditable(True)
        self.sym.addItems(SYMMETRIES)
        self.sym.setCurrentText(_DEFAULTS.symmetry)
        af.addRow("Symmetry", self.sym)
        self.batch_size = QSpinBox(minimum=1, maximum=65536, value=_DEFAULTS.batch_size)
        af.addRow("Batch size", self.batch_size)
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=_DEFAULTS.seed)
        af.addRow("Seed", self.seed)
        adv.addWidget(adv_w)
        root.addWidget(adv)

        self._add_run_controls(root)
        self.warnings_box = QTextEdit()
        self.warnings_box.setReadOnly(True)
        self.warnings_box.setPlaceholderText("warnings (none)")
        self.warnings_box.setMaximumHeight(70)
        self.warnings_box.setStyleSheet("QTextEdit { color: #ff8c1a; }")
        root.addWidget(self.warnings_box)

        classes_title = QLabel("<b>Classes</b> (tick to export; filled when the job finishes)")
        classes_title.setWordWrap(True)
        root.addWidget(classes_title)
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(110)
        root.addWidget(self.class_list)
        self.export_btn = QPushButton("Export selected…")
        self.export_btn.setToolTip("write the ticked classes' particles to a new STAR file")
        self.export_btn.setEnabled(False)
        root.addWidget(self.export_btn)
        cmp = QHBoxLayout()
        self.cmp_a = QComboBox()
        self.cmp_b = QComboBox()
        cmp.addWidget(QLabel("Compare"))
        cmp.addWidget(self.cmp_a, 1)
        cmp.addWidget(QLabel("−"))
        cmp.addWidget(self.cmp_b, 1)
        root.addLayout(cmp)
        cmp = QHBoxLayout()
        self.compare_btn = QPushButton("Compare two classes")
        self.compare_btn.setToolTip("the two classes side by side (grid view) and their difference map A − B")
        self.end_compare_btn = QPushButton("End comparison")
        self.end_compare_btn.setToolTip("leave the comparison (restores the grid setting and visibility)")
        self.compare_btn.setEnabled(False)
        self.end_compare_btn.setEnabled(False)
        cmp.addWidget(self.compare_btn)
        cmp.addWidget(self.end_compare_btn)
        root.addLayout(cmp)
        self.log = QTextEdit()
        self.log.setReadOnly(True)
        self.log.setMinimumHeight(80)
        self.log.setPlaceholderText("per-iteration log (also in the job folder's log.txt)")
        root.addWidget(self.log, 1)
        # wide enough for the form without a horizontal scroll bar (napari sizes docks from the scroll area)
        self.setMinimumWidth(min(root.parentWidget().minimumSizeHint().width() + 24, 480))

        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.export_btn.clicked.connect(self._export_dialog)
        self.compare_btn.clicked.connect(lambda: self.compare(self.cmp_a.currentIndex() + 1,
                                                              self.cmp_b.currentIndex() + 1))
        self.end_compare_btn.clicked.connect(self.end_compare)
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.starts_list.itemSelectionChanged.connect(self._mode_changed)
        self._mode_changed()

    @property
    def mode(self) -> str:
        return self.mode_combo.currentData()

    def set_mode(self, mode: str) -> None:
        """Choose "fixed", "local" or "hetero"."""
        self.mode_combo.setCurrentIndex([m for _, m in MODES].index(mode))

    def _mode_changed(self, *_: Any) -> None:
        hetero = self.mode == "hetero"
        self.starts_list.setVisible(hetero)
        self.starts_label.setVisible(hetero)
        self.consensus_combo.setEnabled(not hetero)
        self.k_spin.setEnabled(not hetero)
        if hetero:
            n = len(self.starts_list.selected_names())
            self.k_spin.setValue(max(n, 1))
            self.k_spin.setToolTip(f"heterogeneous refinement: K = the number of starting maps picked ({n})")
        else:
            self.k_spin.setToolTip("number of classes")

    # ------------------------------------------------------------------------------------------------ parameters
    def params(self) -> ClassifyParams:
        """The ClassifyParams the dock's fields describe (other fields: the defaults, or as given to set_params)."""
        return dataclasses.replace(
            self._base_params, n_classes=int(self.k_spin.value()), mode=self.mode, max_iter=int(self.max_iter.value()),
            online_em_iters=int(self.online_iters.value()), class_similarity=float(self.similarity.value()),
            anneal_iters=int(self.anneal_iters.value()), max_resolution_A=float(self.max_res.value()) or None,
            class_box=int(self.class_box.value()) or None, symmetry=self.sym.currentText().strip().upper() or "C1",
            batch_size=int(self.batch_size.value()), seed=int(self.seed.value()))

    def set_params(self, p: ClassifyParams) -> None:
        """Fill the fields from a ClassifyParams (fields the dock does not show are kept for the next run)."""
        self._base_params = p
        self.set_mode(p.mode)
        self.k_spin.setValue(p.n_classes)
        self.max_iter.setValue(p.max_iter)
        self.online_iters.setValue(p.online_em_iters)
        self.similarity.setValue(p.class_similarity)
        self.anneal_iters.setValue(p.anneal_iters)
        self.max_res.setValue(p.max_resolution_A or 0.0)
        self.class_box.setValue(p.class_box or 0)
        self.sym.setCurrentText(p.symmetry)
        self.batch_size.setValue(p.batch_size)
        self.seed.setValue(p.seed)

    # ------------------------------------------------------------------------------------------------ control
    def _layer_input(self, layer: Layer | None, folder: Path, stem: str) -> str | None:
        if layer is None:
            return None
        if layer.metadata.get("preview"):
            raise ValueError(f"'{layer.name}' is a binned preview: press 'Create mask (full size)' in the Masks dock")
        path = write_layer_copy(layer, folder, stem)
        self._input_layers[str(path)] = layer.name
        return str(path)

    def _inputs(self, out: Path) -> dict:
        """Write the chosen layers to MRC files in a fresh folder inside ``out``; the job's path arguments."""
        hetero = self.mode == "hetero"
        starts = self.starts_list.selected_layers() if hetero else []
        if hetero and len(starts) < 2:
            raise ValueError("Heterogeneous refinement needs at least two starting maps: pick them in the list")
        layers = {"solvent_mask": self.solvent_combo.current_layer(), "focus_mask": self.focus_combo.current_layer(),
                  "consensus": None if hetero else self.consensus_combo.current_layer()}
        if not starts and all(v is None for v in layers.values()):
            return {"starts": None, "solvent_mask": None, "focus_mask": None, "consensus": None}
        folder = Path(tempfile.mkdtemp(prefix="classify_inputs_", dir=out))
        inputs: dict[str, Any] = {k: self._layer_input(v, folder, k) for k, v in layers.items()}
        inputs["starts"] = [self._layer_input(s, folder, f"start_{i + 1}") for i, s in enumerate(starts)] or None
        return inputs

    def start(self) -> None:
        """Check the inputs, write layer inputs to MRC files, and start the job."""
        if self.running:
            return
        chosen = self._chosen_particles_and_out()
        if chosen is None:
            return
        particles, out = chosen
        params = self.params()
        self._input_layers = {}
        try:
            out.mkdir(parents=True, exist_ok=True)
            inputs = self._inputs(out)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(str(exc))
            return
        if inputs["starts"]:
            params = dataclasses.replace(params, n_classes=len(inputs["starts"]))
        self.end_compare()
        self._remember_job_folders(out)
        self.n_classes = params.n_classes
        self._reset_display()
        self.size_history = []
        self.layer_updates = {}
        self.class_counts = None
        self.warnings = []
        self._warned = set()
        self.warnings_box.clear()
        self.class_list.clear()
        self.export_btn.setEnabled(False)
        self._fill_compare(params.n_classes)
        for name in [n for n in self._own if n.startswith("class ")]:
            if int(name.split()[1]) > params.n_classes and self.own_layer(name) is not None:
                self.viewer.layers.remove(self._own.pop(name))
        self.state = "running"
        self.log.clear()
        what = dict((m, t) for t, m in MODES)[params.mode]
        self._log(f"{what} of {particles}, {params.n_classes} classes, on {device_label()}"
                  + "".join(f"; {k.replace('_', ' ')} from layer '{self._input_layers[v]}'"
                            for k, v in inputs.items() if isinstance(v, str)))
        self._ensure_plots_dock()
        self.plots.clear()

        worker = self._new_worker(_classify_stream, particles, str(out), params, inputs, total=params.max_iter,
                                  desc="cryolive classes")
        worker.start()

    # ------------------------------------------------------------------------------------------------ results
    def _on_yielded(self, it: Any) -> None:
        if not self._accepting:
            return  # arrived after Stop: ignored
        self.size_history.append(np.asarray(it.class_sizes, dtype=float))
        self._pending = it  # a newer iteration replaces one not yet drawn
        if not self._render_scheduled:
            self._render_scheduled = True
            QTimer.singleShot(0, self._render)

    def _render(self) -> None:
        """Show the newest iteration, one piece per pass of the event loop."""
        it, self._pending = self._pending, None
        if it is None:
            self._render_scheduled = False
            return
        if self.job_dir is None and it.job_dir:
            self.job_dir = Path(it.job_dir)
            self.job_label.setText(f"job folder: {self.job_dir}")
        steps: list = [lambda: self._show_warnings(it.warnings)]
        steps += [lambda c=c: self._show_class(c + 1, it.class_maps[c], it.pixel_size)
                  for c in range(len(it.class_maps))]
        if self._compare is not None:  # keep the difference map current (unless the comparison ended meanwhile)
            steps.append(lambda: self._compare is not None and self.compare(*self._compare))
        steps += [lambda: self.plots.show_iteration(it, list(self.size_history)), lambda: self._report(it)]
        self._steps = steps
        self._next_step()

    def _show_warnings(self, warnings: tuple[str, ...]) -> None:
        for w in warnings:
            if w not in self._warned:
                self._warned.add(w)
                self.warnings.append(w)
                self.warnings_box.append(f"⚠ {w}")
                show_warning(f"Classification: {w}")

    def own_layer(self, name: str) -> Image | None:
        """The layer this dock made under ``name`` ("class 1" …, "diff"), if still in the viewer."""
        layer = self._own.get(name)
        return layer if layer is not None and layer in self.viewer.layers else None

    def class_layer(self, k: int) -> Image | None:
        """Class ``k``'s (1-based) layer, if it is still in the viewer."""
        return self.own_layer(class_layer_name(k))

    def _show_class(self, k: int, vol: np.ndarray, apix: float) -> None:
        name = class_layer_name(k)
        data = np.ascontiguousarray(vol, dtype=np.float32)
        limits = robust_limits(data)
        scale = (apix,) * 3
        layer = self.own_layer(name)
        if layer is not None and layer.data.shape == data.shape:
            layer.data = data  # in place: the layer keeps the user's display settings
            if not np.allclose(layer.scale, scale):
                layer.scale = scale
            lo, hi = layer.contrast_limits_range
            if limits[0] < lo or limits[1] > hi:
                layer.contrast_limits_range = (min(lo, limits[0]), max(hi, limits[1]))
            layer.contrast_limits = limits
        else:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(data, name=name, scale=scale, contrast_limits=limits,
                                          colormap=_class_colormap(k), blending="additive",
                                          metadata={"pixel_size": apix, "cryolive_class": k})
            self._own[name] = layer
        layer.metadata["job_dir"] = str(self.job_dir) if self.job_dir else None
        self.layer_updates[k] = self.layer_updates.get(k, 0) + 1

    def _report(self, it: Any) -> None:
        sizes = ", ".join(f"{100 * s:.0f} %" for s in it.class_sizes)
        self._log(f"iteration {it.iteration} ({it.stage}, {it.n_particles} particles, similarity "
                  f"{it.similarity:.2f}): sizes {sizes}; {100 * it.changed_fraction:.1f} % changed class; "
                  f"mean ESS {it.mean_ess:.2f}; {it.timings.get('total_s', float('nan')):.1f} s")
        elapsed = time.perf_counter() - self._t_start
        self.status_label.setText(f"iteration {it.iteration} of ≤ {self.max_iter.value()} ({it.stage}): "
                                  f"{100 * it.changed_fraction:.1f} % changed class, mean ESS {it.mean_ess:.2f} "
                                  f"({elapsed:.0f} s so far)")
        self.iterations_shown.append(it.iteration)
        self.iterationShown.emit(it.iteration)

    def _on_returned(self, value: Any) -> None:
        state, payload, elapsed = self._run_returned(value)
        if state == "finished":
            final = payload.final
            counts = np.bincount(np.asarray(payload.classes, dtype=int), minlength=len(final.class_sizes) + 1)[1:]
            self.class_counts = counts
            self._fill_classes(final, counts)
            sizes = ", ".join(f"{100 * s:.1f} %" for s in final.class_sizes)
            self._log(f"finished in {elapsed:.1f} s after {final.iteration} iterations: class sizes {sizes}; "
                      f"outputs in {self.job_dir}")
            self.status_label.setText(f"finished: {final.iteration} iterations, {final.mean_ess:.2f} mean ESS, "
                                      f"{100 * final.changed_fraction:.1f} % changed in the last ({elapsed:.0f} s)")
            show_info(f"Classification finished: class sizes {sizes}")
        elif state == "stopped":
            self._log(f"stopped after iteration {payload}; the job folder says 'stopped' (no particles.star, so "
                      "nothing to export)")
            self.status_label.setText(f"stopped after iteration {payload}")
        else:
            self._report_failure(payload, "Classification")
        self.state = state

    def _fill_classes(self, final: Any, counts: np.ndarray) -> None:
        self.class_list.clear()
        for c, n in enumerate(counts):
            item = QListWidgetItem(f"class {c + 1}: {n} particles ({100 * final.class_sizes[c]:.1f} %), "
                                   f"{final.class_resolution_A[c]:.1f} Å")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            item.setData(Qt.ItemDataRole.UserRole, c + 1)
            item.setIcon(_swatch(class_color(c + 1)))
            self.class_list.addItem(item)
        self.export_btn.setEnabled(True)

    def selected_classes(self) -> list[int]:
        """The ticked classes (1-based)."""
        items = [self.class_list.item(i) for i in range(self.class_list.count())]
        return [it.data(Qt.ItemDataRole.UserRole) for it in items if it.checkState() == Qt.CheckState.Checked]

    def set_selected_classes(self, classes: list[int]) -> None:
        """Tick exactly these classes (1-based)."""
        for i in range(self.class_list.count()):
            item = self.class_list.item(i)
            on = item.data(Qt.ItemDataRole.UserRole) in classes
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def default_export_path(self, classes: list[int]) -> Path | None:
        """``<job>/particles_selected_classes_1_3.star`` (``_2``, ``_3`` … appended when taken)."""
        if self.job_dir is None:
            return None
        stem = "particles_selected_classes_" + "_".join(map(str, sorted(classes)))
        path = self.job_dir / f"{stem}.star"
        i = 2
        while path.exists():
            path = self.job_dir / f"{stem}_{i}.star"
            i += 1
        return path

    def _export_dialog(self) -> None:
        classes = self.selected_classes()
        if not classes:
            show_error("Tick the classes to export")
            return
        default = self.default_export_path(classes)
        path, _ = QFileDialog.getSaveFileName(self, "Export the selected classes' particles", str(default or ""),
                                              "RELION STAR (*.star)")
        if path:
            self.export_selected(path)

    def export_selected(self, dest: str | Path | None = None) -> int | None:
        """Write the ticked classes' particles to ``dest`` (default: :meth:`default_export_path`); the count.

        Refuses to overwrite an existing file; problems are shown with ``show_error`` (and None returned)."""
        from cryolive.jobs.classify import export_classes

        classes = self.selected_classes()
        star = self.job_dir / "particles.star" if self.job_dir else None
        if not classes:
            show_error("Tick the classes to export")
            return None
        if star is None or not star.is_file():
            show_error("No finished classification to export from (particles.star is written when the job ends)")
            return None
        path = Path(dest) if dest else self.default_export_path(classes)
        if path.exists():
            show_error(f"{path} exists: choose a new file name")
            return None
        try:
            n = export_classes(star, classes, path)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"Export failed: {exc}")
            return None
        self.last_export = path
        self._log(f"exported {n} particles of class(es) {', '.join(map(str, classes))} to {path}")
        show_info(f"Wrote {n} particles to {path.name}")
        return n

    # ------------------------------------------------------------------------------------------------ compare
    def _fill_compare(self, k: int) -> None:
        for combo, default in ((self.cmp_a, 0), (self.cmp_b, 1)):
            keep = combo.currentIndex()
            combo.clear()
            combo.addItems([class_layer_name(c + 1) for c in range(k)])
            combo.setCurrentIndex(keep if 0 <= keep < k else min(default, k - 1))
        self.compare_btn.setEnabled(k >= 2)

    def compare(self, a: int, b: int) -> Image | None:
        """Show classes ``a`` and ``b`` (1-based) side by side in grid mode with their difference ``a − b``."""
        la, lb = self.class_layer(a), self.class_layer(b)
        if a == b or la is None or lb is None:
            show_error("Choose two different classes whose layers exist (they appear after the first iteration)")
            return None
        if la.data.shape != lb.data.shape:
            show_error(f"class {a} and class {b} have different boxes")
            return None
        diff = np.asarray(la.data, dtype=np.float32) - np.asarray(lb.data, dtype=np.float32)
        lim = float(np.percentile(np.abs(diff), 99.9)) or 1.0
        name = diff_layer_name(a, b)
        layer = self.own_layer("diff")
        if layer is not None and layer.data.shape == diff.shape:
            layer.data = diff
            layer.contrast_limits = (-lim, lim)
            layer.scale = la.scale
            if layer.name != name:
                layer.name = name
        else:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(diff, name=name, scale=la.scale, colormap=_DIFF_COLORMAP,
                                          contrast_limits=(-lim, lim), metadata={"pixel_size": float(la.scale[-1])})
            self._own["diff"] = layer
        if self._compare != (a, b) or not self.viewer.grid.enabled:
            self._enter_grid(la, lb, layer)
        self._compare = (a, b)
        self.end_compare_btn.setEnabled(True)
        return layer

    def _enter_grid(self, la: Image, lb: Image, diff: Image) -> None:
        v = self.viewer
        grid = v.grid
        if self._saved_view is None:
            self._saved_view = {"visible": {layer: layer.visible for layer in v.layers},
                                "grid": (grid.enabled, tuple(grid.shape), grid.stride)}
        shown = (la, lb, diff)
        for layer in v.layers:
            layer.visible = layer in shown
        # the grid fills its cells in layer-list order (bottom first): A, B, difference on top, in that order
        for layer in shown:
            v.layers.move(v.layers.index(layer), len(v.layers))
        grid.shape = (1, 3)
        grid.stride = 1
        grid.enabled = True
        v.reset_view()

    def end_compare(self) -> None:
        """Leave the comparison: the grid setting and layer visibility as they were before it."""
        saved, self._saved_view = self._saved_view, None
        self._compare = None
        self.end_compare_btn.setEnabled(False)
        if saved is None:
            return
        v = self.viewer
        enabled, shape, stride = saved["grid"]
        v.grid.enabled = enabled
        v.grid.shape = shape
        v.grid.stride = stride
        for layer, visible in saved["visible"].items():
            if layer in v.layers:
                layer.visible = visible

    # ------------------------------------------------------------------------------------------------ dock
def _swatch(hex_color: str) -> Any:
    """A small square icon in a class's colour (for the class list)."""
    from qtpy.QtGui import QColor, QIcon, QPixmap

    pix = QPixmap(12, 12)
    pix.fill(QColor(hex_color))
    return QIcon(pix)
