"""The Refinement dock: run homogeneous refinement and watch every iteration in the viewer.

The dock is a view of a :class:`~cryolive.plugin.refine_model.RefineRunModel` (the run's inputs, map history,
iteration summaries and every line of text it shows): it owns the Qt widgets and the napari layers, hands each step
of the job to the model and draws it. The parameters come from a :class:`~cryolive.plugin._param_form.ParamForm`
over :class:`~cryolive.refinement.refine.RefineParams` (every field with a spec; the few without one, such as the
symmetry, have their own fields), so a field the dock does not show keeps the value last given to
:meth:`RefineWidget.set_params`.

Threading
---------
``refine_job`` (a generator yielding an ``SGDStep`` per ab-initio step, if asked for, then one
:class:`RefineIteration` per iteration) runs inside :func:`_refine_stream`
in a napari ``GeneratorWorker`` (``create_worker`` with ``_progress``, so the activity dock shows it). The worker
thread only computes and yields; everything that touches Qt or layers happens on the main thread in the slots:

* ``yielded`` → :meth:`RefineWidget._on_yielded` hands the step to the model (an iteration's map joins the
  history) and schedules one render with ``QTimer.singleShot(0, …)``; iterations that arrive while a render is
  pending replace it (only their maps stay, in the history), so the GUI never works through a backlog. Ab-initio
  steps are drawn on the map layer (resampled to the particle box) and the status line, not kept in the history.
* Stop sets a ``threading.Event``; the stream checks it before and after each yield and then closes the job
  generator (the job folder's ``status.json`` says "stopped") and returns, so Stop takes effect when the current
  iteration ends. Results that still arrive after Stop are ignored. The activity dock's cancel (``worker.quit``)
  ends the loop without resuming the generator; then the main thread closes the job generator once the worker
  has finished.
* Pause/Resume use the worker's own pause (between iterations).
* Errors never escape the worker: the stream returns them, and the main thread shows them with ``show_error``.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QApplication, QCheckBox, QFileDialog, QFormLayout, QLabel, QLineEdit, QSpinBox, QWidget
from superqt import QCollapsible

from cryolive.backend import device_label
from cryolive.params import param_spec
from cryolive.plugin._common import (
    MASK_KEY,
    SYMMETRIES,
    LayerCombo,
    is_map_layer,
    is_mask_candidate,
    job_map_input,
    layer_map_input,
    log_view,
    replace_image_data,
    robust_limits,
    scrolling_layout,
    set_mask_layer,
    symmetry_combo,
    symmetry_text,
    with_browse,
)
from cryolive.plugin._job_dock import JobDockMixin, JobHandle, job_stream
from cryolive.plugin._param_form import ParamForm
from cryolive.plugin._plots import RefinePlotsWidget
from cryolive.plugin.refine_model import (
    RefineRunModel,
    interrupted_refinements,
    is_sgd_step,
    mask_choice_warning,
    relax_symmetry_value,
)
from cryolive.refinement.refine import RefineParams

MAP_LAYER = "refinement map"
HISTORY_LAYER = "refinement history"
MASK_LAYER = "refinement mask"
HALF_LAYERS = ("half map A", "half map B")
#: the parameters shown at once; the other spec'd fields of RefineParams are under "More parameters"
MAIN_FIELDS = ("initial_lowpass_A", "max_iter", "global_iters", "sgd_steps")
_DEFAULTS = RefineParams()


# ---------------------------------------------------------------------------------------------------- worker side
def _refine_stream(particles: str, reference: Any, out: str, params: RefineParams, mask: Any,
                   save_iterations: bool, handle: JobHandle) -> Generator:
    """Yield the job's iterations until it ends or ``handle.stop`` is set; return ``(state, value)``.

    Runs in the worker thread. ``state`` is "finished" (value: the RefineResult), "stopped" (value: the last
    iteration yielded) or "failed" (value: the exception). ``reference`` and ``mask`` (or None): MRC paths or
    maps in memory (:class:`cryolive.io.MapInput`), which the job writes into its own folder.
    """
    from cryolive.jobs.refine import refine_job

    return (yield from job_stream(handle, lambda: refine_job(particles, reference, out, params, mask_path=mask,
                                                             save_iterations=save_iterations)))


def _continue_stream(job_dir: str, save_iterations: bool, handle: JobHandle) -> Generator:
    """:func:`_refine_stream` for an interrupted refinement that goes on in its folder ``job_dir``."""
    from cryolive.jobs.refine import continue_refine_job

    return (yield from job_stream(handle, lambda: continue_refine_job(job_dir, save_iterations=save_iterations)))


# ---------------------------------------------------------------------------------------------------- the dock
class RefineWidget(JobDockMixin, QWidget):
    """Particles, reference, optional mask and parameters; Start, Pause/Resume, Stop; live map, FSC and log."""

    iterationShown = Signal(int)  # a new iteration is on screen (map layer, plots, log)
    runFinished = Signal(str)  # "finished", "stopped" or "failed"
    JOB_GLOBS = ("job_refine_*",)
    PLOTS_DOCK = "Refinement plots"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._init_run_state(napari_viewer, RefinePlotsWidget())
        self.model = RefineRunModel()
        self._history_stale = False
        self._base_params = _DEFAULTS
        self._build()
        QTimer.singleShot(0, self._ensure_plots_dock)  # once this dock is in the window

    # ------------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        v = self.viewer
        root = scrolling_layout(self)

        form = self._add_particles_field(root, "particles.star or particles.cs",
                                         device_tip="where the job computes (set CRYOLIVE_BACKEND=numpy|cupy before "
                                                    "starting napari to choose)")
        self.ref_combo = LayerCombo(v, is_map_layer, none_text="(file below)")
        self.ref_combo.setToolTip("the reference map: an image layer, or a file")
        form.addRow("Reference", self.ref_combo)
        self.ref_edit = QLineEdit()
        self.ref_edit.setPlaceholderText("reference.mrc (when no layer is chosen)")
        form.addRow("", with_browse(self.ref_edit, self._browse_reference))
        self.mask_combo = LayerCombo(v, is_mask_candidate, none_text="(none: automatic)",
                                     auto_select=lambda layer: layer.metadata.get(MASK_KEY) == "solvent")
        self.mask_combo.setToolTip("a static solvent mask (a layer; the job keeps a copy in its folder), "
                                   "or none for cryolive's automatic (dynamic) mask")
        form.addRow("Mask", self.mask_combo)
        self.mask_warning = QLabel()
        self.mask_warning.setWordWrap(True)
        self.mask_warning.setStyleSheet("QLabel { color: #ff8c1a; }")
        self.mask_warning.setVisible(False)
        form.addRow(self.mask_warning)
        # fields of RefineParams without a spec (so not in the ParamForms): symmetry, input poses, relaxed
        # symmetry, marginalisation, seed
        self.sym = symmetry_combo(SYMMETRIES, _DEFAULTS.symmetry, "point group of the map (C1: none)")
        form.addRow("Symmetry", self.sym)

        self.main_form = ParamForm(RefineParams, MAIN_FIELDS)
        root.addWidget(self.main_form.native)
        form = QFormLayout()
        root.addLayout(form)
        self.use_poses = QCheckBox("start from the particles' poses")
        self.use_poses.setToolTip("local searches from iteration 1 around the poses in the particles file (a "
                                  "previous refinement's), as cryoSPARC's local refinement")
        form.addRow(self.use_poses)
        self.relax_sym = symmetry_combo(["none", *SYMMETRIES[1:]], "none",
                                        "pseudo-symmetry to relax (RELION's --relax_sym): local searches also try "
                                        "each mate of a particle's pose under this group and keep the best; the map "
                                        "keeps the symmetry above")
        form.addRow("Relax symmetry", self.relax_sym)

        more = QCollapsible("More parameters")
        self.more_form = ParamForm(RefineParams, [n for n in param_spec(RefineParams) if n not in MAIN_FIELDS])
        more.addWidget(self.more_form.native)
        more_w = QWidget()
        mf = QFormLayout(more_w)
        mf.setContentsMargins(0, 0, 0, 0)
        self.marginalize = QCheckBox("adaptive marginalisation")
        mf.addRow(self.marginalize)
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1)
        mf.addRow("Seed", self.seed)
        self.scheduler = QLineEdit()
        self.scheduler.setPlaceholderText("none (tcp://host:8786)")
        self.scheduler.setToolTip("search and insert on an existing Dask cluster (--scheduler); empty: in this "
                                  "process, or on the local cluster 'Dask workers' asks for")
        mf.addRow("Dask scheduler", self.scheduler)
        more.addWidget(more_w)
        root.addWidget(more)
        self.field("sgd_steps").native.setSpecialValueText("off")
        self.field("workers").native.setSpecialValueText("off")
        # local searches from iteration 1: the global iterations do not apply
        self.use_poses.toggled.connect(lambda on: setattr(self.field("global_iters"), "enabled", not on))

        form = QFormLayout()
        root.addLayout(form)
        self._add_out_field(form, "parent folder: the job writes a new job_refine_<nnn> folder inside it")
        self.save_iterations = QCheckBox("save every iteration's map")
        form.addRow(self.save_iterations)
        self.show_halves = QCheckBox("show half maps")
        self.show_halves.setToolTip("add the two half maps as layers each iteration")
        form.addRow(self.show_halves)
        self.scrub = QCheckBox("scrub iterations")
        self.scrub.setToolTip(f"show '{HISTORY_LAYER}' (an iteration axis with every map so far) instead of "
                              f"'{MAP_LAYER}'; drag the iteration slider under the canvas")
        form.addRow(self.scrub)

        self._add_run_controls(root)
        self.log = log_view(110)
        root.addWidget(self.log, 1)
        self.set_params(_DEFAULTS)

        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.ref_combo.currentIndexChanged.connect(self._ref_changed)
        self.mask_combo.currentIndexChanged.connect(self._check_mask_choice)
        self.scrub.toggled.connect(self._apply_scrub)
        self._ref_changed()
        self._check_mask_choice()
        self._watch_interrupted()

    def _browse_reference(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Reference map", "", "MRC maps (*.mrc *.map)")
        if path:
            self.ref_edit.setText(path)
            self.ref_combo.setCurrentIndex(0)

    def _ref_changed(self, *_: Any) -> None:
        self.ref_edit.setEnabled(self.ref_combo.current_layer() is None)

    def _check_mask_choice(self, *_: Any) -> None:
        layer = self.mask_combo.current_layer()
        text = "" if layer is None else mask_choice_warning(layer.name, layer.metadata.get(MASK_KEY), layer.data)
        self.mask_warning.setText("⚠ " + text if text else "")
        self.mask_warning.setVisible(bool(text))

    # ------------------------------------------------------------------------------------------------ parameters
    def params(self) -> RefineParams:
        """The RefineParams the dock's fields describe (fields it does not show: as last given to set_params)."""
        return dataclasses.replace(self._form_params(), symmetry=symmetry_text(self.sym),
                                   use_input_poses=self.use_poses.isChecked(),
                                   relax_symmetry=relax_symmetry_value(self.relax_sym.currentText()),
                                   marginalize=self.marginalize.isChecked(), seed=int(self.seed.value()),
                                   scheduler=self.scheduler.text().strip() or None)

    def set_params(self, p: RefineParams) -> None:
        """Show a RefineParams (e.g. small settings for a quick look); fields the dock does not show are kept."""
        self._set_form_params(p)
        self.sym.setCurrentText(p.symmetry)
        self.use_poses.setChecked(p.use_input_poses)
        self.field("global_iters").enabled = not p.use_input_poses
        self.relax_sym.setCurrentText(p.relax_symmetry or "none")
        self.marginalize.setChecked(p.marginalize)
        self.seed.setValue(p.seed)
        self.scheduler.setText(p.scheduler or "")

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Check the inputs and start the job (layers are passed as maps in memory: no file is written here)."""
        run = self._chosen_run()
        if run is None:
            return
        particles, out, params = run
        self._input_layers = {}
        try:
            out.mkdir(parents=True, exist_ok=True)
            ref_path, ref_vol, ref_scale, ref_translate = self._reference_input()
            mask_path = job_map_input(self.mask_combo.current_layer())
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(str(exc))
            return
        if self.mask_warning.isVisible():
            show_warning(self.mask_warning.text().lstrip("⚠ "))

        self._remember_job_folders(out)
        self.model.start(particles, ref_path, ref_vol, float(ref_scale[-1]), params, mask_path,
                         tuple(ref_translate))
        worker = self._begin_run(_refine_stream, particles, ref_path, str(out), params,
                                 mask_path, self.save_iterations.isChecked(),
                                 total=params.sgd_steps + params.max_iter)
        self._go(worker)

    def _interrupted(self, out: Path) -> list[tuple[Path, str]]:
        return interrupted_refinements(out)

    def continue_job(self, job_dir: str | Path) -> None:
        """Go on with the interrupted refinement in ``job_dir`` (as the CLI's ``--continue``): the same layers,
        plots and controls as a run started here."""
        taken = self._continue_status(job_dir)
        if taken is None:
            return
        job_dir, status = taken
        self._remember_job_folders(job_dir.parent)
        params = self.model.params
        worker = self._begin_run(_continue_stream, str(job_dir), self.save_iterations.isChecked(),
                                 total=max(params.max_iter - self.model.done_before, 1))
        self._continue_started(job_dir, status)
        self._go(worker)

    def _begin_run(self, stream: Any, *args: Any, total: int) -> Any:
        """Once the model knows the run: clear the log, make the layers and plots, and the worker (not started)."""
        model = self.model
        self._reset_display()
        self.state = "running"
        self.log.clear()
        for line in model.start_log(device_label()):
            self._log(line)
        # the layers exist before the job runs: each iteration then only replaces their data
        self._show_map(model.history.data[0], "reference (iteration 0)")
        self._update_history()
        self._show_mask(np.zeros_like(model.history.data[0]), 0)
        self._ensure_plots_dock()
        self.plots.clear(model.pixel_size)

        return self._new_worker(stream, *args, total=total, desc="cryolive refinement")

    def _go(self, worker: Any) -> None:
        """Start the worker of a run :meth:`_begin_run` prepared."""
        # let Qt lay out the new layers and plots now, as part of the click, not while the job competes for the CPU
        QApplication.processEvents()
        # a full garbage collection now: napari's heap has some 300 000 objects, and a full collection (which
        # stops every thread for ~0.2 s on a slow machine) would otherwise soon come due while the job runs
        gc.collect()
        worker.start()

    # ------------------------------------------------------------------------------------------------ inputs
    def _reference_input(self) -> tuple[Any, np.ndarray, tuple, tuple]:
        """The reference for the job (a file, or the layer as a MapInput), its map, scale and origin."""
        from cryolive.io import read_map

        layer = self.ref_combo.current_layer()
        if layer is None:
            text = self.ref_edit.text().strip()
            if not text:
                raise ValueError("Choose a reference: a map layer or an MRC file")
            path = Path(text).expanduser().resolve()
            vol, apix = read_map(path)
            return path, vol, (apix,) * 3, (0.0,) * 3
        source = layer_map_input(layer)
        return source, np.asarray(layer.data), tuple(layer.scale), tuple(layer.translate)

    # ------------------------------------------------------------------------------------------------ results
    def _render(self) -> None:
        """Show the newest iteration, one piece per pass of the event loop (so no single pass is long)."""
        it = self._take_pending()
        if it is None:
            return
        if self.job_dir is None:
            self.job_dir = getattr(it, "job_dir", None) or self._find_job_dir()
            if self.job_dir is not None:
                self.model.job_dir = self.job_dir
                self.job_label.setText(f"job folder: {self.job_dir}")
                self._log(f"job folder {self.job_dir}")
        if is_sgd_step(it):
            self._steps = [lambda: self._show_sgd_step(it)]
            self._next_step()
            return
        steps = [lambda: self._show_map(it.map, self.model.map_title(it)),
                 self._update_history,
                 lambda: self._show_mask(it.mask, it.iteration)]
        if self.show_halves.isChecked():
            steps += [lambda: self._show_volume(HALF_LAYERS[0], it.half_a, visible=False),
                      lambda: self._show_volume(HALF_LAYERS[1], it.half_b, visible=False)]
        steps += [lambda: self.plots.show_fsc(it.fsc, self.model.fsc_title(it)),
                  lambda: self.plots.show_angular(it.angular_distribution, self.model.angular_title(it)),
                  lambda: self._report(it)]
        self._steps = steps
        self._next_step()

    def _show_sgd_step(self, step: Any) -> None:
        """Show an ab-initio step's map (working box, resampled to the particle box) on the map layer and say
        how far the ab-initio phase is (a log line every 10th step)."""
        model = self.model
        self._show_map(step.map_in_box(model.box), model.map_title(step))
        if model.sgd_step_shown(step):
            self.plots.fsc_title.setText(model.SGD_FSC_TITLE)
        self.status_label.setText(model.status(step, time.perf_counter() - self._t_start))
        line = model.log_line(step)
        if line:
            self._log(line)

    # ------------------------------------------------------------------------------------------------ layers
    def _show_mask(self, mask: np.ndarray, iteration: int) -> None:
        m = self.model
        self._own[MASK_LAYER] = set_mask_layer(self.viewer, MASK_LAYER, mask, (m.scale3, m.translate),
                                               "refinement", {"iteration": iteration},
                                               layer=self.own_layer(MASK_LAYER))

    def _show_volume(self, name: str, vol: np.ndarray, visible: bool = True) -> Image:
        data = np.ascontiguousarray(vol, dtype=np.float32)
        limits = robust_limits(data)
        layer = self.own_layer(name)
        if layer is not None and layer.data.shape == data.shape:
            replace_image_data(layer, data, limits)
            return layer
        if layer is not None:
            self.viewer.layers.remove(layer)
        m = self.model
        layer = self.viewer.add_image(data, name=name, scale=m.scale3, translate=m.translate,
                                      contrast_limits=limits, visible=visible, metadata={"pixel_size": m.pixel_size})
        self._own[name] = layer
        return layer

    def _show_map(self, vol: np.ndarray, title: str) -> None:
        layer = self._show_volume(MAP_LAYER, vol, visible=not self.scrub.isChecked())
        layer.metadata["title"] = title

    def _update_history(self) -> None:
        """Put the maps so far on the history layer's iteration axis.

        A hidden history layer is only marked stale (napari would not update a hidden layer's extent, and it
        costs nothing to wait): it catches up when it is shown (``scrub iterations`` or its eye in the layer list).
        """
        hist = self.model.history
        stack = hist.data
        dims = self.viewer.dims
        scale, translate = self.model.history_geometry()
        layer = self.own_layer(HISTORY_LAYER)
        if layer is not None and layer.ndim == 4 and layer.data.shape[1:] == stack.shape[1:]:
            if tuple(layer.scale) != scale:
                layer.scale, layer.translate = scale, translate
            self._history_stale = True
            if layer.visible:
                self._sync_history()
            return
        if layer is not None:
            self.viewer.layers.remove(layer)
        layer = self.viewer.add_image(stack, name=HISTORY_LAYER, scale=scale, translate=translate,
                                      contrast_limits=robust_limits(stack[-1]), visible=self.scrub.isChecked(),
                                      metadata={"pixel_size": scale[-1], "binned": hist.binned})
        self._own[HISTORY_LAYER] = layer
        self._history_stale = False
        layer.events.visible.connect(self._sync_history)
        labels = list(dims.axis_labels)
        labels[dims.ndim - 4] = "iteration"
        dims.axis_labels = labels

    def _sync_history(self, event: Any = None) -> None:
        layer = self.own_layer(HISTORY_LAYER)
        if layer is None or not layer.visible or not self._history_stale or self.model.history is None:
            return
        stack = self.model.history.data
        dims = self.viewer.dims
        axis = dims.ndim - 4
        shown = layer.data.shape[0]
        at_end = int(dims.current_step[axis]) >= shown - 1
        layer.data = stack
        self._history_stale = False
        if at_end:  # follow the newest iteration unless the user scrubbed back
            dims.set_current_step(axis, stack.shape[0] - 1)
        if shown == 1 and stack.shape[0] > 1:
            # napari shows a slider only for axes with more than one step and re-checks that on an order change,
            # not on a range change: nudge it so the iteration slider appears
            dims.events.order()

    def _apply_scrub(self, on: bool) -> None:
        history, current = self.own_layer(HISTORY_LAYER), self.own_layer(MAP_LAYER)
        if history is not None:
            history.visible = on
        if current is not None:
            current.visible = not on

    # ------------------------------------------------------------------------------------------------ the end
    def _on_returned(self, value: Any) -> None:
        state, payload, elapsed = self._run_returned(value)
        self.model.job_dir = self.job_dir
        if state == "finished":
            if self.model.finish(payload):  # the job's map.mrc is final.map: make sure the layer shows exactly that
                self._pending = payload.final
                self._flush()
            self._show_finished(elapsed)
        elif state == "stopped":
            where = self.model.stopped_where(payload)
            self._log(f"stopped {where}; the job folder says 'stopped' ({self.job_dir})")
            self.status_label.setText(f"stopped {where}")
        else:
            self._report_failure(payload, "Refinement")
        self.state = state
