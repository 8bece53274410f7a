"""Benchmark of reference-based motion correction: time per micrograph and per stage.

Simulates a moderate movie set (default 6 micrographs of 384 px, ~64 particles each, box 48, 24 frames), runs the
whole job (search, dose weights, final) and prints a table; also the trajectory error and FSC-0.5 resolution vs
truth of reconstructions from the corrected and the uncorrected (frame-sum) particles.

    .venv/bin/python benchmarks/bench_motion.py [--micrographs 6] [--size 384] [--frames 24] [--snr 1.0]
        [--ppm 64] [--spacing PX] [--target 120] [--drift 4]

``--ppm`` is the number of particles per micrograph asked for (capped by the simulator's grid of non-overlapping
cells, ``--spacing`` px apart, default ceil(1.05 box)); ``--target`` the particles the hyper search uses. Besides the
job's trajectories it reports, as baselines, the error of no correction (zero trajectories) and of the job's rigid
track alone (the particle-summed track of each micrograph).
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
from cryolive.motion import MotionParams
from cryolive.motion import polish as motion_core
from cryolive.reconstruction import backproject_halves, finalize_halves
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
    ap.add_argument("--ppm", type=int, default=64)
    ap.add_argument("--spacing", type=int, default=None)
    ap.add_argument("--target", type=int, default=120)
    ap.add_argument("--drift", type=float, default=MovieSimParams.drift_px,
                    help="global drift of each micrograph, first to last frame (px)")
    a = ap.parse_args()
    rigid_tracks: dict[str, np.ndarray] = {}
    prepare = motion_core._Context.prepare

    def recording_prepare(self, name):  # records each micrograph's rigid track for the rigid-only baseline
        mic = prepare(self, name)
        rigid_tracks[name] = mic.rigid.copy()
        return mic

    motion_core._Context.prepare = recording_prepare
    with tempfile.TemporaryDirectory() as tmp:
        sp = MovieSimParams(n_micrographs=a.micrographs, mic_size=a.size, n_frames=a.frames, box=a.box, snr=a.snr,
                            particles_per_micrograph=a.ppm, spacing_px=a.spacing, drift_px=a.drift, seed=7)
        t0 = time.perf_counter()
        sim = simulate_movies(Path(tmp) / "sim", sp)
        t_sim = time.perf_counter() - t0
        stack = read_star(sim / "particles.star")
        p = MotionParams(target_particles=a.target)
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
        errs, zero_errs, rigid_errs = [], [], []
        for name, (idx, t) in result.trajectories.items():
            tt = truth.trajectories[idx]
            tt = tt - tt.mean(1, keepdims=True)
            e = (t - t.mean(1, keepdims=True)) - tt
            errs.append(np.sqrt((e**2).mean()))
            zero_errs.append(np.sqrt((tt**2).mean()))
            rg = rigid_tracks[name] - rigid_tracks[name].mean(0)
            rigid_errs.append(np.sqrt(((rg[None] - tt) ** 2).mean()))
        rho = spearmanr(result.dose.bfactors, truth.bfactors).statistic
        tmap, apix = read_map(sim / "truth_map.mrc")
        corrected = _fsc05(Path(tmp) / "jobs" / "job_motion_001" / "particles.star", tmap, apix)
        uncorrected = _fsc05(sim / "particles.star", tmap, apix)
    t = result.timings
    m = a.micrographs
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {device_label()}")
    print(f"snr {a.snr:g}; data: {m} micrographs {a.size}^2 px, {len(stack)} particles (box {a.box}, "
          f"{sp.pixel_size} Å/px), "
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
    print(f"  baselines: no correction (true motion RMS) mean {np.mean(zero_errs):.3f} px; "
          f"rigid track alone mean {np.mean(rigid_errs):.3f} px, max {np.max(rigid_errs):.3f} px")
    print(f"B-factor Spearman vs truth: {rho:.3f}")
    print(f"FSC 0.5 vs truth map: corrected {corrected:.2f} Å, uncorrected frame sum {uncorrected:.2f} Å")


if __name__ == "__main__":
    main()
