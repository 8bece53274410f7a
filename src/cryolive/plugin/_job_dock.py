"""Run control shared by the docks that stream a job (Refinement, Classification; Motion uses job_stream and
ContinueRow).

A dock that mixes in :class:`JobDockMixin` (before ``QWidget``) calls :meth:`~JobDockMixin._init_run_state` first
in ``__init__`` (``viewer``, ``plots``, the worker and job state, ``state`` "idle"), then
:meth:`~JobDockMixin._add_run_controls` (Start/Pause/Stop, ``status_label``, ``job_label``) and
:meth:`~JobDockMixin._new_worker` (a worker over its stream with a :class:`JobHandle`); it provides ``_render()``,
``_on_yielded``, ``_on_returned``, ``particles_edit``/``out_edit``, ``log`` (a text area) and the ``runFinished``
signal; and sets ``JOB_GLOBS`` (its job folders' name patterns) and ``PLOTS_DOCK`` (the
name of its plots dock). The mixin holds Pause/Resume, Stop, the one-display-step-per-event-loop-pass drawing, the
end of a run, failure reports and the plots dock. A dock that can continue interrupted jobs provides
``_interrupted(out)`` (its model's ``(job folder, text)`` list) and ``continue_job(job_dir)``, and calls
:meth:`~JobDockMixin._watch_interrupted` once ``out_edit`` exists: a Continue button (and a list when there are
several; :class:`ContinueRow`) then offers the output folder's interrupted jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QBoxLayout,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from cryolive.backend import device_label
from cryolive.plugin._common import with_browse

#: delay between display steps (ms): a short real delay, not 0, since Qt runs chained zero-timers in one pass and
#: other timers (the viewer's) would wait
STEP_DELAY_MS = 5


class JobHandle:
    """One run, shared by the stream (worker thread) and the dock (main thread).

    ``stop`` asks the stream to end after the current iteration; ``gen`` is the job generator, closed by the dock
    after a cancel from the activity dock; ``worker`` lets :meth:`stop_now` resume a paused worker (used when the
    dock is destroyed with a job running: the job then still stops cleanly).
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.gen: Generator | None = None
        self.worker: Any = None

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()  # no-op when finished; else the job folder says "stopped"

    def stop_now(self) -> None:
        self.stop.set()
        w = self.worker
        if w is not None and w.is_paused:
            w.resume()


def job_stream(handle: Any, start: Callable[[], Generator]) -> Generator:
    """Yield the steps of the job generator ``start()`` until it ends or ``handle.stop`` (a ``threading.Event``)
    is set; return ``(state, value)``: "finished" (the job's result), "stopped" (the last step's ``iteration``, or
    None for steps without one) or "failed" (the exception). Runs in the worker thread; ``handle.gen`` is set to
    the job generator (the main thread closes it when the activity dock cancels the worker)."""
    stop = handle.stop
    last = 0
    try:
        gen = start()
        handle.gen = gen
        try:
            while True:
                try:
                    it = next(gen)
                except StopIteration as done:
                    return "finished", done.value
                if stop.is_set():
                    break
                yield it
                last = getattr(it, "iteration", None)
                if stop.is_set():
                    break
        finally:
            gen.close()  # on Stop: GeneratorExit in the job, which writes status "stopped"
        return "stopped", last
    except Exception as exc:  # noqa: BLE001 - handed to the main thread, shown as a notification
        return "failed", exc


class ContinueRow(QWidget):
    """A **Continue** button for the interrupted jobs of an output folder (a list before it when there are several,
    newest first), hidden when there are none. :meth:`watch` ties it to the output folder's line edit;
    :attr:`chosen` gives the job folder to go on with when the button is clicked. Used by every dock that can
    continue a job (those of :class:`JobDockMixin` and the Motion correction dock)."""

    chosen = Signal(object)  # the job folder (Path) to continue

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setToolTip("the interrupted jobs in the output folder (their process is gone), newest first")
        self.button = QPushButton("Continue")
        self.button.setToolTip("go on with the interrupted job in its folder, from its last checkpoint")
        row.addWidget(self.combo, 1)
        row.addWidget(self.button)
        self.combo.currentIndexChanged.connect(self._choice_changed)
        self.button.clicked.connect(self._clicked)
        self._out_edit: QLineEdit | None = None
        self._find: Callable[[Path], list[tuple[Path, str]]] = lambda _out: []
        self._busy: Callable[[], bool] = lambda: False
        self.setVisible(False)

    def watch(self, out_edit: QLineEdit, find: Callable[[Path], list[tuple[Path, str]]],
              busy: Callable[[], bool]) -> None:
        """Offer ``find(output folder)`` (``(job folder, text)``, newest first) now and whenever ``out_edit``
        changes; nothing while ``busy()`` (a run is going on)."""
        self._out_edit, self._find, self._busy = out_edit, find, busy
        out_edit.textChanged.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """List the interrupted jobs in the output folder (default ``jobs``); the row shows only when there is one
        (the list only when there are several) and no run is going."""
        edit = self._out_edit
        out = Path((edit.text() if edit is not None else "").strip() or "jobs").expanduser()
        jobs = [] if self._busy() else self._find(out)
        combo = self.combo
        combo.blockSignals(True)
        combo.clear()
        for job, text in jobs:
            combo.addItem(text, str(job))
        combo.blockSignals(False)
        combo.setVisible(len(jobs) > 1)
        self.setVisible(bool(jobs))
        self._choice_changed()

    def jobs(self) -> list[Path]:
        """The jobs offered, newest first."""
        return [Path(self.combo.itemData(i)) for i in range(self.combo.count())]

    def _choice_changed(self, *_: Any) -> None:
        job = self.combo.currentData()
        self.button.setText(f"Continue {Path(job).name}" if job else "Continue")
        self.button.setToolTip(self.combo.currentText())

    def _clicked(self) -> None:
        job = self.combo.currentData()
        if job:
            self.chosen.emit(Path(job))


class JobDockMixin:
    """Pause/Resume/Stop, paced drawing and run completion for a dock that streams a job generator."""

    JOB_GLOBS: tuple[str, ...] = ()
    PLOTS_DOCK: str = ""

    def _init_run_state(self, viewer: Any, plots: QWidget) -> None:
        """The state every streaming dock starts with: no worker, no job, nothing drawn, ``state`` "idle"."""
        self.viewer = viewer
        self.plots = plots
        self._plots_dock: Any = None
        self._worker: Any = None
        self._handle = JobHandle()
        self._accepting = False
        self._own: dict[str, Image] = {}  # the layers this dock made, by their intended name
        self._input_layers: dict[str, str] = {}
        self._out: Path | None = None
        self._known_jobs: set[Path] = set()
        self._t_start = 0.0
        self.job_dir: Path | None = None
        self.state = "idle"
        self._reset_display()

    def _reset_display(self) -> None:
        """Nothing pending, scheduled or shown yet (at construction and at the start of each run)."""
        self._pending: Any = None
        self._render_scheduled = False
        self._steps: list = []
        self.step_cpu_s: list[float] = []  # main-thread CPU time of each display step (kept small)
        self.iterations_shown: list[int] = []

    def _add_particles_field(self, root: QBoxLayout, placeholder: str, device_tip: str = "") -> QFormLayout:
        """The device line (``device_label``) and a form with the particles file (``particles_edit``), added to
        ``root``; the form is returned for more rows."""
        self.device_label = QLabel(f"Device: {device_label()}")
        if device_tip:
            self.device_label.setToolTip(device_tip)
        root.addWidget(self.device_label)

        form = QFormLayout()
        root.addLayout(form)
        self.particles_edit = QLineEdit()
        self.particles_edit.setPlaceholderText(placeholder)
        form.addRow("Particles", with_browse(self.particles_edit, self._browse_particles))
        return form

    def _add_out_field(self, form: QFormLayout, tooltip: str) -> None:
        """The output folder (``out_edit``; default ``jobs`` in the working folder), a row of ``form``."""
        self.out_edit = QLineEdit(str(Path.cwd() / "jobs"))
        self.out_edit.setToolTip(tooltip)
        form.addRow("Output folder", with_browse(self.out_edit, self._browse_out))

    def _add_run_controls(self, root: QBoxLayout) -> None:
        """Start / Pause / Stop, the status line and the job-folder line, added to ``root``."""
        row = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.pause_btn = QPushButton("Pause")
        self.stop_btn = QPushButton("Stop")
        self.pause_btn.setEnabled(False)
        self.stop_btn.setEnabled(False)
        for b in (self.start_btn, self.pause_btn, self.stop_btn):
            row.addWidget(b)
        root.addLayout(row)
        self.continue_row = ContinueRow()
        self.continue_combo = self.continue_row.combo
        self.continue_btn = self.continue_row.button
        root.addWidget(self.continue_row)
        self.status_label = QLabel("ready")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)
        self.job_label = QLabel("")
        self.job_label.setWordWrap(True)
        self.job_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        root.addWidget(self.job_label)

    # ------------------------------------------------------------------------------------------------ continue
    def _interrupted(self, out: Path) -> list[tuple[Path, str]]:
        """The interrupted jobs of this dock's kind in ``out``, newest first: ``(job folder, text)``."""
        return []

    def continue_job(self, job_dir: str | Path) -> None:
        """Go on with the interrupted job in ``job_dir`` (the dock's own run, as Start)."""

    def _watch_interrupted(self) -> None:
        """Offer the output folder's interrupted jobs now and whenever the folder changes."""
        self.continue_row.chosen.connect(self.continue_job)
        self.continue_row.watch(self.out_edit, self._interrupted, lambda: self.running)

    def refresh_interrupted(self, *_: Any) -> None:
        """List the interrupted jobs in the output folder (:meth:`ContinueRow.refresh`)."""
        self.continue_row.refresh()

    def interrupted_jobs(self) -> list[Path]:
        """The jobs the Continue row offers, newest first."""
        return self.continue_row.jobs()

    def _continue_started(self, job_dir: Path, status: str) -> None:
        """After ``_new_worker`` for a continued job: the job folder is known, the status says it continued."""
        self.job_dir = job_dir
        self.job_label.setText(f"job folder: {job_dir}")
        self.status_label.setText(status)
        self._log(f"{status.rstrip('…')} in {job_dir}")

    def _browse_particles(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Particles", "", "Particles (*.star *.cs)")
        if path:
            self.particles_edit.setText(path)

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.out_edit.text())
        if path:
            self.out_edit.setText(path)

    def _new_worker(self, stream: Callable[..., Generator], *args: Any, total: int, desc: str) -> Any:
        """A napari worker (not started) over ``stream(*args, handle)``, wired to this dock; the buttons and the
        status line say it runs."""
        handle = self._handle = JobHandle()
        self._accepting = True
        worker = create_worker(stream, *args, handle, _start_thread=False, _ignore_errors=True,
                               _progress={"total": total, "desc": desc})
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        worker.paused.connect(self._on_paused)
        worker.resumed.connect(self._on_resumed)
        self._worker = handle.worker = worker
        # if the dock goes away with the job running (viewer closed), the job still stops cleanly
        self.destroyed.connect(handle.stop_now)
        self._t_start = time.perf_counter()
        self.start_btn.setEnabled(False)
        self.pause_btn.setEnabled(True)
        self.pause_btn.setText("Pause")
        self.stop_btn.setEnabled(True)
        self.continue_row.setVisible(False)
        self.status_label.setText("running iteration 1…")
        return worker

    def _report_failure(self, error: Any, job: str) -> None:
        """Log, show and notify a failed run; files written from layers are named by their layer."""
        message = str(error)
        for path, name in self._input_layers.items():
            message = message.replace(path, f"{path} (written from layer '{name}')")
        self._log(f"FAILED: {message}")
        self.status_label.setText(f"failed: {message}")
        show_error(f"{job} failed: {message}")

    def own_layer(self, name: str) -> Image | None:
        """The layer this dock made under ``name`` (its intended name, e.g. "refinement map", "class 1"), if it is
        still in the viewer."""
        layer = self._own.get(name)
        return layer if layer is not None and layer in self.viewer.layers else None

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def worker(self) -> Any:
        """The running napari GeneratorWorker (None when idle)."""
        return self._worker

    def toggle_pause(self) -> None:
        """Pause after the current iteration, or resume."""
        w = self._worker
        if w is None:
            return
        if w.is_paused:
            w.resume()
            self.status_label.setText("resuming…")
        else:
            w.pause()
            self.pause_btn.setText("Resume")
            self.status_label.setText("pausing after the current iteration…")

    def stop(self) -> None:
        """Stop when the current iteration ends; the job folder then says "stopped"."""
        if self._worker is None:
            return
        self._handle.stop_now()
        self._accepting = False
        self.pause_btn.setEnabled(False)
        self.stop_btn.setEnabled(False)
        self.status_label.setText("stopping after the current iteration…")
        self._log("stop requested: the job stops when the current iteration ends")

    def _on_paused(self) -> None:
        self.pause_btn.setText("Resume")
        self.status_label.setText("paused (Resume continues with the next iteration)")
        self._log("paused")

    def _on_resumed(self) -> None:
        self.pause_btn.setText("Pause")
        self.status_label.setText("running…")
        self._log("resumed")

    # -------------------------------------------------------------------------------------------- results
    def _on_yielded(self, it: Any) -> None:
        if not self._accepting:
            return  # arrived after Stop: ignored
        self._receive(it)
        self._pending = it  # a newer iteration replaces one not yet drawn
        if not self._render_scheduled:
            self._render_scheduled = True
            QTimer.singleShot(0, self._render)

    def _receive(self, it: Any) -> None:
        """Hand an iteration to the model as it arrives (every one, even when a newer one is drawn instead)."""
        self.model.receive(it)

    def _take_pending(self) -> Any:
        """For ``_render``: the newest iteration not yet drawn, or None (then no render is scheduled any more)."""
        it, self._pending = self._pending, None
        if it is None:
            self._render_scheduled = False
        return it

    def _report(self, it: Any) -> None:
        """The log line and status line of an iteration on screen (the model's), and ``iterationShown``."""
        self._log(self.model.log_line(it))
        self.status_label.setText(self.model.status(it, time.perf_counter() - self._t_start))
        self._shown(it)

    def _shown(self, it: Any) -> None:
        self.iterations_shown.append(it.iteration)
        self.iterationShown.emit(it.iteration)

    def _show_finished(self, elapsed: float) -> None:
        """The model's text for a finished run: in the log, the status line and a notification."""
        log, status, notice = self.model.finished_text(elapsed)
        self._log(log)
        self.status_label.setText(status)
        (show_warning if "WARNING" in notice else show_info)(notice)

    def _next_step(self) -> None:
        """Run one display step, then schedule the next (or the newest pending iteration)."""
        if not self._steps:
            return
        step = self._steps.pop(0)
        t0 = time.thread_time()
        try:
            step()
        except RuntimeError:  # a deleted widget or layer while the viewer closes
            self._steps = []
        self.step_cpu_s.append(time.thread_time() - t0)
        if self._steps:
            QTimer.singleShot(STEP_DELAY_MS, self._next_step)
        elif self._pending is not None:
            QTimer.singleShot(STEP_DELAY_MS, self._render)
        else:
            self._render_scheduled = False

    def _flush(self) -> None:
        """Finish drawing at once (at the end of a run)."""
        while self._steps:
            self._steps.pop(0)()
        if self._pending is not None:
            self._render()
            while self._steps:
                self._steps.pop(0)()
        self._render_scheduled = False

    # -------------------------------------------------------------------------------------------- parameters
    def field(self, name: str) -> Any:
        """The magicgui widget of the parameter field ``name`` (in the main form or in the one folded away)."""
        return self.main_form.widgets.get(name) or self.more_form.widgets[name]

    def _form_params(self) -> Any:
        """The parameters the two forms describe (fields they do not show: as last given to
        :meth:`_set_form_params`)."""
        return self.more_form.value(self.main_form.value(self._base_params))

    def _set_form_params(self, p: Any) -> None:
        """Show the parameters ``p`` in the two forms; fields they do not show are kept for the next run."""
        self._base_params = p
        self.main_form.set_value(p)
        self.more_form.set_value(p)

    # -------------------------------------------------------------------------------------------- start
    def _chosen_run(self) -> tuple[str, Path, Any] | None:
        """The particles file, the output folder and the parameters of a run to start; None when a run is going
        on or no particles file is chosen (said to the user)."""
        if self.running:
            return None
        chosen = self._chosen_particles_and_out()
        if chosen is None:
            return None
        particles, out = chosen
        return particles, out, self.params()

    def _run_inputs(self, read_inputs: Callable[[], Any]) -> tuple[str, Path, Any, Any] | None:
        """:meth:`_chosen_run` and ``read_inputs()`` (the job's map inputs, read once the output folder is made
        and the last run's input layers forgotten); None when any of it fails (said to the user)."""
        run = self._chosen_run()
        if run is None:
            return None
        particles, out, params = run
        self._input_layers = {}
        try:
            out.mkdir(parents=True, exist_ok=True)
            inputs = read_inputs()
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(str(exc))
            return None
        return particles, out, params, inputs

    def _continue_status(self, job_dir: str | Path) -> tuple[Path, str] | None:
        """For :meth:`continue_job`: the job folder and its status once the model has taken the interrupted job
        in it; None when a run is going on or the job cannot go on (said to the user)."""
        if self.running:
            return None
        job_dir = Path(job_dir)
        try:
            status = self.model.continue_from(job_dir)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            show_error(f"{job_dir}: cannot continue ({exc})")
            self.refresh_interrupted()
            return None
        self._input_layers = {}
        return job_dir, status

    def _chosen_particles_and_out(self) -> tuple[str, Path] | None:
        """The particles file and the output folder (absolute; default ``jobs``) from the dock's fields; None, after
        telling the user, when no particles file is chosen."""
        particles = self.particles_edit.text().strip()
        if not particles:
            show_error("Choose a particles file (RELION .star or cryoSPARC .cs)")
            return None
        return particles, Path(self.out_edit.text().strip() or "jobs").expanduser().resolve()

    def _remember_job_folders(self, out: Path) -> None:
        """At Start: the output folder and the job folders already in it, so that :meth:`_find_job_dir` finds the
        new one."""
        self._out = out
        self._known_jobs = {path for pattern in self.JOB_GLOBS for path in out.glob(pattern)}
        self.job_dir = None

    def _run_returned(self, value: tuple[str, Any]) -> tuple[str, Any, float]:
        """When the worker returns ``(state, payload)``: draw what is pending, find the job folder, and give
        ``(state, payload, seconds since Start)``."""
        state, payload = value
        self._flush()
        if self.job_dir is None:
            self.job_dir = self._find_job_dir()
        return state, payload, time.perf_counter() - self._t_start

    def _find_job_dir(self) -> Path | None:
        """The newest job folder under the output folder that was not there at Start."""
        if self._out is None:
            return None
        found: set[Path] = set()
        for pattern in self.JOB_GLOBS:
            found |= set(self._out.glob(pattern))
        new = sorted(found - self._known_jobs)
        return new[-1] if new else None

    def _on_finished(self) -> None:
        w = self._worker
        if w is not None and w.abort_requested:
            # cancelled from the activity dock: the stream was not resumed, close the job here
            self._handle.close()
            self.state = "stopped"
            self._log("cancelled; the job folder says 'stopped'")
            self.status_label.setText("cancelled")
        self._worker = self._handle.worker = None
        self._accepting = False
        self.start_btn.setEnabled(True)
        self.pause_btn.setEnabled(False)
        self.pause_btn.setText("Pause")
        self.stop_btn.setEnabled(False)
        self.refresh_interrupted()
        self.runFinished.emit(self.state)

    def _log(self, text: str) -> None:
        self.log.append(f"[{time.strftime('%H:%M:%S')}] {text}")

    def _ensure_plots_dock(self) -> None:
        window = getattr(self.viewer, "window", None)
        if window is None:
            return
        dock = self._plots_dock
        try:
            if dock is not None and dock.isVisible():
                return
        except RuntimeError:  # the dock was deleted
            dock = None
        if dock is not None:
            dock.show()
            return
        self._plots_dock = window.add_dock_widget(self.plots, name=self.PLOTS_DOCK, area="bottom",
                                                  add_vertical_stretch=False)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.stop()
        super().closeEvent(event)
