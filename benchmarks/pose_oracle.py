"""How well can the pose search do with a perfect reference? A diagnostic for the angular-error target.

The refinement's local search is run with the *true* map as the reference for both half sets (not the refined
half maps), starting at the true poses, aligned to a fixed resolution, for two passes (the second with the noise
spectrum measured at the first pass's poses). The median angular error it reaches is what the search and the data
allow when the map is perfect; compare it with the Cramér-Rao bound that ``bench_refine.py`` prints.

    python benchmarks/pose_oracle.py --data /tmp/bench10k/c1 --n 1000

``--data`` is a folder written by ``bench_refine.py`` (or ``cryolive simulate``): particles.star, truth/.
Prints one table row per (alignment resolution, coarse step); the finest search step is coarse / 2^levels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cryolive.backend import xp
from cryolive.io import read_map, read_particles
from cryolive.refinement.refine import RefineParams, _Refiner
from cryolive.rotations.euler import angular_distance


def oracle_errors(stack, truth: np.ndarray, true_rot: np.ndarray, true_shifts_A: np.ndarray, resolution_A: float,
                  coarse_step_deg: float, levels: int) -> tuple[float, float]:
    """Median angular error (degrees) and origin error (pixels) of two local passes against the true map."""
    apix = stack.pixel_size
    sub = stack.with_poses(true_rot, true_shifts_A)
    r = _Refiner(sub, truth, RefineParams(use_input_poses=True, coarse_step_deg=coarse_step_deg, levels=levels,
                                          initial_lowpass_A=2.0 * apix + 0.01))
    perfect = xp().asarray(truth) * r.ref_mask
    for it in (1, 2):
        r.refs = [perfect, perfect]
        r.align_resolution = resolution_A
        r.iteration(it, np.arange(len(sub)), local=True, free_scale=False)
    ang = np.degrees(angular_distance(r.state.rotations, true_rot))
    shift = np.linalg.norm(r.state.shifts - true_shifts_A / apix, axis=1)
    return float(np.median(ang)), float(np.median(shift))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="simulated data folder (particles.star, truth/)")
    ap.add_argument("--n", type=int, default=1000, help="particles used (the first N)")
    ap.add_argument("--resolutions", type=float, nargs="+", default=[6.8, 4.0], help="alignment resolutions (Å)")
    ap.add_argument("--steps", type=float, nargs="+", default=[7.5, 3.75], help="coarse angular steps (°)")
    ap.add_argument("--levels", type=int, default=RefineParams.levels)
    a = ap.parse_args()
    data = Path(a.data)
    stack = read_particles(data / "particles.star")
    truth, _ = read_map(data / "truth" / "truth_map.mrc")
    t = np.load(data / "truth" / "truth.npz")
    idx = np.arange(min(a.n, len(stack)))
    stack = stack.subset(idx)
    print(f"{len(idx)} particles of {data}; true map as the reference, two local passes from the true poses")
    print("| aligned to (Å) | finest step (°) | median angular error (°) | median shift error (px) | time (s) |")
    print("|---|---|---|---|---|")
    for res in a.resolutions:
        for step in a.steps:
            t0 = time.perf_counter()
            ang, sh = oracle_errors(stack, truth, t["rotations"][idx], t["shifts_A"][idx], res, step, a.levels)
            print(f"| {res:g} | {step / 2**a.levels:.2f} | {ang:.2f} | {sh:.2f} | {time.perf_counter() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
