"""How many particles can a global pose search get right with a perfect reference? The floor under the
"≤ 5 % of particles > 20° off" target of the parity benchmark.

The refinement's global search (coarse grid, then finer levels; :mod:`cryolive.alignment.search`) runs once with
the *true* map as the reference of both half sets, at a fixed alignment resolution, on a subset of a
``relion_parity.py`` case (particles.star, poses.star with the true poses, truth.mrc). For the particles it leaves
more than 20° off, it then scores the true pose (at the true origin) against the pose found, with the same map,
noise model and scale:

- **search misses**: the true pose scores higher: a better search would have found it;
- **ambiguous**: the wrong pose scores higher than the truth itself: no best-pose search can get it right at this
  resolution and noise (the Bayes floor of hard assignment).

    python benchmarks/global_oracle.py --case /tmp/parity/pseudo_d2_64_0.05 --every 4 --resolutions 8 --steps 7.5 5

Prints one table row per (alignment resolution, coarse step, candidates).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryolive.alignment.pixels import pixel_set
from cryolive.alignment.score import score_poses
from cryolive.backend import to_numpy, xp
from cryolive.io import ParticleStack, read_map, read_particles
from cryolive.projection import Projector
from cryolive.refinement.refine import RefineParams, _Refiner
from cryolive.rotations.symmetry import symmetric_angular_distance


def perfect_refiner(stack: ParticleStack, truth: np.ndarray, coarse_step_deg: float, candidates: int,
                    seed: int = 1, **params: Any) -> _Refiner:
    """A refiner whose two references are the true map ``(n, n, n)`` (masked as the refinement masks its
    references, and grey-scaled to the particles); ``candidates``: pose basins kept per search level; ``params``:
    other :class:`RefineParams` fields."""
    r = _Refiner(stack, truth, RefineParams(initial_lowpass_A=2.0 * stack.pixel_size + 0.01, seed=seed,
                                            coarse_step_deg=coarse_step_deg, candidates=candidates, **params))
    perfect = xp().asarray(truth) * r.ref_mask
    r.refs = [perfect, perfect]
    r.greyscale()
    return r


def log_likelihoods(r: _Refiner, idx: np.ndarray, rotations: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Score ``(len(idx),)`` of particles ``idx`` at one pose each (rotations ``(B, 3, 3)``, origins ``(B, 2)`` px)
    against the refiner's first reference, at its alignment radius and noise model, with the particles' scales."""
    pix = pixel_set(r.n, r._align_radius())
    y, c2w = r.scorer.whitened(r._images(idx), idx, pix, r.sigma2)
    cross, norm = score_poses(Projector(r.refs[0]), y, c2w, rotations, shifts_px, pix)
    a = r.state.scales[idx]
    return a * to_numpy(cross) - 0.5 * a * a * to_numpy(norm)


def global_oracle(stack: ParticleStack, truth: np.ndarray, true_rot: np.ndarray, true_shifts_A: np.ndarray,
                  resolution_A: float, coarse_step_deg: float, candidates: int = 5, **params: Any) -> dict[str, float]:
    """One global search against the true map aligned to ``resolution_A``; the fractions of all particles more
    than 20° off, missed by the search and ambiguous (see the module docstring), the median error (°), and the
    median log-likelihood by which the true pose beats the one found among the misses (``miss_gain``)."""
    r = perfect_refiner(stack, truth, coarse_step_deg, candidates, **params)
    refs = r.refs
    r.align_resolution = resolution_A
    r.iteration(1, np.arange(len(stack)), local=False, free_scale=False)
    r.refs = refs  # the iteration replaced them by its reconstructions: score against the truth again
    err = np.degrees(symmetric_angular_distance(true_rot, r.state.rotations, "C1"))
    wrong = np.nonzero(err > 20.0)[0]
    found = log_likelihoods(r, wrong, r.state.rotations[wrong], r.state.shifts[wrong])
    at_truth = log_likelihoods(r, wrong, true_rot[wrong], true_shifts_A[wrong] / stack.pixel_size)
    n = len(stack)
    gain = at_truth - found
    return {"wrong": len(wrong) / n, "missed": float(np.sum(gain > 0)) / n,
            "ambiguous": float(np.sum(gain <= 0)) / n, "median_deg": float(np.median(err)),
            "miss_gain": float(np.median(gain[gain > 0])) if np.any(gain > 0) else 0.0}


def _value(cls: type, name: str, text: str) -> Any:
    """``text`` as the type of ``cls``'s field ``name`` (a float for an optional number whose default is None)."""
    default = getattr(cls(), name)
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    return float(text) if default is None else type(default)(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, help="a relion_parity.py case folder (particles.star, poses.star, "
                                                  "truth.mrc)")
    ap.add_argument("--every", type=int, default=4, help="use every k-th particle")
    ap.add_argument("--resolutions", type=float, nargs="+", default=[8.0], help="alignment resolutions (Å)")
    ap.add_argument("--steps", type=float, nargs="+", default=[7.5], help="coarse angular steps (°)")
    ap.add_argument("--candidates", type=int, nargs="+", default=[RefineParams.candidates],
                    help="pose basins kept per search level")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="another RefineParams field (e.g. bound_sigma=100, levels=4)")
    a = ap.parse_args()
    extra = {k: _value(RefineParams, k, v) for k, v in (item.split("=", 1) for item in a.param)}
    case = Path(a.case)
    stack = read_particles(case / "particles.star")
    poses = read_particles(case / "poses.star", require_images=False)
    truth, _ = read_map(case / "truth.mrc")
    idx = np.arange(0, len(stack), a.every)
    stack = stack.subset(idx)
    true_rot, true_sh = poses.rotations[idx], poses.shifts[idx]
    print(f"{len(idx)} particles of {case}; the true map as both references, one global search {extra or ''}")
    print("| aligned to (Å) | coarse step (°) | candidates | > 20° off | search misses | ambiguous | median error (°) "
          "| misses: median LL gain of the truth | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for res in a.resolutions:
        for step in a.steps:
            for cands in a.candidates:
                t0 = time.perf_counter()
                o = global_oracle(stack, truth, true_rot, true_sh, res, step, cands, **extra)
                print(f"| {res:g} | {step:g} | {cands} | {o['wrong']:.1%} | {o['missed']:.1%} | {o['ambiguous']:.1%} | "
                      f"{o['median_deg']:.2f} | {o['miss_gain']:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
