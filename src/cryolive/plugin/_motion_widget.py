"""The Motion correction dock: run reference-based motion correction and watch trajectories live.

The dock is a view of a :class:`~cryolive.plugin.motion_model.MotionRunModel` (the job arguments, progress, the
newest step, the status line). The job parameters come from :class:`~cryolive.plugin._param_form.ParamForm`
over the spec'd fields of :class:`~cryolive.motion.MotionParams` (final stage, search thoroughness, target
particles and float16 output at once, the others under "More parameters"); fields without a spec keep the values
last given to :meth:`MotionWidget.set_params`.

Threading follows the Refinement dock: :func:`_motion_stream` runs ``motion_job`` in a napari ``GeneratorWorker``
and only yields :class:`~cryolive.motion.MotionStep` objects; the main thread hands each to the model and renders
the latest step (older pending steps are dropped) into named layers — the micrograph's frame sum (Image) and each
particle's trajectory magnified ``×N`` around its position (one Tracks track per particle) — and into the
dose-weight and cross-validation canvases. Stop sets a ``threading.Event``; the stream closes the job generator
after the current step (the job folder then says "stopped").

Under Start, a **Continue** row (:class:`~cryolive.plugin._job_dock.ContinueRow`, as in the Refinement and
Classification docks) offers the output folder's interrupted motion jobs (their process is gone; a
``checkpoint.npz`` left), newest first; it runs ``continue_motion_job(job_dir)`` through the same worker, stream,
Stop, layers and plots as Start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from cryolive.motion import MotionParams
from cryolive.params import param_spec
from cryolive.plugin._common import scrolling_layout, with_browse
from cryolive.plugin._job_dock import ContinueRow, job_stream
from cryolive.plugin._param_form import ParamForm
from cryolive.plugin._plots import MotionPlotCanvas
from cryolive.plugin.motion_model import (
    PATH_FIELDS,
    TRACKS_PREFIX,
    MotionRunModel,
    interrupted_motions,
    job_args,
    missing_inputs,
    search_curves,
    track_data,
    tracks_layer_name,
)

__all__ = ["MIC_LAYER", "TRACKS_PREFIX", "MotionWidget", "track_data"]

MIC_LAYER = "motion micrograph"
#: the parameters shown at once; the other spec'd fields of MotionParams are under "More parameters"
MAIN_FIELDS = ("final_stage", "thoroughness", "target_particles", "float16")


def _motion_stream(args: dict, stop: threading.Event) -> Generator:
    """Yield the job's steps until it ends or ``stop`` is set; return ``(state, value)`` (runs in the worker)."""
    from cryolive.jobs.motion import motion_job

    return (yield from job_stream(SimpleNamespace(stop=stop, gen=None), lambda: motion_job(**args)))


def _continue_stream(job_dir: str, stop: threading.Event) -> Generator:
    """:func:`_motion_stream` for an interrupted job that goes on in its folder ``job_dir``."""
    from cryolive.jobs.motion import continue_motion_job

    return (yield from job_stream(SimpleNamespace(stop=stop, gen=None), lambda: continue_motion_job(job_dir)))


class MotionWidget(QWidget):
    """Inputs (particles, movies, half maps, mask, previous hyper/dose), Start/Stop, live trajectories and plots."""

    stepShown = Signal(str)  # the stage of the step now on screen
    runFinished = Signal(str)  # "finished", "stopped" or "failed"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model = MotionRunModel()
        self._base_params = MotionParams()
        self._worker: Any = None
        self._stop = threading.Event()
        self._pending: Any = None
        self._scheduled = False
        self.tracks_layer: Any = None
        lay = scrolling_layout(self)
        form = QFormLayout()
        self.edits: dict[str, QLineEdit] = {}
        for key, label, is_dir in PATH_FIELDS:
            form.addRow(label, self._path_row(key, is_dir))
        self.edits["out"].setText(str(Path.cwd() / "jobs"))
        lay.addLayout(form)
        self.form = ParamForm(MotionParams, MAIN_FIELDS)
        lay.addWidget(self.form.native)
        more = QCollapsible("More parameters")
        self.more_form = ParamForm(MotionParams, [n for n in param_spec(MotionParams) if n not in MAIN_FIELDS])
        more.addWidget(self.more_form.native)
        lay.addWidget(more)
        form = QFormLayout()
        self.magnify = QSpinBox()
        self.magnify.setRange(1, 200)
        self.magnify.setValue(10)
        self.magnify.setToolTip("the trajectories are drawn this many times longer than they are")
        form.addRow("trajectory magnification ×", self.magnify)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.start_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.stop)
        row.addWidget(self.start_btn)
        row.addWidget(self.stop_btn)
        lay.addLayout(row)
        self.continue_row = ContinueRow()
        self.continue_row.chosen.connect(self.continue_job)
        lay.addWidget(self.continue_row)
        self.progress = QProgressBar()
        self.status = QLabel(self.model.status_text)
        self.status.setWordWrap(True)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self.dose_plot = MotionPlotCanvas()
        self.search_plot = MotionPlotCanvas()
        lay.addWidget(self.dose_plot)
        lay.addWidget(self.search_plot)
        lay.addStretch(1)
        self.continue_row.watch(self.edits["out"], interrupted_motions, lambda: self.busy)

    def _path_row(self, key: str, is_dir: bool) -> QWidget:
        """A line edit for input ``key`` (kept in ``self.edits``) with a "…" file dialog (a folder dialog for the
        output folder; the movies field takes a STAR file or a typed folder)."""
        edit = self.edits[key] = QLineEdit()

        def pick() -> None:
            path = (QFileDialog.getExistingDirectory(self, key) if is_dir and key == "out"
                    else QFileDialog.getOpenFileName(self, key)[0])
            if path:
                edit.setText(path)

        return with_browse(edit, pick)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def params(self) -> MotionParams:
        """The MotionParams the forms describe (fields they do not show: as last given to set_params)."""
        return self.more_form.value(self.form.value(self._base_params))

    def set_params(self, p: MotionParams) -> None:
        """Show a MotionParams (fields the forms do not show are kept for the next run)."""
        self._base_params = p
        self.form.set_value(p)
        self.more_form.set_value(p)

    def job_args(self) -> dict:
        """Arguments of ``motion_job`` from the inputs (empty optional fields are None)."""
        return job_args({key: edit.text() for key, edit in self.edits.items()}, self.params())

    def start(self) -> Any:
        """Start a job in a worker; returns the worker (None when inputs are missing)."""
        args = self.job_args()
        missing = missing_inputs(args)
        if missing or self.busy:
            show_error(f"motion correction: missing {', '.join(missing)}" if missing else "a job is running")
            return None
        self.model.start(args)
        return self._run(_motion_stream, args)

    def interrupted_jobs(self) -> list[Path]:
        """The interrupted motion jobs the Continue row offers, newest first."""
        return self.continue_row.jobs()

    def refresh_interrupted(self) -> None:
        """List the output folder's interrupted motion jobs in the Continue row (hidden when none or busy)."""
        self.continue_row.refresh()

    def continue_job(self, job_dir: str | Path) -> Any:
        """Go on with the interrupted motion job in ``job_dir`` (as ``cryolive motion --continue``) in a worker, with
        the same layers, plots and Stop as Start; returns the worker (None when it cannot go on, said to the
        user)."""
        if self.busy:
            show_error("a job is running")
            return None
        try:
            self.model.continue_from(job_dir)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"motion correction: cannot continue ({exc})")
            self.refresh_interrupted()
            return None
        return self._run(_continue_stream, str(job_dir))

    def _run(self, stream: Callable[..., Generator], arg: Any) -> Any:
        """Start ``stream(arg, stop)`` in a worker wired to this dock (the model knows the run); returns it."""
        self._stop.clear()
        worker = create_worker(stream, arg, self._stop, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.start_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        self.refresh_interrupted()  # hidden while the job runs
        self.status.setText(self.model.status_text)
        worker.start()
        return worker

    def stop(self) -> None:
        """Ask the job to stop after the current step."""
        self._stop.set()
        self.model.stopping()
        self.status.setText(self.model.status_text)

    def _on_yielded(self, step: Any) -> None:
        self.model.update(step)
        self._pending = step
        if not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self._render)

    def _render(self) -> None:
        self._scheduled = False
        step, self._pending = self._pending, None
        if step is None:
            return
        try:
            self.show_step(step)
        except RuntimeError:  # a deleted widget or layer while the viewer closes
            self._pending = None

    def show_step(self, step: Any) -> None:
        """Put one step on screen (main thread only)."""
        self.progress.setMaximum(max(step.total, 1))
        self.progress.setValue(step.done)
        self.status.setText(self.model.status_text)
        if self.model.has_micrograph(step):
            self._show_micrograph(step)
        if step.dose_weights is not None:
            self.dose_plot.show_weights(step.dose_weights)
        if step.search:
            self.search_plot.show_search(*search_curves(step.search))
        self.stepShown.emit(step.stage)

    def _show_micrograph(self, step: Any) -> None:
        b = step.bin_factor
        if MIC_LAYER in self.viewer.layers:
            layer = self.viewer.layers[MIC_LAYER]
            layer.data = step.frame_sum
            layer.scale = (b, b)
            layer.reset_contrast_limits()
        else:
            self.viewer.add_image(step.frame_sum, name=MIC_LAYER, scale=(b, b), colormap="gray")
        mag = self.magnify.value()
        data = track_data(step.positions, step.trajectories, mag)
        name = tracks_layer_name(mag)
        n_frames = step.trajectories.shape[1]
        if self.tracks_layer is not None and self.tracks_layer in self.viewer.layers:
            self.tracks_layer.data = data
            self.tracks_layer.name = name
        else:
            self.tracks_layer = self.viewer.add_tracks(data, name=name, tail_length=n_frames, tail_width=2,
                                                       colormap="turbo", color_by="track_id", blending="translucent")
        self.tracks_layer.tail_length = n_frames
        self.viewer.dims.set_current_step(0, n_frames - 1)

    def _on_returned(self, value: Any) -> None:
        state, payload = value
        text = self.model.finish(state, payload)
        self.status.setText(text)
        if state == "failed":
            show_error(f"motion correction failed: {payload}")
        elif state == "finished":
            show_info(f"motion correction {text}")

    def _on_finished(self) -> None:
        self._render()
        self._worker = None
        self.start_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)
        self.refresh_interrupted()
        state = self.model.state
        self.runFinished.emit(state if state in ("finished", "failed") else "stopped")
