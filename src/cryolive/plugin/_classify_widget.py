"""The Classification dock: 3D classification and heterogeneous refinement, watched live in the viewer.

The dock is a view of a :class:`~cryolive.plugin.classify_model.ClassifyRunModel` (class sizes per iteration,
warnings, final counts, the classes ticked for export, the pair compared, and every line of text it shows): it
owns the Qt widgets and the napari layers and draws what the model holds. The parameters come from
:class:`~cryolive.plugin._param_form.ParamForm` over :class:`~cryolive.classification.classify.ClassifyParams`
(every field with a spec; the symmetry and the seed, which have none, have their own fields), so a field the dock
does not show keeps the value last given to :meth:`ClassifyWidget.set_params`.

Threading (as in the Refinement dock, :mod:`cryolive.plugin._refine_widget`)
-----------------------------------------------------------------------------
``classify_job`` (a generator yielding one :class:`ClassIteration` per iteration) runs inside
:func:`_classify_stream` in a napari ``GeneratorWorker``. The worker thread only computes and yields; everything
that touches Qt or layers happens on the main thread:

* ``yielded`` → :meth:`ClassifyWidget._on_yielded` hands the iteration to the model (every iteration gets its
  bar) and schedules one render with ``QTimer.singleShot``; an iteration arriving while a render is pending
  replaces it, so the GUI never works through a backlog.
* Stop sets a ``threading.Event``; the stream closes the job generator after the current iteration (the job folder
  then says "stopped"). Pause/Resume use the worker's own pause. Errors are returned by the stream and shown with
  ``show_error`` on the main thread.

Layers: one image layer per class, ``class 1`` … ``class K`` (created once, then ``layer.data`` replaced each
iteration), and for a comparison a ``class A − class B`` difference layer. Layer inputs (masks, consensus,
starting maps) are passed to the job in memory (:class:`cryolive.io.MapInput`; a layer opened from an MRC file by its
path): the job checks them and writes its own copies into its folder, nothing is written in the output folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.colormaps import Colormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from cryolive.backend import device_label
from cryolive.classification.classify import ClassifyParams
from cryolive.params import param_spec
from cryolive.plugin._common import (
    MASK_KEY,
    SYMMETRIES,
    LayerCombo,
    LayerList,
    color_swatch,
    is_map_layer,
    is_mask_candidate,
    job_map_input,
    log_view,
    replace_image_data,
    robust_limits,
    scrolling_layout,
    symmetry_combo,
    symmetry_text,
)
from cryolive.plugin._job_dock import JobDockMixin, JobHandle, job_stream
from cryolive.plugin._param_form import ParamForm
from cryolive.plugin._plots import ClassPlotsWidget, class_color
from cryolive.plugin.classify_model import (
    MODES,
    ClassifyRunModel,
    class_layer_name,
    diff_layer_name,
    difference_map,
    interrupted_classifications,
)

#: the parameters shown at once; the other spec'd fields of ClassifyParams are under "Advanced"
MAIN_FIELDS = ("mode", "n_classes")
_DEFAULTS = ClassifyParams()


def _class_colormap(k: int) -> Colormap:
    rgb = [int(class_color(k)[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    return Colormap(colors=[[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]], name=f"cryolive class {k}")


_DIFF_COLORMAP = Colormap(colors=[[0.2, 0.45, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.35, 0.2, 1.0]],
                          controls=[0.0, 0.5, 1.0], name="cryolive difference")


# ---------------------------------------------------------------------------------------------------- worker side
def _classify_stream(particles: str, out: str, params: ClassifyParams, inputs: dict, handle: JobHandle) -> Generator:
    """Yield the job's iterations until it ends or ``handle.stop`` is set; return ``(state, value)``.

    Runs in the worker thread. ``inputs``: ``starts``, ``solvent_mask``, ``focus_mask``, ``consensus`` (MRC
    paths, maps in memory as :class:`cryolive.io.MapInput`, which the job writes into its own folder, or None).
    ``state`` is "finished" (value: the ClassifyResult), "stopped" (value: the last iteration number) or "failed"
    (value: the exception).
    """
    from cryolive.jobs.classify import classify_job

    return (yield from job_stream(handle, lambda: classify_job(particles, out, params, **inputs)))


def _continue_stream(job_dir: str, handle: JobHandle) -> Generator:
    """:func:`_classify_stream` for an interrupted job that goes on in its folder ``job_dir``."""
    from cryolive.jobs.classify import continue_classify_job

    return (yield from job_stream(handle, lambda: continue_classify_job(job_dir)))


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
        self.model = ClassifyRunModel()
        self._saved_view: dict | None = None  # visibility and grid before a comparison
        self.layer_updates: dict[int, int] = {}  # class (1-based) -> times its layer's data was set this run
        self._base_params = _DEFAULTS
        self._build()
        QTimer.singleShot(0, self._ensure_plots_dock)

    # ------------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        v = self.viewer
        root = scrolling_layout(self)
        form = self._add_particles_field(root, "particles.star or particles.cs (with poses)")

        self.main_form = ParamForm(ClassifyParams, MAIN_FIELDS, labels={"mode": "Mode", "n_classes": "Classes (K)"},
                                   choice_texts={"mode": MODES})
        mode = self.main_form.widgets["mode"]
        mode.tooltip = ("fixed poses: the particles' poses (from a refinement) are kept; local search: a few degrees "
                        "around them per class; heterogeneous refinement: a pose search per class from K starting "
                        "maps")
        mode.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        mode.native.setMinimumContentsLength(14)
        root.addWidget(self.main_form.native)

        form = QFormLayout()
        root.addLayout(form)
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
        self._add_out_field(form, "parent folder: the job writes a new job_classify_<nnn> (job_hetero_<nnn>) there")

        adv = QCollapsible("Advanced")
        self.more_form = ParamForm(ClassifyParams, [n for n in param_spec(ClassifyParams) if n not in MAIN_FIELDS])
        adv.addWidget(self.more_form.native)
        adv_w = QWidget()
        af = QFormLayout(adv_w)
        af.setContentsMargins(0, 0, 0, 0)
        # fields of ClassifyParams without a spec (so not in the ParamForms)
        self.sym = symmetry_combo(SYMMETRIES, _DEFAULTS.symmetry)
        af.addRow("Symmetry", self.sym)
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
        root.addLayout(self._compare_rows())
        self.log = log_view(80)
        root.addWidget(self.log, 1)
        # wide enough for the form without a horizontal scroll bar (napari sizes docks from the scroll area)
        self.setMinimumWidth(min(root.parentWidget().minimumSizeHint().width() + 24, 480))

        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.export_btn.clicked.connect(self._export_dialog)
        self.class_list.itemChanged.connect(self._ticks_changed)
        self.compare_btn.clicked.connect(lambda: self.compare(self.cmp_a.currentIndex() + 1,
                                                              self.cmp_b.currentIndex() + 1))
        self.end_compare_btn.clicked.connect(self.end_compare)
        mode.changed.connect(self._mode_changed)
        self.starts_list.itemSelectionChanged.connect(self._mode_changed)
        self._mode_changed()
        self._watch_interrupted()

    def _compare_rows(self) -> QVBoxLayout:
        rows = QVBoxLayout()
        cmp = QHBoxLayout()
        self.cmp_a = QComboBox()
        self.cmp_b = QComboBox()
        cmp.addWidget(QLabel("Compare"))
        cmp.addWidget(self.cmp_a, 1)
        cmp.addWidget(QLabel("−"))
        cmp.addWidget(self.cmp_b, 1)
        rows.addLayout(cmp)
        cmp = QHBoxLayout()
        self.compare_btn = QPushButton("Compare two classes")
        self.compare_btn.setToolTip("the two classes side by side (grid view) and their difference map A − B")
        self.end_compare_btn = QPushButton("End comparison")
        self.end_compare_btn.setToolTip("leave the comparison (restores the grid setting and visibility)")
        self.compare_btn.setEnabled(False)
        self.end_compare_btn.setEnabled(False)
        cmp.addWidget(self.compare_btn)
        cmp.addWidget(self.end_compare_btn)
        rows.addLayout(cmp)
        return rows

    @property
    def mode(self) -> str:
        """The chosen mode: "fixed", "local" or "hetero"."""
        return self.main_form.widgets["mode"].value

    def set_mode(self, mode: str) -> None:
        """Choose "fixed", "local" or "hetero"."""
        self.main_form.widgets["mode"].value = mode

    def _mode_changed(self, *_: Any) -> None:
        hetero = self.mode == "hetero"
        self.starts_list.setVisible(hetero)
        self.starts_label.setVisible(hetero)
        self.consensus_combo.setEnabled(not hetero)
        k = self.main_form.widgets["n_classes"]
        k.enabled = not hetero
        if hetero:
            n = len(self.starts_list.selected_names())
            k.value = max(n, 1)
            k.tooltip = f"heterogeneous refinement: K = the number of starting maps picked ({n})"
        else:
            k.tooltip = "number of classes"

    # ------------------------------------------------------------------------------------------------ parameters
    def params(self) -> ClassifyParams:
        """The ClassifyParams the dock's fields describe (fields it does not show: as last given to set_params)."""
        return dataclasses.replace(self._form_params(), symmetry=symmetry_text(self.sym), seed=int(self.seed.value()))

    def set_params(self, p: ClassifyParams) -> None:
        """Show a ClassifyParams (fields the dock does not show are kept for the next run)."""
        self._set_form_params(p)
        self.sym.setCurrentText(p.symmetry)
        self.seed.setValue(p.seed)

    # ------------------------------------------------------------------------------------------------ control
    def _inputs(self) -> tuple[dict, dict[str, str]]:
        """The job's map arguments from the chosen layers (their files or their data in memory; nothing is
        written here), and the layer name of each single-map input given (for the log)."""
        hetero = self.mode == "hetero"
        starts = self.starts_list.selected_layers() if hetero else []
        if hetero and len(starts) < 2:
            raise ValueError("Heterogeneous refinement needs at least two starting maps: pick them in the list")
        layers = {"solvent_mask": self.solvent_combo.current_layer(), "focus_mask": self.focus_combo.current_layer(),
                  "consensus": None if hetero else self.consensus_combo.current_layer()}
        inputs: dict[str, Any] = {k: job_map_input(v) for k, v in layers.items()}
        inputs["starts"] = [job_map_input(s) for s in starts] or None
        return inputs, {k: v.name for k, v in layers.items() if v is not None}

    def start(self) -> None:
        """Check the inputs and start the job (layers are passed as maps in memory: no file is written here)."""
        run = self._run_inputs(self._inputs)
        if run is None:
            return
        particles, out, params, (inputs, layer_names) = run
        if inputs["starts"]:
            params = dataclasses.replace(params, n_classes=len(inputs["starts"]))
        self.end_compare()
        self._remember_job_folders(out)
        self.model.start(particles, params)
        self._begin_run()
        self._log(self.model.start_log(device_label(), layer_names))
        worker = self._new_worker(_classify_stream, particles, str(out), params, inputs, total=params.max_iter,
                                  desc="cryolive classes")
        worker.start()

    def _interrupted(self, out: Path) -> list[tuple[Path, str]]:
        return interrupted_classifications(out)

    def continue_job(self, job_dir: str | Path) -> None:
        """Go on with the interrupted classification or heterogeneous refinement in ``job_dir`` (as the CLI's
        ``--continue``): the same layers, plots and controls as a run started here."""
        taken = self._continue_status(job_dir)
        if taken is None:
            return
        job_dir, status = taken
        self.end_compare()
        self._remember_job_folders(job_dir.parent)
        self._begin_run()
        self._log(self.model.start_log(device_label()))
        worker = self._new_worker(_continue_stream, str(job_dir), total=self.model.params.max_iter,
                                  desc="cryolive classes")
        self._continue_started(job_dir, status)
        worker.start()

    def _begin_run(self) -> None:
        """Once the model knows the run: clear the display, the class list and the log."""
        params = self.model.params
        self._reset_display()
        self.layer_updates = {}
        self.warnings_box.clear()
        self.class_list.clear()
        self.export_btn.setEnabled(False)
        self._fill_compare(params.n_classes)
        for name in [n for n in self._own if n.startswith("class ")]:
            if int(name.split()[1]) > params.n_classes and self.own_layer(name) is not None:
                self.viewer.layers.remove(self._own.pop(name))
        self.state = "running"
        self.log.clear()
        self._ensure_plots_dock()
        self.plots.clear()

    # ------------------------------------------------------------------------------------------------ results
    def _render(self) -> None:
        """Show the newest iteration, one piece per pass of the event loop."""
        it = self._take_pending()
        if it is None:
            return
        model = self.model
        if self.job_dir is None and model.job_dir is not None:
            self.job_dir = model.job_dir
            self.job_label.setText(f"job folder: {self.job_dir}")
        steps: list = [lambda: self._show_warnings(it.warnings)]
        steps += [lambda c=c: self._show_class(c + 1, it.class_maps[c], it.pixel_size)
                  for c in range(len(it.class_maps))]
        if model.compared is not None:  # keep the difference map current (unless the comparison ended meanwhile)
            steps.append(lambda: model.compared is not None and self.compare(*model.compared))
        steps += [lambda: self.plots.show_iteration(list(model.size_history), model.sizes_title(), it.class_fsc,
                                                    it.pixel_size, model.fsc_title(it)),
                  lambda: self._report(it)]
        self._steps = steps
        self._next_step()

    def _show_warnings(self, warnings: tuple[str, ...]) -> None:
        for w in self.model.new_warnings(warnings):
            self.warnings_box.append(f"⚠ {w}")
            show_warning(f"Classification: {w}")

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
            replace_image_data(layer, data, limits)  # in place: the layer keeps the user's display settings
            if not np.allclose(layer.scale, scale):
                layer.scale = scale
        else:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(data, name=name, scale=scale, contrast_limits=limits,
                                          colormap=_class_colormap(k), blending="additive",
                                          metadata={"pixel_size": apix, "cryolive_class": k})
            self._own[name] = layer
        layer.metadata["job_dir"] = str(self.job_dir) if self.job_dir else None
        self.layer_updates[k] = self.layer_updates.get(k, 0) + 1

    def _on_returned(self, value: Any) -> None:
        state, payload, elapsed = self._run_returned(value)
        if state == "finished":
            self.model.finish(payload, self.job_dir)
            self._fill_classes()
            self._show_finished(elapsed)
        elif state == "stopped":
            log, status = self.model.stopped_text(payload)
            self._log(log)
            self.status_label.setText(status)
        else:
            self._report_failure(payload, "Classification")
        self.state = state

    # ------------------------------------------------------------------------------------------------ export
    def _fill_classes(self) -> None:
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for c, text in enumerate(self.model.class_rows()):
            item = QListWidgetItem(text)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if c + 1 in self.model.selected else Qt.CheckState.Unchecked)
            item.setData(Qt.ItemDataRole.UserRole, c + 1)
            item.setIcon(color_swatch(class_color(c + 1)))
            self.class_list.addItem(item)
        self.class_list.blockSignals(False)
        self.export_btn.setEnabled(True)

    def _ticks_changed(self, *_: Any) -> None:
        items = [self.class_list.item(i) for i in range(self.class_list.count())]
        self.model.set_selected(it.data(Qt.ItemDataRole.UserRole) for it in items
                                if it.checkState() == Qt.CheckState.Checked)

    def selected_classes(self) -> list[int]:
        """The ticked classes (1-based)."""
        return list(self.model.selected)

    def set_selected_classes(self, classes: list[int]) -> None:
        """Tick exactly these classes (1-based)."""
        self.model.set_selected(classes)
        self.class_list.blockSignals(True)
        for i in range(self.class_list.count()):
            item = self.class_list.item(i)
            on = item.data(Qt.ItemDataRole.UserRole) in self.model.selected
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        self.class_list.blockSignals(False)

    def default_export_path(self, classes: list[int]) -> Path | None:
        """``<job>/particles_selected_classes_1_3.star`` (``_2``, ``_3`` … appended when taken)."""
        return self.model.default_export_path(classes)

    def _export_dialog(self) -> None:
        if not self.model.selected:
            show_error("Tick the classes to export")
            return
        default = self.model.default_export_path()
        path, _ = QFileDialog.getSaveFileName(self, "Export the selected classes' particles", str(default or ""),
                                              "RELION STAR (*.star)")
        if path:
            self.export_selected(path)

    def export_selected(self, dest: str | Path | None = None) -> int | None:
        """Write the ticked classes' particles to ``dest`` (default: :meth:`default_export_path`); the count.

        Refuses to overwrite an existing file; problems are shown with ``show_error`` (and None returned)."""
        problem = self.model.export_problem(dest)
        if problem:
            show_error(problem)
            return None
        try:
            path, n = self.model.export(dest)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"Export failed: {exc}")
            return None
        self._log(f"exported {n} particles of class(es) {', '.join(map(str, self.model.selected))} to {path}")
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
        problem = self.model.compare_problem(a, b, None if la is None else la.data.shape,
                                             None if lb is None else lb.data.shape)
        if problem:
            show_error(problem)
            return None
        diff, lim = difference_map(la.data, lb.data)
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
        if self.model.start_compare(a, b) or not self.viewer.grid.enabled:
            self._enter_grid(la, lb, layer)
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
        self.model.end_compare()
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
