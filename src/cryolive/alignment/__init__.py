"""Alignment of particle images to projections: the one engine refinement, 3D classification, heterogeneous
refinement and the ab-initio steps score and search poses with (docs/maths.md, "The score" and "Pose search").

* :mod:`~cryolive.alignment.pixels` selects the Fourier pixels a score sums over (sorted by radius, so a coarser
  level's set is a prefix) and the real-space window of the images scored;
* :mod:`~cryolive.alignment.noise` models the noise: ``sigma^2`` per shell, read at pixels or as an image, and
  estimated from image or residual power;
* :mod:`~cryolive.alignment.score` makes the terms of the Gaussian log-likelihood (whitened images, CTF at the
  pixels, the score of given poses, the residual power at them);
* :mod:`~cryolive.alignment.grid` projects a reference along the coarse rotation grid;
* :mod:`~cryolive.alignment.search` searches poses coarse to fine (global grid, then local lattices) under a
  :class:`SearchPlan`.
"""

from cryolive.alignment.grid import GridProjections, project_grid
from cryolive.alignment.noise import add_to_shells, noise_image, shell_power, sigma_at
from cryolive.alignment.pixels import PixelSet, pixel_set, soft_window
from cryolive.alignment.score import Scorer, ctf_at, score_poses, shift_phases, whitened_terms
from cryolive.alignment.search import (
    Candidates,
    SearchPlan,
    global_level,
    local_level,
    origin_range_px,
    search_poses,
    shift_grid,
)

__all__ = [
    "Candidates",
    "GridProjections",
    "PixelSet",
    "Scorer",
    "SearchPlan",
    "add_to_shells",
    "ctf_at",
    "global_level",
    "local_level",
    "noise_image",
    "origin_range_px",
    "pixel_set",
    "project_grid",
    "score_poses",
    "search_poses",
    "shell_power",
    "shift_grid",
    "shift_phases",
    "sigma_at",
    "soft_window",
    "whitened_terms",
]
