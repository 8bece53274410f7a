"""Matplotlib canvases for the docks (drawn on the main thread) and the docks' bottom plot panels.

Refinement: gold-standard FSC curves and the angular distribution (:class:`RefinePlotsWidget`). Classification:
class sizes per iteration and each class's FSC (:class:`ClassPlotsWidget`), in the class colours
(:func:`class_color`) the class layers share. Motion correction: dose weights and the hyper-parameter search
(:class:`MotionPlotCanvas`). The panels only draw what they are given; their titles come from the run models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy, QSplitter, QVBoxLayout, QWidget

_BG = "#262930"  # napari's dark theme
_FG = "#d6d0ce"
#: class colours, shared by the classification plots and the class layers' colormaps (matplotlib's tab10)
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf")


def class_color(k: int) -> str:
    """Class ``k``'s (1-based) colour ("#rrggbb") in the plots and its layer."""
    return CLASS_COLORS[(k - 1) % len(CLASS_COLORS)]


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


# ---------------------------------------------------------------------------------------------------- refinement
class RefinePlotsWidget(QWidget):
    """FSC curves and the angular distribution of the running refinement (the Refinement dock's bottom panel)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.fsc = FSCCanvas()
        self.angular = AngularCanvas()
        self.fsc_title = QLabel("FSC: no refinement yet")
        self.angular_title = QLabel("angular distribution")
        titled_plots(self, [(self.fsc_title, self.fsc), (self.angular_title, self.angular)], stretch=[3, 2],
                     min_height=260)

    def clear(self, apix: float | None = None) -> None:
        """Empty plots before a run; ``apix`` (Å) sets the FSC's frequency axis (to Nyquist)."""
        if apix:
            self.fsc.set_nyquist(0.5 / apix)
        # a full redraw now if the axis changed (before the job starts), then only cheap blits
        self.fsc.ensure_background()
        self.angular.ensure_background()
        self.fsc.clear_plot()
        self.angular.clear_plot()
        self.fsc_title.setText("FSC: waiting for the first iteration")
        self.angular_title.setText("angular distribution")

    def show_fsc(self, fsc: Any, title: str) -> None:
        """Draw an FSCResult's curves under ``title`` (HTML)."""
        self.fsc.show_fsc(fsc)
        self.fsc_title.setText(title)

    def show_angular(self, counts: np.ndarray, title: str) -> None:
        """Draw the angular distribution ``counts`` (18 tilt x 36 rotation bins) under ``title``."""
        self.angular.show_distribution(counts)
        self.angular_title.setText(title)


# ---------------------------------------------------------------------------------------------------- classification
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
        """Draw every iteration's sizes (``history[i]``: iteration i + 1's ``(K,)`` fractions of the particles)."""
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
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
            leg = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                            borderaxespad=0, reverse=True)
            for t in leg.get_texts():
                t.set_color(_FG)
        else:
            ax.set_xlim(0.4, 5.6)
        self.draw_idle()


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
        """``k`` empty curves (a full redraw when their number or the axis changes); ``apix`` in Å."""
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
        """Curves ``(K, shells)``; shell i is at frequency ``i / (2 (shells − 1) apix)`` (``apix`` in Å)."""
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

    def show_iteration(self, sizes: list[np.ndarray], sizes_title: str, class_fsc: np.ndarray, apix: float,
                       fsc_title: str) -> None:
        """Draw every iteration's class sizes so far (one ``(K,)`` array each) and the newest ``(K, shells)``
        class FSC curves (class box pixel size ``apix`` Å) under their titles."""
        self.sizes.show_sizes(sizes)
        self.fsc.show_fsc(class_fsc, apix)
        self.sizes_title.setText(sizes_title)
        self.fsc_title.setText(fsc_title)


# ---------------------------------------------------------------------------------------------------- motion
class MotionPlotCanvas(FigureCanvasQTAgg):
    """One plot of the Motion correction dock: the dose weights, or the hyper-parameter search."""

    def __init__(self, height: float = 2.4) -> None:
        super().__init__(Figure(figsize=(4.0, height), dpi=80))
        self.setMinimumHeight(int(height * 60))
        self.ax = self.figure.add_subplot(111)
        self.cbar: Any = None

    def show_weights(self, w: np.ndarray) -> None:
        """Dose weights ``(frames, shells)`` with a colour bar."""
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

    def show_search(self, rays: dict[int, tuple[np.ndarray, np.ndarray]], best: tuple[float, float] | None) -> None:
        """Cross-validation score against the total prior strength ``r`` per ray (``{ray: (r, score)}``), the
        best point starred (lower scores are better)."""
        self.ax.clear()
        for ray, (r, score) in rays.items():
            self.ax.semilogx(r, score, "o-", ms=3, label=f"ray {ray}")
        if best is not None:
            self.ax.plot([best[0]], [best[1]], "k*", ms=10)
            self.ax.legend(fontsize=7)
        self.ax.set_xlabel("prior strength r")
        self.ax.set_ylabel("CV score")
        self.ax.set_title("hyper-parameter search", fontsize=9)
        self.draw_idle()
