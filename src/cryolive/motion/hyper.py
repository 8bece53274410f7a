"""Cross-validated hyper-parameter search along rays of fixed ``(theta, z)`` with growing total strength ``r``.

For each ray the strength grows geometrically (``r0 * growth^k``). At each step the trajectories of every search
micrograph are fitted on the LOW-frequency fraction of the Fourier components (``fit_fraction`` of the components
inside the Nyquist disc, by radius) against the particle's OWN half map; the score applies them to the remaining
HIGH-frequency components and correlates with the OPPOSITE half map::

    score = -sum_{i,f} CCv_if(d_if) / sum_{i,f} ||X_if,high|| ||R_i,opp,high||      (whitened by the noise power)

Lower is better. A ray retires once its trajectories go to ~zero (activity, the 75th percentile of the local path
length, below ``retire_px``), at ``max_r``, or (a shortcut of ours) after ``patience`` steps without improving its
own best score.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryolive.io import InputError
from cryolive.io._atomic import atomic_write_text
from cryolive.motion.trajectories import Hyper, activity, fit_trajectories, interp_maps

__all__ = ["Hyper", "RAYS", "THOROUGHNESS", "SearchPoint", "check_overrides", "load_hyper", "rays_for",
           "cv_score", "save_hyper"]

#: (theta rad, z Å) of the rays, in the order they are added with more thoroughness
RAYS = ((0.8, 300.0), (0.3, 1000.0), (1.3, 100.0), (0.3, 300.0), (1.3, 1000.0), (0.8, 100.0),
        (0.05, 300.0), (1.5, 300.0), (0.8, 3000.0), (0.3, 100.0), (1.3, 300.0), (0.8, 1000.0))
THOROUGHNESS = {"fast": 3, "balanced": 6, "extensive": 12}


@dataclass(frozen=True)
class SearchPoint:
    """One step of one ray: its hyper-parameters, cross-validation score (lower is better) and activity (px)."""

    ray: int
    step: int
    hyper: Hyper
    score: float
    activity: float


def rays_for(thoroughness: str) -> list[tuple[float, float]]:
    """The rays ``(theta, z_A)`` searched for ``fast``, ``balanced`` or ``extensive``."""
    key = thoroughness.lower()
    if key not in THOROUGHNESS:
        raise ValueError(f"thoroughness must be one of {sorted(THOROUGHNESS)}, not {thoroughness!r}")
    return list(RAYS[:THOROUGHNESS[key]])


def check_overrides(r: float | None, theta: float | None, z_A: float | None) -> Hyper | None:
    """The overriding hyper-parameters: all three or none (else InputError)."""
    given = [v is not None for v in (r, theta, z_A)]
    if all(given):
        return Hyper(float(r), float(theta), float(z_A))
    if any(given):
        raise InputError("hyper-parameter overrides (--override-r, --override-theta, --override-z): give all three "
                         "of r (total prior strength), theta (balance) and z (correlation distance, Å), or none of "
                         "them")
    return None


def cv_score(cv_maps: np.ndarray, cv_norm: float, traj: np.ndarray, window_px: int, up: int) -> float:
    """Cross-validation score of trajectories ``(N, F, 2)`` on the high-frequency maps ``(N, F, S, S)``."""
    n, f = cv_maps.shape[:2]
    val, _ = interp_maps(cv_maps.reshape(n * f, *cv_maps.shape[2:]), traj.reshape(-1, 2), window_px, up)
    return float(-val.sum() / max(cv_norm, 1e-30))


def search_step(mics: list, hyper: Hyper, window_px: int, up: int, init: list | None = None
                ) -> tuple[float, float, list[np.ndarray]]:
    """Fit every search micrograph with ``hyper``: ``(score, mean activity, local trajectories per micrograph)``.

    ``mics``: objects with ``fit_maps``, ``cv_maps``, ``cv_norm``, ``positions_A`` (see :mod:`.polish`); ``init``:
    starting trajectories per micrograph (the previous step of the ray) or None.
    """
    score, acts, trajs = 0.0, [], []
    for k, mic in enumerate(mics):
        loc = fit_trajectories(mic.fit_maps, mic.positions_A, hyper, window_px, up,
                               init=None if init is None else init[k])
        score += cv_score(mic.cv_maps, mic.cv_norm, loc, window_px, up)
        acts.append(activity(loc))
        trajs.append(loc)
    return score, float(np.mean(acts)), trajs


def save_hyper(path: str | os.PathLike, hyper: Hyper, extra: dict | None = None) -> None:
    """Write the hyper-parameters as JSON (``r``, ``theta``, ``z_A`` plus derived values and ``extra``)."""
    atomic_write_text(path, json.dumps({**hyper.as_dict(), **(extra or {})}, indent=2) + "\n")


def load_hyper(path: str | os.PathLike) -> Hyper:
    """Read hyper-parameters written by :func:`save_hyper`; InputError naming the file when malformed."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
        return Hyper(float(d["r"]), float(d["theta"]), float(d["z_A"]))
    except FileNotFoundError:
        raise InputError(f"{p}: hyper-parameter file not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p}: not a hyper-parameter JSON with r, theta and z_A ({exc})") from None
