"""The Motion correction dock: run reference-based motion correction and watch trajectories live.

Threading follows the Refinement dock: :func:`_motion_stream` runs ``motion_job`` in a napari ``GeneratorWorker``
and only yields :class:`~cryolive.motion.MotionStep` objects; the main thread renders the latest step (older
pending steps are dropped) into named layers — the micrograph's frame sum (Image) and each particle's
trajectory magnified ``×N`` around its position (one Tracks track per particle) — and into the dose-weight and
cross-validation canvases. Stop sets a ``threading.Event``; the stream closes the job generator after the
current step (the job folder then says "stopped").
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
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

from cryolive.plugin._common import scrolling_layout, with_browse
from cryolive.plugin._job_dock import job_stream

MIC_LAYER = "motion micrograph"
TRACKS_PREFIX = "motion trajectories"


def _motion_stream(args: dict, stop: threading.Event) -> Generator:
    """Yield the job's steps until it ends or ``stop`` is set; return ``(state, value)`` (runs in the worker)."""
    from cryolive.jobs.motion import motion_job

    return (yield from job_stream(SimpleNamespace(stop=stop, gen=None), lambda: motion_job(**args)))


def track_data(positions: np.ndarray, traj: np.ndarray, magnify: float) -> np.ndarray:
    """Tracks rows ``(N F, 4)`` = ``[particle, frame, y, x]``: each trajectory ``(N, F, 2)`` px (x, y), minus its mean,
    magnified and drawn around the particle position ``(N, 2)`` px (x, y)."""
    n, f = traj.shape[:2]
    rel = (traj - traj.mean(axis=1, keepdims=True)) * magnify
    ids = np.repeat(np.arange(n), f)
    frames = np.tile(np.arange(f), n)
    y = (positions[:, None, 1] + rel[..., 1]).ravel()
    x = (positions[:, None, 0] + rel[..., 0]).ravel()
    return np.stack([ids, frames, y, x], axis=1).astype(float)


class _Plot(FigureCanvasQTAgg):
    def __init__(self, height: float = 2.4) -> None:
        super().__init__(Figure(figsize=(4.0, height), dpi=80))
        self.setMinimumHeight(int(height * 60))
        self.ax = self.figure.add_subplot(111)
        self.cbar: Any = None

    def show_weights(self, w: np.ndarray) -> None:
        """Dose weights (frames x shells) with a colour bar."""
        self.ax.clear()
        im = self.ax.imshow(w, aspect="auto", origin="lower", cmap="magma")
        if self.cbar is None:
            self.cbar = self.figure.colorbar(im, ax=self.ax)
        else:
            self.cbar.update_normal(im)
        self.ax.set_xlabel("frequency shell")
        self.ax.set_ylabel("frame")
        self.ax.set_title("dose weights", fontsize=9)
        self.draw_idle()

    def show_search(self, search: tuple) -> None:
        """Cross-validation score per ray against the total prior strength (lower is better)."""
        self.ax.clear()
        for ray in sorted({s.ray for s in search}):
            pts = [s for s in search if s.ray == ray]
            self.ax.semilogx([s.hyper.r for s in pts], [s.score for s in pts], "o-", ms=3, label=f"ray {ray}")
        if search:
            best = min(search, key=lambda s: s.score)
            self.ax.plot([best.hyper.r], [best.score], "k*", ms=10)
            self.ax.legend(fontsize=7)
        self.ax.set_xlabel("prior strength r")
        self.ax.set_ylabel("CV score")
        self.ax.set_title("hyper-parameter search", fontsize=9)
        self.draw_idle()


class MotionWidget(QWidget):
    """Inputs (particles, movies, half maps, mask, previous hyper/dose), Start/Stop, live trajectories and plots."""

    stepShown = Signal(str)  # the stage of the step now on screen
    runFinished = Signal(str)  # "finished", "stopped" or "failed"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker: Any = None
        self._stop = threading.Event()
        self._pending: Any = None
        self._scheduled = False
        self.tracks_layer: Any = None
        lay = scrolling_layout(self)
        form = QFormLayout()
        self.edits: dict[str, QLineEdit] = {}
        for key, label, is_dir in (("particles", "particles STAR", False), ("movies", "movies folder or STAR", True),
                                   ("half_a", "half map A", False), ("half_b", "half map B", False),
                                   ("mask", "mask (optional)", False), ("out", "output folder", True),
                                   ("hyper", "hyper JSON (optional)", False),
                                   ("dose", "dose weights (optional)", False)):
            form.addRow(label, self._path_row(key, is_dir))
        self.edits["out"].setText(str(Path.cwd() / "jobs"))
        self.stage = QComboBox()
        self.stage.addItems(["final", "dose", "hyper"])
        self.thoroughness = QComboBox()
        self.thoroughness.addItems(["fast", "balanced", "extensive"])
        self.target = QSpinBox()
        self.target.setRange(1, 10_000_000)
        self.target.setValue(1000)
        self.magnify = QSpinBox()
        self.magnify.setRange(1, 200)
        self.magnify.setValue(10)
        self.float16 = QCheckBox("save particles in float16")
        form.addRow("final stage", self.stage)
        form.addRow("search thoroughness", self.thoroughness)
        form.addRow("target particles", self.target)
        form.addRow("trajectory magnification ×", self.magnify)
        form.addRow(self.float16)
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
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self.dose_plot = _Plot()
        self.search_plot = _Plot()
        lay.addWidget(self.dose_plot)
        lay.addWidget(self.search_plot)
        lay.addStretch(1)

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

    def job_args(self) -> dict:
        """Arguments of ``motion_job`` from the inputs (empty optional fields are None)."""
        from cryolive.motion import MotionParams

        def val(key: str) -> str | None:
            t = self.edits[key].text().strip()
            return t or None

        params = MotionParams(final_stage=self.stage.currentText(), thoroughness=self.thoroughness.currentText(),
                              target_particles=self.target.value(), float16=self.float16.isChecked())
        return {"particles_path": val("particles"), "movies": val("movies"), "half_a_path": val("half_a"),
                "half_b_path": val("half_b"), "mask_path": val("mask"), "out": val("out") or "jobs",
                "params": params, "hyper_path": val("hyper"), "dose_path": val("dose")}

    def start(self) -> Any:
        """Start a job in a worker; returns the worker (None when inputs are missing)."""
        args = self.job_args()
        missing = [k for k in ("particles_path", "movies", "half_a_path", "half_b_path") if not args[k]]
        if missing or self.busy:
            show_error(f"motion correction: missing {', '.join(missing)}" if missing else "a job is running")
            return None
        self._stop.clear()
        worker = create_worker(_motion_stream, args, self._stop, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.start_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        self.status.setText("running…")
        worker.start()
        return worker

    def stop(self) -> None:
        """Ask the job to stop after the current step."""
        self._stop.set()
        self.status.setText("stopping after the current step…")

    def _on_yielded(self, step: Any) -> None:
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
        self.status.setText(f"{step.stage}: {step.done}/{step.total} (micrograph {step.micrograph + 1} of "
                            f"{step.n_micrographs}) — {step.message}")
        if step.frame_sum is not None and step.trajectories is not None:
            self._show_micrograph(step)
        if step.dose_weights is not None:
            self.dose_plot.show_weights(step.dose_weights)
        if step.search:
            self.search_plot.show_search(step.search)
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
        name = f"{TRACKS_PREFIX} (×{mag})"
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
        if state == "failed":
            show_error(f"motion correction failed: {payload}")
            self.status.setText(f"failed: {payload}")
        elif state == "finished":
            h = payload.hyper
            text = "finished" + (f": r {h.r:.3g}, θ {h.theta:.2f}, z {h.z_A:g} Å" if h is not None else "")
            self.status.setText(text)
            show_info(f"motion correction {text}")
        else:
            self.status.setText("stopped")
        self._state = state

    def _on_finished(self) -> None:
        self._render()
        self._worker = None
        self.start_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)
        self.runFinished.emit(getattr(self, "_state", "stopped"))
