"""Matplotlib canvases for the docks: FSC curves and the angular distribution (drawn on the main thread)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy, QSplitter, QVBoxLayout, QWidget

_BG = "#262930"  # napari's dark theme
_FG = "#d6d0ce"


def _style_axes(ax: Any) -> None:
    ax.set_facecolor(_BG)
    for spine in ax.spines.values():
        spine.set_color(_FG)
    ax.tick_params(colors=_FG, labelsize=8)
    ax.xaxis.label.set_color(_FG)
    ax.yaxis.label.set_color(_FG)
    ax.title.set_color(_FG)


class _Canvas(FigureCanvasQTAgg):
    """A small dark figure whose changing artists are blitted over a cached background.

    A full draw (first show, resize, axis-limit change) caches the static part; an update then restores it and
    draws only the ``animated`` artists — a few milliseconds instead of a full matplotlib redraw, so the main
    thread stays free while a job runs. Titles live in Qt labels beside the canvas for the same reason.
    """

    def __init__(self, height: float, margins: dict) -> None:
        fig = Figure(figsize=(4.0, height), dpi=90, facecolor=_BG)
        fig.subplots_adjust(**margins)
        super().__init__(fig)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(int(height * 55))
        self.ax = fig.add_subplot(111)
        _style_axes(self.ax)
        self._animated: list[Any] = []
        self._background: Any = None
        self.full_draws = 0
        self.updates = 0
        self.mpl_connect("draw_event", self._on_draw)

    def _on_draw(self, event: Any) -> None:
        self.full_draws += 1
        self._background = self.copy_from_bbox(self.figure.bbox)
        for artist in self._animated:
            self.ax.draw_artist(artist)

    def ensure_background(self) -> None:
        """Do the full draw now when the cached background is missing or stale."""
        if self._background is None:
            self.draw()

    def _refresh(self) -> None:
        """Redraw the animated artists on the cached background (or do a full draw when there is none)."""
        self.updates += 1
        if self._background is None:
            self.draw_idle()
            return
        self.restore_region(self._background)
        for artist in self._animated:
            self.ax.draw_artist(artist)
        self.blit(self.figure.bbox)


class FSCCanvas(_Canvas):
    """Gold-standard FSC curves (masked, corrected, unmasked, phase-randomised), the 0.143 line, the resolution."""

    CURVES = (("unmasked", "fsc_unmasked", "#8fa3bf", "-", 1.2),
              ("masked", "fsc_masked", "#ffc61a", "-", 1.2),
              ("phase-randomised", "fsc_phase_randomized", "#9a9a9a", ":", 1.0),
              ("corrected", "fsc_corrected", "#ff5a36", "-", 2.0))

    def __init__(self) -> None:
        super().__init__(2.6, {"left": 0.11, "right": 0.76, "bottom": 0.17, "top": 0.97})
        ax = self.ax
        self.lines = {}
        for label, _, color, style, width in self.CURVES:
            (self.lines[label],) = ax.plot([], [], style, color=color, lw=width, label=label, animated=True)
        ax.axhline(0.143, color=_FG, lw=0.8, ls="--")
        ax.text(0.99, 0.16, "0.143", color=_FG, fontsize=7, ha="right", transform=ax.get_yaxis_transform())
        self.res_line = ax.axvline(0.0, color="#ff5a36", lw=0.8, ls="--", visible=False, animated=True)
        self._animated = [*self.lines.values(), self.res_line]
        ax.set_ylim(-0.1, 1.05)
        ax.set_xlim(0, 0.15)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{1 / x:.1f}" if x > 0 else "∞"))
        ax.set_xlabel("resolution (Å)", fontsize=8)
        ax.set_ylabel("FSC", fontsize=8)
        leg = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
        for t in leg.get_texts():
            t.set_color(_FG)
        self.draw()  # cache the background now, not while a job runs

    def set_nyquist(self, freq_max: float) -> None:
        """Frequency axis from 0 to ``freq_max`` (1/Å); a full redraw only when it changes."""
        if abs(self.ax.get_xlim()[1] - freq_max) > 1e-9:
            self.ax.set_xlim(0, freq_max)
            self._background = None

    def clear_plot(self) -> None:
        for line in self.lines.values():
            line.set_data([], [])
        self.res_line.set_visible(False)
        self._refresh()

    def show_fsc(self, fsc: Any) -> None:
        f = np.asarray(fsc.freq, dtype=float)[1:]  # shell 0 is the DC term
        for label, attr, *_ in self.CURVES:
            curve = getattr(fsc, attr, None)
            self.lines[label].set_data(([], []) if curve is None else (f, np.asarray(curve, float)[1:]))
        res = fsc.res_0143
        ok = res is not None and np.isfinite(res) and res > 0
        self.res_line.set_visible(bool(ok))
        if ok:
            self.res_line.set_xdata([1.0 / res, 1.0 / res])
        if f.size:
            self.set_nyquist(float(f[-1]))
        self._refresh()


class AngularCanvas(_Canvas):
    """Particle counts over tilt (0–180°) × rotation (−180–180°): log(1 + count) relative to the maximum."""

    def __init__(self) -> None:
        super().__init__(2.1, {"left": 0.13, "right": 0.97, "bottom": 0.2, "top": 0.96})
        ax = self.ax
        self.image = ax.imshow(np.zeros((18, 36)), origin="lower", aspect="auto", extent=(-180, 180, 0, 180),
                               cmap="magma", interpolation="nearest", vmin=0, vmax=1, animated=True)
        self._animated = [self.image]
        cbar = self.figure.colorbar(self.image, ax=ax, pad=0.01, fraction=0.05, ticks=[0, 1])
        cbar.ax.tick_params(colors=_FG, labelsize=7)
        cbar.ax.set_yticklabels(["0", "max"])
        cbar.set_label("log(1 + particles)", color=_FG, fontsize=7)
        ax.set_xticks([-180, -90, 0, 90, 180])
        ax.set_yticks([0, 45, 90, 135, 180])
        ax.set_xlabel("rotation (°)", fontsize=8)
        ax.set_ylabel("tilt (°)", fontsize=8)
        self.draw()

    def clear_plot(self) -> None:
        self.image.set_data(np.zeros((18, 36)))
        self._refresh()

    def show_distribution(self, counts: np.ndarray) -> None:
        c = np.log1p(np.asarray(counts, dtype=float))
        self.image.set_data(c / max(float(c.max()), 1e-12))
        self._refresh()


def titled_plots(widget: QWidget, plots: list[tuple[QLabel, QWidget]], stretch: list[int] | None = None,
                 min_height: int = 240) -> None:
    """Lay ``(title, canvas)`` pairs side by side in ``widget`` (a horizontal splitter, titles centred above their
    canvases): the layout of the docks' bottom plot panels."""
    lay = QVBoxLayout(widget)
    lay.setContentsMargins(2, 2, 2, 2)
    split = QSplitter(Qt.Orientation.Horizontal)
    for title, canvas in plots:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(0)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title.setWordWrap(True)
        v.addWidget(title)
        v.addWidget(canvas, 1)
        split.addWidget(box)
    for i, f in enumerate(stretch or []):
        split.setStretchFactor(i, f)
    lay.addWidget(split)
    widget.setMinimumHeight(min_height)
