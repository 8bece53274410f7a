"""Where the bundled sample data live (``sample_data/`` at the top of the repository, shipped in the wheel)."""

from __future__ import annotations

from pathlib import Path


def sample_dir() -> Path:
    """The folder holding the bundled sample data set."""
    here = Path(__file__).resolve().parent
    for cand in (here / "sample_data", here.parents[1] / "sample_data"):
        if (cand / "particles.star").exists():
            return cand
    raise FileNotFoundError("cryolive sample data not found: run `make sample-data` to regenerate it")


def sample_path(name: str) -> Path:
    """Path of one sample file (``particles.star``, ``particles.mrcs``, ``reference.mrc``, ``truth_map.mrc``)."""
    return sample_dir() / name
