"""Plots written into job folders (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryolive.resolution.fsc import FSCResult


def plot_fsc(result: FSCResult, path: str | os.PathLike, title: str = "") -> None:
    """FSC curves (unmasked, masked, phase-randomised, corrected) against resolution, with 0.143 and 0.5 lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    f = result.freq
    for curve, label, style in ((result.fsc_unmasked, "unmasked", "C0-"), (result.fsc_masked, "masked", "C1-"),
                                (result.fsc_phase_randomized, "phase randomised", "C2:"),
                                (result.fsc_corrected, "corrected", "C3-")):
        if curve is not None:
            ax.plot(f[1:], curve[1:], style, label=label)
    ax.axhline(0.143, color="k", lw=0.8, ls="--")
    ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    if result.res_0143:
        ax.axvline(1.0 / result.res_0143, color="k", lw=0.6)
        ax.text(1.0 / result.res_0143, 0.9, f" {result.res_0143:.2f} Å", fontsize=9)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_class_sizes(sizes: np.ndarray, path: str | os.PathLike, title: str = "class sizes") -> None:
    """Class sizes (fractions, ``(iterations, K)``) per iteration as stacked bars, one colour per class."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    sizes = np.atleast_2d(np.asarray(sizes, dtype=float))
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    its = np.arange(1, sizes.shape[0] + 1)
    bottom = np.zeros(sizes.shape[0])
    for c in range(sizes.shape[1]):
        ax.bar(its, 100 * sizes[:, c], bottom=bottom, color=f"C{c % 10}", label=f"class {c + 1}")
        bottom += 100 * sizes[:, c]
    ax.set_xlabel("iteration")
    ax.set_ylabel("particles (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: object, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG under a temporary name, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)  # type: ignore[attr-defined]
    os.replace(tmp, path)
