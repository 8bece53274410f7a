"""Plots written into job folders (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
