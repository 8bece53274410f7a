"""Reference-based motion correction (Bayesian polishing, Zivanov, Nakane & Scheres 2019). Qt-free.

One verb per module: :mod:`.movies` (find and check the movies; :mod:`.movie_io` reads MRC and TIFF, :mod:`.gain`
the gain reference), :mod:`.references` (project each particle's
own and opposite half map), :mod:`.patches` (per-frame particle patches and their transforms),
:mod:`.trajectories` (joint per-micrograph trajectory fit with acceleration and spatial priors), :mod:`.hyper`
(cross-validated hyper-parameter search), :mod:`.dose` (empirical dose weights from the FCC), :mod:`.correct`
(dose-weighted motion-corrected particles) and :mod:`.polish` (the :func:`motion` generator that runs them all:
Bayesian polishing). The job that writes a folder is :mod:`cryolive.jobs.motion`.

Conventions: a trajectory ``d[i, f] = (dx, dy)`` (pixels) is the displacement of particle ``i``'s content in frame
``f`` relative to where the reference puts it (the pick coordinate minus the origin, RELION convention); the
corrected frame is the frame shifted by ``-d``.

Backends: the reference projections run on the chosen backend (:mod:`.references` hands them back as NumPy);
everything else (patches, trajectory fits, dose weights, corrected particles) computes on the host with NumPy,
whichever backend is chosen.
"""

from cryolive.motion.hyper import Hyper
from cryolive.motion.polish import MotionParams, MotionResult, MotionStep, motion

__all__ = ["Hyper", "MotionParams", "MotionResult", "MotionStep", "motion"]
