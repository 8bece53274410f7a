"""Benchmark of reference-based motion correction: time per micrograph and per stage.

Simulates a moderate movie set (default 6 micrographs of 384 px, ~64 particles each, box 48, 24 frames), runs the
whole job (search, dose weights, final) and prints a table; also the trajectory error and FSC-0.5 resolution vs
truth of reconstructions from the corrected and the uncorrected (frame-sum) particles.

    .venv/bin/python benchmarks/bench_motion.py [--micrographs 6] [--size 384] [--frames 24]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from cryolive.backend import device_label
from cryolive.io import read_map, read_star
from cryolive.jobs.motion import motion_job
from cryolive.jobs.reconstruct import backproject_halves, finalize_halves
from cryolive.motion import MotionParams
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.simulator.movies import MovieSimParams, load_truth, simulate_movies


def _fsc05(star: Path, truth_map: np.ndarray, apix: float) -> float:
    stack = read_star(star)
    *_, (_, recs) = backproject_halves(stack, stack.half_set)
    _, _, full = finalize_halves(*recs)
    return resolution_at(fsc(full, truth_map), truth_map.shape[0], apix, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--micrographs", type=int, default=6)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--box", type=int, default=48)
    ap.add_argument("--snr", type=float, default=1.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sp = MovieSimParams(n_micrographs=a.micrographs, mic_size=a.size, n_frames=a.frames, box=a.box, snr=a.snr,
                            particles_per_micrograph=64, seed=7)
        t0 = time.perf_counter()
        sim = simulate_movies(Path(tmp) / "sim", sp)
        t_sim = time.perf_counter() - t0
        stack = read_star(sim / "particles.star")
        p = MotionParams(target_particles=120)
        gen = motion_job(str(sim / "particles.star"), str(sim / "movies"), str(sim / "half_A.mrc"),
                         str(sim / "half_B.mrc"), str(sim / "mask.mrc"), str(Path(tmp) / "jobs"), p)
        n_steps = 0
        while True:
            try:
                next(gen)
                n_steps += 1
            except StopIteration as stop:
                result = stop.value
                break
        truth = load_truth(sim)
        errs = []
        for idx, t in result.trajectories.values():
            tt = truth.trajectories[idx]
            e = (t - t.mean(1, keepdims=True)) - (tt - tt.mean(1, keepdims=True))
            errs.append(np.sqrt((e**2).mean()))
        rho = spearmanr(result.dose.bfactors, truth.bfactors).statistic
        tmap, apix = read_map(sim / "truth_map.mrc")
        corrected = _fsc05(Path(tmp) / "jobs" / "job_motion_001" / "particles.star", tmap, apix)
        uncorrected = _fsc05(sim / "particles.star", tmap, apix)
    t = result.timings
    m = a.micrographs
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {device_label()}")
    print(f"data: {m} micrographs {a.size}^2 px, {len(stack)} particles (box {a.box}, {sp.pixel_size} Å/px), "
          f"{a.frames} frames; simulated in {t_sim:.1f} s; {len(result.search)} search steps")
    print(f"{'stage':28s} {'total s':>9s} {'per micrograph s':>17s}")
    rows = [("read movies + patches", t.get("read_s", 0) + t.get("patches_s", 0)),
            ("references (projection)", t.get("references_s", 0)), ("rigid track", t.get("rigid_s", 0)),
            ("hyper search", t.get("hyper_s", 0)), ("trajectory fit (dose+final)", t.get("trajectories_s", 0)),
            ("dose weights (FCC + fit)", t.get("dose_s", 0)), ("final write", t.get("final_write_s", 0)),
            ("total", t.get("total_s", 0))]
    for name, v in rows:
        print(f"{name:28s} {v:9.2f} {v / m:17.2f}")
    print(f"hyper-parameters: r {result.hyper.r:.3g}, theta {result.hyper.theta:.2f}, z {result.hyper.z_A:g} Å")
    print(f"trajectory RMS error vs truth: mean {np.mean(errs):.3f} px, max {np.max(errs):.3f} px")
    print(f"B-factor Spearman vs truth: {rho:.3f}")
    print(f"FSC 0.5 vs truth map: corrected {corrected:.2f} Å, uncorrected frame sum {uncorrected:.2f} Å")


if __name__ == "__main__":
    main()
