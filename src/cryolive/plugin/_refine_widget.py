"""The Refinement dock: run homogeneous refinement and watch every iteration in the viewer.

Threading
---------
``refine_job`` (a generator yielding an ``SGDStep`` per ab-initio step, if asked for, then one
:class:`RefineIteration` per iteration) runs inside :func:`_refine_stream`
in a napari ``GeneratorWorker`` (``create_worker`` with ``_progress``, so the activity dock shows it). The worker
thread only computes and yields; everything that touches Qt or layers happens on the main thread in the slots:

* ``yielded`` → :meth:`RefineWidget._on_yielded` stores the iteration and schedules one render with
  ``QTimer.singleShot(0, …)``; iterations that arrive while a render is pending replace it (only their maps are
  appended to the history), so the GUI never works through a backlog. Ab-initio steps are drawn on the map layer
  (resampled to the particle box) and the status line, not kept in the history.
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
import json
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QTextEdit,
    QWidget,
)
from superqt import QCollapsible

from cryolive.backend import device_label
from cryolive.plugin._common import (
    MASK_KEY,
    LayerCombo,
    is_map_layer,
    is_mask_candidate,
    robust_limits,
    scrolling_layout,
    set_mask_layer,
    with_browse,
    write_layer_copy,
)
from cryolive.plugin._job_dock import JobDockMixin, JobHandle, job_stream
from cryolive.plugin._plots import AngularCanvas, FSCCanvas, titled_plots
from cryolive.refinement.refine import RefineParams
from cryolive.refinement.sgd import SGDStep

MAP_LAYER = "refinement map"
HISTORY_LAYER = "refinement history"
MASK_LAYER = "refinement mask"
HALF_LAYERS = ("half map A", "half map B")
SYMMETRIES = ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "D2", "D3", "D4", "D5", "D6", "D7", "T", "O", "I1", "I2")
_DEFAULTS = RefineParams()


# ---------------------------------------------------------------------------------------------------- worker side


def _refine_stream(particles: str, reference: str, out: str, params: RefineParams, mask: str | None,
                   save_iterations: bool, handle: JobHandle) -> Generator:
    """Yield the job's iterations until it ends or ``handle.stop`` is set; return ``(state, value)``.

    Runs in the worker thread. ``state`` is "finished" (value: the RefineResult), "stopped" (value: the last
    iteration yielded) or "failed" (value: the exception).
    """
    from cryolive.jobs.refine import refine_job

    return (yield from job_stream(handle, lambda: refine_job(particles, reference, out, params, mask_path=mask,
                                                             save_iterations=save_iterations)))


def _params_dict(p: RefineParams) -> dict:
    return dataclasses.asdict(p)


class MapHistory:
    """Every iteration's map in one growing ``(iterations, z, y, x)`` buffer (the history layer shows a view).

    Memory is bounded: when ``capacity`` full-size maps would pass ``max_bytes``, maps are stored 2× binned
    (``binned`` is True and the layer's voxel size doubles).
    """

    def __init__(self, first: np.ndarray, capacity: int, max_bytes: int = 2 << 30) -> None:
        self.binned = first.nbytes * max(capacity, 1) > max_bytes
        m = self._prep(first)
        self._buf = np.empty((max(capacity, 2), *m.shape), dtype=np.float32)
        self._buf[0] = m
        self.count = 1

    def _prep(self, vol: np.ndarray) -> np.ndarray:
        from cryolive.plugin._mask_compute import bin2

        v = np.asarray(vol, dtype=np.float32)
        return bin2(v) if self.binned else v

    def append(self, vol: np.ndarray) -> None:
        if self.count == self._buf.shape[0]:
            grown = np.empty((2 * self.count, *self._buf.shape[1:]), dtype=np.float32)
            grown[: self.count] = self._buf
            self._buf = grown
        self._buf[self.count] = self._prep(vol)
        self.count += 1

    @property
    def data(self) -> np.ndarray:
        return self._buf[: self.count]


# ---------------------------------------------------------------------------------------------------- plots dock
class RefinePlotsWidget(QWidget):
    """FSC curves and the angular distribution of the running refinement."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.fsc = FSCCanvas()
        self.angular = AngularCanvas()
        self.fsc_title = QLabel("FSC: no refinement yet")
        self.angular_title = QLabel("angular distribution")
        titled_plots(self, [(self.fsc_title, self.fsc), (self.angular_title, self.angular)], stretch=[3, 2],
                     min_height=260)

    def clear(self, apix: float | None = None) -> None:
        if apix:
            self.fsc.set_nyquist(0.5 / apix)
        # a full redraw now if the axis changed (before the job starts), then only cheap blits
        self.fsc.ensure_background()
        self.angular.ensure_background()
        self.fsc.clear_plot()
        self.angular.clear_plot()
        self.fsc_title.setText("FSC: waiting for the first iteration")
        self.angular_title.setText("angular distribution")

    def show_fsc(self, it: Any) -> None:
        self.fsc.show_fsc(it.fsc)
        self.fsc_title.setText(f"iteration {it.iteration} ({it.search}): <b>{it.resolution_A:.2f} Å</b> "
                               f"masked+corrected (0.143), {it.resolution_unmasked_A:.2f} Å unmasked")

    def show_angular(self, it: Any) -> None:
        self.angular.show_distribution(it.angular_distribution)
        self.angular_title.setText(f"angular distribution, iteration {it.iteration} ({it.n_particles} particles)")


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
        self._history_stale = False
        self._history: MapHistory | None = None
        self._apix = 1.0
        self._translate: tuple = (0.0, 0.0, 0.0)
        self.sgd_steps_shown: list[int] = []
        self._build()
        QTimer.singleShot(0, self._ensure_plots_dock)  # once this dock is in the window

    # ------------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        v = self.viewer
        root = scrolling_layout(self)

        self.device_label = QLabel(f"Device: {device_label()}")
        self.device_label.setToolTip("where the job computes (set CRYOLIVE_BACKEND=numpy|cupy before starting "
                                     "napari to choose)")
        root.addWidget(self.device_label)

        form = QFormLayout()
        root.addLayout(form)
        self.particles_edit = QLineEdit()
        self.particles_edit.setPlaceholderText("particles.star or particles.cs")
        form.addRow("Particles", with_browse(self.particles_edit, self._browse_particles))
        self.ref_combo = LayerCombo(v, is_map_layer, none_text="(file below)")
        self.ref_combo.setToolTip("the reference map: an image layer, or a file")
        form.addRow("Reference", self.ref_combo)
        self.ref_edit = QLineEdit()
        self.ref_edit.setPlaceholderText("reference.mrc (when no layer is chosen)")
        form.addRow("", with_browse(self.ref_edit, self._browse_reference))
        self.mask_combo = LayerCombo(v, is_mask_candidate, none_text="(none: automatic)",
                                     auto_select=lambda layer: layer.metadata.get(MASK_KEY) == "solvent")
        self.mask_combo.setToolTip("a static solvent mask (a layer; written to an MRC in the output folder), "
                                   "or none for cryolive's automatic (dynamic) mask")
        form.addRow("Mask", self.mask_combo)
        self.mask_warning = QLabel()
        self.mask_warning.setWordWrap(True)
        self.mask_warning.setStyleSheet("QLabel { color: #ff8c1a; }")
        self.mask_warning.setVisible(False)
        form.addRow(self.mask_warning)
        self.sym = QComboBox()
        self.sym.setEditable(True)
        self.sym.addItems(SYMMETRIES)
        self.sym.setCurrentText(_DEFAULTS.symmetry)
        form.addRow("Symmetry", self.sym)
        self.lowpass = QDoubleSpinBox(minimum=1.0, maximum=200.0, decimals=1, suffix=" Å",
                                      value=_DEFAULTS.initial_lowpass_A)
        self.lowpass.setToolTip("initial low-pass of the reference")
        form.addRow("Initial low-pass", self.lowpass)
        self.max_iter = QSpinBox(minimum=1, maximum=200, value=_DEFAULTS.max_iter)
        form.addRow("Max iterations", self.max_iter)
        self.global_iters = QSpinBox(minimum=0, maximum=200, value=_DEFAULTS.global_iters)
        self.global_iters.setToolTip("iterations with a global pose search before local refinement")
        form.addRow("Global iterations", self.global_iters)
        self.sgd_steps = QSpinBox(minimum=0, maximum=5000, value=_DEFAULTS.sgd_steps)
        self.sgd_steps.setSpecialValueText("off")
        self.sgd_steps.setToolTip("minibatch (ab-initio) steps from the reference at low resolution before the "
                                  "refinement: lets it converge from a wrong starting map (~0.5 s per step); "
                                  "off (0) trusts the reference")
        form.addRow("Ab-initio steps", self.sgd_steps)
        self.use_poses = QCheckBox("start from the particles' poses")
        self.use_poses.setToolTip("local searches from iteration 1 around the poses in the particles file (a "
                                  "previous refinement's), as cryoSPARC's local refinement")
        self.use_poses.setChecked(_DEFAULTS.use_input_poses)
        # local searches from iteration 1: the global iterations do not apply
        self.use_poses.toggled.connect(lambda on: self.global_iters.setEnabled(not on))
        form.addRow(self.use_poses)
        self.relax_sym = QComboBox()
        self.relax_sym.setEditable(True)
        self.relax_sym.addItems(["none", *SYMMETRIES[1:]])
        self.relax_sym.setToolTip("pseudo-symmetry to relax (RELION's --relax_sym): local searches also try each "
                                  "mate of a particle's pose under this group and keep the best; the map keeps "
                                  "the symmetry above")
        form.addRow("Relax symmetry", self.relax_sym)

        more = QCollapsible("More parameters")
        more_w = QWidget()
        mf = QFormLayout(more_w)
        self.coarse_step = QDoubleSpinBox(minimum=0.5, maximum=60.0, decimals=2, suffix=" °",
                                          value=_DEFAULTS.coarse_step_deg)
        mf.addRow("Coarse angular step", self.coarse_step)
        self.levels = QSpinBox(minimum=1, maximum=8, value=_DEFAULTS.levels)
        mf.addRow("Search levels", self.levels)
        self.candidates = QSpinBox(minimum=1, maximum=100, value=_DEFAULTS.candidates)
        mf.addRow("Candidates per level", self.candidates)
        self.max_shift = QDoubleSpinBox(minimum=0.0, maximum=500.0, decimals=1, suffix=" px")
        self.max_shift.setSpecialValueText("auto (10 % of box)")
        self.max_shift.setValue(_DEFAULTS.max_shift_px or 0.0)
        mf.addRow("Max shift", self.max_shift)
        self.max_align = QDoubleSpinBox(minimum=0.0, maximum=100.0, decimals=1, suffix=" Å")
        self.max_align.setSpecialValueText("auto")
        self.max_align.setValue(_DEFAULTS.max_align_resolution_A or 0.0)
        mf.addRow("Align no finer than", self.max_align)
        self.minibatch = QSpinBox(minimum=0, maximum=50, value=_DEFAULTS.minibatch_iters)
        mf.addRow("Minibatch iterations", self.minibatch)
        self.scale_mode = QComboBox()
        self.scale_mode.addItems(["minimize", "reset"])
        self.scale_mode.setCurrentText(_DEFAULTS.scale_mode)
        mf.addRow("Per-particle scale", self.scale_mode)
        self.marginalize = QCheckBox("adaptive marginalisation")
        self.marginalize.setChecked(_DEFAULTS.marginalize)
        mf.addRow(self.marginalize)
        self.batch_size = QSpinBox(minimum=1, maximum=65536, value=_DEFAULTS.batch_size)
        mf.addRow("Batch size", self.batch_size)
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=_DEFAULTS.seed)
        mf.addRow("Seed", self.seed)
        more.addWidget(more_w)
        root.addWidget(more)

        form = QFormLayout()
        root.addLayout(form)
        self.out_edit = QLineEdit(str(Path.cwd() / "jobs"))
        self.out_edit.setToolTip("parent folder: the job writes a new job_refine_<nnn> folder inside it")
        form.addRow("Output folder", with_browse(self.out_edit, self._browse_out))
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
        self.log = QTextEdit()
        self.log.setReadOnly(True)
        self.log.setLineWrapMode(QTextEdit.LineWrapMode.WidgetWidth)
        self.log.setMinimumHeight(110)
        self.log.setPlaceholderText("per-iteration log (also in the job folder's log.txt)")
        root.addWidget(self.log, 1)

        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.ref_combo.currentIndexChanged.connect(self._ref_changed)
        self.mask_combo.currentIndexChanged.connect(self._check_mask_choice)
        self.scrub.toggled.connect(self._apply_scrub)
        self._ref_changed()
        self._check_mask_choice()

    def _browse_reference(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Reference map", "", "MRC maps (*.mrc *.map)")
        if path:
            self.ref_edit.setText(path)
            self.ref_combo.setCurrentIndex(0)

    def _ref_changed(self, *_: Any) -> None:
        self.ref_edit.setEnabled(self.ref_combo.current_layer() is None)

    def _check_mask_choice(self, *_: Any) -> None:
        layer = self.mask_combo.current_layer()
        text = ""
        if layer is not None:
            kind = layer.metadata.get(MASK_KEY)
            if kind in ("focus", "outside"):
                text = (f"'{layer.name}' is a focus mask: refinement expects a solvent mask around the whole "
                        "particle (make one in the Masks dock).")
            elif kind is None:
                data = np.asarray(layer.data)
                if float(data.min()) < -1e-3 or float(data.max()) > 1 + 1e-3:
                    text = f"'{layer.name}' is not a mask (values outside 0 … 1)."
        self.mask_warning.setText("⚠ " + text if text else "")
        self.mask_warning.setVisible(bool(text))

    # ------------------------------------------------------------------------------------------------ parameters
    def params(self) -> RefineParams:
        """The RefineParams the dock's fields describe (other fields keep their defaults)."""
        sym = self.sym.currentText().strip().upper() or "C1"
        relax = self.relax_sym.currentText().strip().upper()
        return dataclasses.replace(
            _DEFAULTS, symmetry=sym, initial_lowpass_A=float(self.lowpass.value()), max_iter=int(self.max_iter.value()),
            global_iters=int(self.global_iters.value()), sgd_steps=int(self.sgd_steps.value()),
            coarse_step_deg=float(self.coarse_step.value()),
            levels=int(self.levels.value()), candidates=int(self.candidates.value()),
            max_shift_px=float(self.max_shift.value()) or None,
            max_align_resolution_A=float(self.max_align.value()) or None,
            minibatch_iters=int(self.minibatch.value()), scale_mode=self.scale_mode.currentText(),
            marginalize=self.marginalize.isChecked(), batch_size=int(self.batch_size.value()),
            seed=int(self.seed.value()), use_input_poses=self.use_poses.isChecked(),
            relax_symmetry=None if relax in ("", "NONE", "C1") else relax)

    def set_params(self, p: RefineParams) -> None:
        """Fill the fields from a RefineParams (e.g. small settings for a quick look)."""
        self.sym.setCurrentText(p.symmetry)
        self.lowpass.setValue(p.initial_lowpass_A)
        self.max_iter.setValue(p.max_iter)
        self.global_iters.setValue(p.global_iters)
        self.sgd_steps.setValue(p.sgd_steps)
        self.coarse_step.setValue(p.coarse_step_deg)
        self.levels.setValue(p.levels)
        self.candidates.setValue(p.candidates)
        self.max_shift.setValue(p.max_shift_px or 0.0)
        self.max_align.setValue(p.max_align_resolution_A or 0.0)
        self.minibatch.setValue(p.minibatch_iters)
        self.scale_mode.setCurrentText(p.scale_mode)
        self.marginalize.setChecked(p.marginalize)
        self.batch_size.setValue(p.batch_size)
        self.seed.setValue(p.seed)
        self.use_poses.setChecked(p.use_input_poses)
        self.relax_sym.setCurrentText(p.relax_symmetry or "none")

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Check the inputs, write layer inputs to MRC files in the output folder, and start the job."""
        if self.running:
            return
        chosen = self._chosen_particles_and_out()
        if chosen is None:
            return
        particles, out = chosen
        params = self.params()
        self._input_layers: dict[str, str] = {}  # files written from layers -> layer names, for messages
        try:
            out.mkdir(parents=True, exist_ok=True)
            ref_path, ref_vol, ref_scale, ref_translate = self._reference_input(out)
            mask_path = self._mask_input(out)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(str(exc))
            return
        if self.mask_warning.isVisible():
            show_warning(self.mask_warning.text().lstrip("⚠ "))

        self._remember_job_folders(out)
        self._apix = float(ref_scale[-1])
        self._translate = tuple(ref_translate)
        ref_vol = np.asarray(ref_vol, dtype=np.float32)
        self._box = ref_vol.shape[-1]
        self._history = MapHistory(ref_vol, params.max_iter + 3)
        self._reset_display()
        self.sgd_steps_shown = []
        self.state = "running"
        self.log.clear()
        self._log(f"refinement of {particles} against {ref_path}" + (f" with mask {mask_path}" if mask_path else "")
                  + f" on {device_label()}")
        self._log("parameters: " + json.dumps({k: v for k, v in _params_dict(params).items()
                                              if v != getattr(_DEFAULTS, k) or k in ("symmetry", "max_iter")}))
        # the layers exist before the job runs: each iteration then only replaces their data
        self._show_map(ref_vol, "reference (iteration 0)")
        self._update_history()
        self._show_mask(np.zeros_like(ref_vol), 0)
        self._ensure_plots_dock()
        self.plots.clear(self._apix)

        worker = self._new_worker(_refine_stream, particles, str(ref_path), str(out), params,
                                  mask_path and str(mask_path), self.save_iterations.isChecked(),
                                  total=params.sgd_steps + params.max_iter, desc="cryolive refinement")
        # let Qt lay out the new layers and plots now, as part of the click, not while the job competes for the CPU
        QApplication.processEvents()
        # a full garbage collection now: napari's heap has some 300 000 objects, and a full collection (which
        # stops every thread for ~0.2 s on a slow machine) would otherwise soon come due while the job runs
        gc.collect()
        worker.start()

    # ------------------------------------------------------------------------------------------------ inputs
    def _reference_input(self, out: Path) -> tuple[Path, np.ndarray, tuple, tuple]:
        from cryolive.io import read_map

        layer = self.ref_combo.current_layer()
        if layer is None:
            text = self.ref_edit.text().strip()
            if not text:
                raise ValueError("Choose a reference: a map layer or an MRC file")
            path = Path(text).expanduser().resolve()
            vol, apix = read_map(path)
            return path, vol, (apix,) * 3, (0.0,) * 3
        src = layer.metadata.get("source")
        if src and Path(src).is_file() and layer.metadata.get("cryolive_kind") == "map":
            return Path(src), np.asarray(layer.data), tuple(layer.scale), tuple(layer.translate)
        path = write_layer_copy(layer, out, "gui_reference")
        self._input_layers[str(path)] = layer.name
        return path, np.asarray(layer.data), tuple(layer.scale), tuple(layer.translate)

    def _mask_input(self, out: Path) -> Path | None:
        layer = self.mask_combo.current_layer()
        if layer is None:
            return None
        if layer.metadata.get("preview"):
            raise ValueError(f"'{layer.name}' is a binned preview: press 'Create mask (full size)' in the Masks dock")
        path = write_layer_copy(layer, out, "gui_mask")
        self._input_layers[str(path)] = layer.name
        return path

    # ------------------------------------------------------------------------------------------------ results
    def _on_yielded(self, it: Any) -> None:
        if not self._accepting:
            return  # arrived after Stop: ignored
        if not isinstance(it, SGDStep):  # ab-initio steps are shown on the map layer, not kept in the history
            self._history.append(it.map)
        self._pending = it  # a newer iteration replaces one not yet drawn (only its map stays, in the history)
        if not self._render_scheduled:
            self._render_scheduled = True
            QTimer.singleShot(0, self._render)

    def _render(self) -> None:
        """Show the newest iteration, one piece per pass of the event loop (so no single pass is long)."""
        it, self._pending = self._pending, None
        if it is None:
            self._render_scheduled = False
            return
        if self.job_dir is None:
            self.job_dir = getattr(it, "job_dir", None) or self._find_job_dir()
            if self.job_dir is not None:
                self.job_label.setText(f"job folder: {self.job_dir}")
                self._log(f"job folder {self.job_dir}")
        if isinstance(it, SGDStep):
            self._steps = [lambda: self._show_sgd_step(it)]
            self._next_step()
            return
        title = f"iteration {it.iteration} ({it.search}): {it.resolution_A:.2f} Å"
        steps = [lambda: self._show_map(it.map, title),
                 self._update_history,
                 lambda: self._show_mask(it.mask, it.iteration)]
        if self.show_halves.isChecked():
            steps += [lambda: self._show_volume(HALF_LAYERS[0], it.half_a, visible=False),
                      lambda: self._show_volume(HALF_LAYERS[1], it.half_b, visible=False)]
        steps += [lambda: self.plots.show_fsc(it), lambda: self.plots.show_angular(it), lambda: self._report(it)]
        self._steps = steps
        self._next_step()

    def _show_sgd_step(self, step: SGDStep) -> None:
        """Show an ab-initio step's map (working box, resampled to the particle box) on the map layer and say
        how far the ab-initio phase is (a log line every 10th step)."""
        title = f"ab-initio step {step.step}/{step.n_steps} ({step.resolution_A:.1f} Å)"
        self._show_map(step.map_in_box(self._box), title)
        if not self.sgd_steps_shown:
            self.plots.fsc_title.setText("FSC: ab-initio steps first (no half maps before iteration 1)")
        self.sgd_steps_shown.append(step.step)
        elapsed = time.perf_counter() - self._t_start
        self.status_label.setText(f"ab-initio step {step.step} of {step.n_steps} at {step.resolution_A:.1f} Å "
                                  f"({elapsed:.0f} s so far); the refinement starts from its map")
        if step.milestone:
            self._log(f"ab-initio step {step.step}/{step.n_steps} at {step.resolution_A:.1f} Å "
                      f"({step.seconds:.2f} s per step)")

    def _report(self, it: Any) -> None:
        t = it.timings
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items() if k != "total_s")
        change = it.pose_summary.get("median_pose_change_deg")
        self._log(f"iteration {it.iteration} ({it.search}, {it.n_particles} particles, aligned to "
                  f"{it.align_resolution_A:.1f} Å): {it.resolution_A:.2f} Å masked+corrected, "
                  f"{it.resolution_unmasked_A:.2f} Å unmasked"
                  + (f"; median pose change {change:.2f}°" if change is not None and np.isfinite(change) else "")
                  + f"; {t.get('total_s', float('nan')):.1f} s ({parts})")
        elapsed = time.perf_counter() - self._t_start
        self.status_label.setText(f"iteration {it.iteration} of ≤ {self.max_iter.value()}: {it.resolution_A:.2f} Å "
                                  f"({elapsed:.0f} s so far)")
        self.iterations_shown.append(it.iteration)
        self.iterationShown.emit(it.iteration)

    @property
    def _scale3(self) -> tuple:
        return (self._apix,) * 3

    def own_layer(self, name: str) -> Image | None:
        """The layer this dock made under ``name`` (MAP_LAYER, HISTORY_LAYER, …), if still in the viewer."""
        layer = self._own.get(name)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _show_mask(self, mask: np.ndarray, iteration: int) -> None:
        self._own[MASK_LAYER] = set_mask_layer(self.viewer, MASK_LAYER, mask, (self._scale3, self._translate),
                                               "refinement", {"iteration": iteration},
                                               layer=self.own_layer(MASK_LAYER))

    def _show_volume(self, name: str, vol: np.ndarray, visible: bool = True) -> Image:
        data = np.ascontiguousarray(vol, dtype=np.float32)
        limits = robust_limits(data)
        layers = self.viewer.layers
        layer = self.own_layer(name)
        if layer is not None and layer.data.shape == data.shape:
            layer.data = data  # in place: the layer keeps the user's display settings
            lo, hi = layer.contrast_limits_range
            if limits[0] < lo or limits[1] > hi:
                layer.contrast_limits_range = (min(lo, limits[0]), max(hi, limits[1]))
            layer.contrast_limits = limits
            return layer
        if layer is not None:
            layers.remove(layer)
        layer = self.viewer.add_image(data, name=name, scale=self._scale3, translate=self._translate,
                                      contrast_limits=limits, visible=visible, metadata={"pixel_size": self._apix})
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
        hist = self._history
        stack = hist.data
        dims = self.viewer.dims
        f = 2.0 if hist.binned else 1.0
        scale = (1.0, *(f * a for a in self._scale3))
        translate = (0.0, *(t + (f - 1) * 0.5 * self._apix for t in self._translate))
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
        if layer is None or not layer.visible or not self._history_stale or self._history is None:
            return
        stack = self._history.data
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

    def _on_returned(self, value: Any) -> None:
        state, payload, elapsed = self._run_returned(value)
        if state == "finished":
            final = payload.final
            # the job's map.mrc is final.map: make sure the layer shows exactly that
            if not self.iterations_shown or self.iterations_shown[-1] != final.iteration:
                self._history.append(final.map)
                self._pending = final
                self._flush()
            self._log(f"finished in {elapsed:.1f} s: {final.resolution_A:.2f} Å (GSFSC 0.143); "
                      f"outputs in {self.job_dir}")
            self.status_label.setText(f"finished: {final.resolution_A:.2f} Å after {final.iteration} iterations "
                                      f"({elapsed:.0f} s)")
            show_info(f"Refinement finished: {final.resolution_A:.2f} Å"
                      + (f" ({self.job_dir.name})" if self.job_dir else ""))
        elif state == "stopped":
            where = (f"after iteration {payload}" if payload else
                     f"after ab-initio step {self.sgd_steps_shown[-1] if self.sgd_steps_shown else 0}, before the "
                     "first iteration")
            self._log(f"stopped {where}; the job folder says 'stopped' ({self.job_dir})")
            self.status_label.setText(f"stopped {where}")
        else:
            self._report_failure(payload, "Refinement")
        self.state = state
