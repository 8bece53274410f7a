"""Homogeneous refinement against the truth: resolution, pose accuracy, honesty of the GSFSC, time.

Cases (``--cases``):
  truth   start from the true map low-passed to 25 Å
  wrong   start from another phantom (different seed) low-passed to 30 Å, with 100 minibatch (ab-initio) steps
          before the refinement (``RefineParams.sgd_steps``)
  sym     a D2 phantom refined with D2 and with C1 (same particles)

Usage: ``python benchmarks/bench_refine.py [--n 10000] [--box 64] [--apix 2] [--snr 0.05] [--cases truth wrong sym]``
Prints, per case: the FSC-0.5 against the truth of the refined map and of a reconstruction with the true poses,
the GSFSC (unmasked; masked beside the FSC against the truth in the same mask), pose errors beside their
Cramér-Rao bound (:func:`pose_cramer_rao`), E- and M-step particles/s, the peak memory (host RSS) and the time.
A refinement that ends in another frame than the truth (turned, moved or mirrored) is compared after
:func:`align_to_truth`. Record the table in docs/benchmarks.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cryolive.alignment import pixel_set
from cryolive.backend import device_label
from cryolive.image.align3d import align_maps, apply_alignment
from cryolive.image.ctf import ctf_2d
from cryolive.image.fourier import rfft2c
from cryolive.io import read_map, read_particles
from cryolive.jobs import drain
from cryolive.projection import Projector
from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
from cryolive.refinement.refine import RefineIteration, RefineParams, refine
from cryolive.resolution.filters import lowpass
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.rotations.euler import angular_distance, axis_angle_to_matrix
from cryolive.rotations.symmetry import symmetric_angular_distance
from cryolive.simulator.dataset import SimulationParams, phantom_volumes, simulate_dataset


def angular_errors(found: np.ndarray, truth: np.ndarray, symmetry: str = "C1") -> np.ndarray:
    """Geodesic angle (degrees) between found and true poses, minimised over symmetry-equivalent poses."""
    return np.degrees(symmetric_angular_distance(found, truth, symmetry))


def true_pose_resolution(stack, truth_map: np.ndarray, symmetry: str = "C1", half: np.ndarray | None = None) -> float:
    """FSC-0.5 resolution (Å) against the truth of a reconstruction with the stack's poses (the true ones)."""
    recs = None
    for _done, batch_recs in backproject_halves(stack, half_sets(stack) if half is None else half, symmetry, 512):
        recs = batch_recs
    a, b, _ = finalize_halves(*recs)
    return resolution_at(fsc(0.5 * (a + b), truth_map), truth_map.shape[0], stack.pixel_size, 0.5)


def align_to_truth(rot: np.ndarray, shifts_px: np.ndarray, true_rot: np.ndarray, true_shifts_px: np.ndarray) -> dict:
    """Bring refined poses into the truth's frame: a refinement from a wrong map may converge to the truth turned
    by a fixed rotation G, moved by a fixed 3D shift d, or mirrored (projections cannot tell the hand).

    Mirroring the map through z = 0 changes every pose ``A`` to ``J A J`` (``J = diag(1, 1, -1)``); a turned map
    changes it to ``A G``; a moved map changes every origin by ``(A d)_xy``. G is the rotation nearest to
    ``sum_i A_true_i^T A_i`` (SVD), d a least-squares fit; the hand is the one that puts more particles within
    20° of their true pose. Returns the aligned rotations and origins (px), the hand, G's angle (degrees) and
    that fraction.
    """
    best = None
    j = np.diag([1.0, 1.0, -1.0])
    for hand, r in (("same", rot), ("mirror", j @ rot @ j)):
        u, _, vt = np.linalg.svd(np.einsum("bji,bjk->ik", true_rot, r))
        if np.linalg.det(u @ vt) < 0:
            u[:, -1] *= -1
        g = u @ vt
        aligned = r @ g.T
        frac = float(np.mean(angular_errors(aligned, true_rot) < 20))
        if best is None or frac > best["frac_within_20"]:
            a2 = r[:, :2, :].reshape(-1, 3)
            d = np.linalg.lstsq(a2, (shifts_px - true_shifts_px).reshape(-1), rcond=None)[0]
            best = {"rotations": aligned, "shifts_px": shifts_px - r[:, :2, :] @ d, "hand": hand,
                    "frac_within_20": frac,
                    "turn_deg": float(np.degrees(angular_distance(g, np.eye(3))))}
    return best


def pose_cramer_rao(stack, truth_map: np.ndarray, truth: dict, n_probe: int = 300, seed: int = 0) -> dict:
    """Cramér-Rao bound on the pose precision the data allow, from the *true* map at the true poses.

    For particle i the model is ``M = a_i C_i shift(P_A V)`` on every Fourier pixel to Nyquist; with white
    noise of power ``sigma^2 = E|N(k)|^2`` the Fisher information of the pose parameters
    (3 small rotations, 2 origin components, in radians and pixels) is
    ``I_pq = sum_k mult_k Re(dM/dp conj(dM/dq)) / sigma^2`` (derivatives by central differences). No unbiased
    estimator beats ``I^-1``; the median geodesic error is sampled from ``N(0, I^-1)`` per particle.
    Returns medians: angular error (degrees) and origin error (pixels).
    """
    rng = np.random.default_rng(seed)
    n, apix = truth_map.shape[0], stack.pixel_size
    idx = np.arange(min(n_probe, len(stack)))
    noise = rfft2c(rng.normal(0.0, float(truth["noise_sd"]), (64, n, n)).astype(np.float32))
    sigma2 = float(np.mean(np.abs(noise) ** 2))
    full = pixel_set(n, n / 2)
    kx, ky = full.kx, full.ky
    proj = Projector(truth_map)
    rot, sh, a = truth["rotations"][idx], truth["shifts_A"][idx] / apix, truth["scales"][idx]
    ctf = ctf_2d(stack.ctf.subset(idx), n, apix).reshape(len(idx), -1)[:, full.index]

    def model(rots: np.ndarray, origins: np.ndarray) -> np.ndarray:
        phase = np.exp(2j * np.pi * (origins[:, :1] * kx + origins[:, 1:2] * ky))
        return a[:, None] * ctf * proj.slice_pixels(rots, kx, ky) * phase

    eps, de = np.deg2rad(0.2), 0.05
    ders = []
    for ax in range(3):
        v = np.zeros(3)
        v[ax] = eps
        plus = model(axis_angle_to_matrix(v) @ rot, sh)
        ders.append((plus - model(axis_angle_to_matrix(-v) @ rot, sh)) / (2 * eps))
    for ax in range(2):
        e = np.zeros(2)
        e[ax] = de
        ders.append((model(rot, sh + e) - model(rot, sh - e)) / (2 * de))
    d = np.stack(ders, 1)  # (B, 5, K)
    fisher = np.real(np.einsum("bpk,bqk,k->bpq", d, np.conj(d), full.mult)) / sigma2
    cov = np.linalg.inv(fisher)
    ang, shift = [], []
    for c in cov:
        ang.append(np.linalg.norm(rng.normal(size=(200, 3)) @ np.linalg.cholesky(c[:3, :3]).T, axis=1))
        shift.append(np.linalg.norm(rng.normal(size=(200, 2)) @ np.linalg.cholesky(c[3:, 3:]).T, axis=1))
    return {"crb_ang": float(np.degrees(np.median(np.concatenate(ang)))),
            "crb_shift": float(np.median(np.concatenate(shift)))}


def _rate(it, key: str) -> float:
    """Particles per second of one stage of an iteration (``key`` a timing: search_s = E step, insert_s = M step)."""
    return it.n_particles / max(it.timings[key], 1e-9)


def run_case(name: str, data: Path, ref: np.ndarray, symmetry: str, params: RefineParams,
             data_symmetry: str = "C1") -> dict:
    """Refine ``data`` from ``ref`` with ``params`` (symmetry ``symmetry``) and compare with the truth; pose errors
    are taken modulo the symmetry of the simulated map (``data_symmetry``), which a C1 refinement may not pick."""
    stack = read_particles(data / "particles.star")
    truth, apix = read_map(data / "truth" / "truth_map.mrc")
    t_true = np.load(data / "truth" / "truth.npz")
    res_true_pose = true_pose_resolution(stack, truth, symmetry)
    t0 = time.perf_counter()
    steps, result = drain(refine(stack, ref, params), lambda it: print(
        f"  [{name}] iteration {it.iteration} {it.search} {it.n_particles} particles: "
        f"GSFSC {it.resolution_A:.2f} Å, {it.timings['total_s']:.0f} s (E step {_rate(it, 'search_s'):.0f}, "
        f"M step {_rate(it, 'insert_s'):.0f} particles/s)", flush=True) if isinstance(it, RefineIteration) else None)
    iters = [it for it in steps if isinstance(it, RefineIteration)]
    full = [it for it in iters if it.n_particles == len(stack)] or iters
    rates = {"search": float(np.median([_rate(it, "search_s") for it in full if it.search == "global"] or [np.nan])),
             "insert": float(np.median([_rate(it, "insert_s") for it in full]))}
    rates["search_local"] = float(np.median([_rate(it, "search_s") for it in full if it.search == "local"]
                                            or [np.nan]))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    elapsed = time.perf_counter() - t0
    fin = result.final
    n = truth.shape[0]
    avg = 0.5 * (fin.half_a + fin.half_b)
    res_truth = resolution_at(fsc(avg, truth), n, apix, 0.5)
    res_truth_masked = resolution_at(fsc(avg, truth, mask=fin.fsc_mask), n, apix, 0.5)
    rot, sh_px, frame = result.rotations, result.shifts_A / apix, "as refined"
    if data_symmetry == "C1":
        al = align_to_truth(rot, sh_px, t_true["rotations"], t_true["shifts_A"] / apix)
        frame = f"as refined (best-fit turn to the truth {al['turn_deg']:.2f}°)"
        # only when most poses agree with one frame: otherwise the fitted frame means nothing
        if al["frac_within_20"] > 0.5 and (al["hand"] == "mirror" or al["turn_deg"] > 2.0):
            # the map is the truth in another frame (or not the truth at all): compare in the truth's frame,
            # reconstructing the particles at the aligned poses
            rot, sh_px = al["rotations"], al["shifts_px"]
            frame = f"{al['hand']} hand, turned {al['turn_deg']:.0f}°"
            res_truth = true_pose_resolution(stack.with_poses(rot, sh_px * apix, half_set=result.half_set),
                                             truth, symmetry, result.half_set)
            # the masked comparison needs the map and its FSC mask in the truth's frame
            mal = align_maps(avg, truth, apix, resolution_A=10.0)
            res_truth_masked = resolution_at(fsc(apply_alignment(avg, mal, apix), truth,
                                                 mask=np.clip(apply_alignment(fin.fsc_mask, mal, apix), 0, 1)),
                                             n, apix, 0.5)
    ang = angular_errors(rot, t_true["rotations"], data_symmetry)
    sh = np.linalg.norm(sh_px - t_true["shifts_A"] / apix, axis=1)
    crb = pose_cramer_rao(stack, truth, t_true)
    print(f"  [{name}] frame: {frame}; Cramér-Rao median angular error {crb['crb_ang']:.2f}°, "
          f"shift {crb['crb_shift']:.2f} px", flush=True)
    return {"case": name, "symmetry": symmetry, "n": len(stack), "iterations": len(iters),
            "res_true_pose": res_true_pose, "res_vs_truth": res_truth, "ratio": res_truth / res_true_pose,
            "res_truth_masked": res_truth_masked, "frame": frame, **crb, **rates, "peak_gib": peak_gib,
            "gsfsc": fin.resolution_A, "gsfsc_unmasked": fin.resolution_unmasked_A,
            "median_ang": float(np.median(ang)), "frac_ang_gt_20": float(np.mean(ang > 20)),
            "median_shift_px": float(np.median(sh)), "time_s": elapsed,
            "s_per_iter": elapsed / max(len(iters), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--apix", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--cases", nargs="+", default=["truth", "wrong", "sym"])
    ap.add_argument("--levels", type=int, default=RefineParams.levels,
                    help="search levels below the coarse grid (finest step 7.5° / 2^levels)")
    ap.add_argument("--marginalize", action="store_true",
                    help="adaptive marginalisation (RefineParams.marginalize) in every case")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="cryolive_bench_"))
    print(f"machine: {platform.node()} {platform.machine()}, device {device_label()}; data in {work}")
    rows = []
    sim = SimulationParams(n=a.n, box=a.box, pixel_size=a.apix, snr=a.snr, seed=11, max_shift_px=4.0)
    if {"truth", "wrong"} & set(a.cases):
        data = work / "c1"
        if not (data / "particles.star").exists():
            simulate_dataset(data, sim)
        truth, _ = read_map(data / "truth" / "truth_map.mrc")
        if "truth" in a.cases:
            ref = np.asarray(lowpass(truth, 25.0, a.apix))
            rows.append(run_case("truth start (25 Å)", data, ref, "C1",
                                 RefineParams(initial_lowpass_A=25.0, max_iter=a.max_iter, levels=a.levels,
                                              marginalize=a.marginalize)))
        if "wrong" in a.cases:
            other = phantom_volumes(SimulationParams(box=a.box, pixel_size=a.apix, seed=12))[0]
            ref = np.asarray(lowpass(other, 30.0, a.apix))
            rows.append(run_case("wrong start (30 Å), 100 ab-initio steps", data, ref, "C1",
                                 RefineParams(initial_lowpass_A=30.0, max_iter=a.max_iter, sgd_steps=100,
                                              levels=a.levels, marginalize=a.marginalize)))
    if "sym" in a.cases:
        data = work / "d2"
        n_sym = max(a.n // 5, 1000)
        if not (data / "particles.star").exists():
            simulate_dataset(data, SimulationParams(n=n_sym, box=a.box, pixel_size=a.apix, snr=a.snr, seed=13,
                                                    symmetry="D2", max_shift_px=4.0))
        truth, _ = read_map(data / "truth" / "truth_map.mrc")
        ref = np.asarray(lowpass(truth, 25.0, a.apix))
        for sym in ("D2", "C1"):
            rows.append(run_case(f"D2 phantom, refined in {sym}", data, ref, sym,
                                 RefineParams(initial_lowpass_A=25.0, max_iter=a.max_iter, symmetry=sym,
                                              levels=a.levels, marginalize=a.marginalize), "D2"))
    print()
    print("| case | particles | iterations | true-pose FSC0.5 vs truth (Å) | refined FSC0.5 vs truth (Å) | ratio "
          "| GSFSC 0.143 unmasked (Å) | GSFSC 0.143 masked / FSC0.5 vs truth in that mask (Å) "
          "| median angular error (°) / Cramér-Rao | > 20° | median shift error (px) / Cramér-Rao "
          "| E step particles/s global / local | M step particles/s | peak memory (GiB) | s/iteration | total (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['n']} | {r['iterations']} | {r['res_true_pose']:.2f} | {r['res_vs_truth']:.2f} | "
              f"{r['ratio']:.3f} | {r['gsfsc_unmasked']:.2f} | {r['gsfsc']:.2f} / {r['res_truth_masked']:.2f} | "
              f"{r['median_ang']:.2f} / {r['crb_ang']:.2f} | {100 * r['frac_ang_gt_20']:.1f} % | "
              f"{r['median_shift_px']:.2f} / {r['crb_shift']:.2f} | {r['search']:.0f} / {r['search_local']:.0f} | "
              f"{r['insert']:.0f} | {r['peak_gib']:.1f} | {r['s_per_iter']:.0f} | {r['time_s']:.0f} |",
              flush=True)
        if not r["frame"].startswith("as refined"):
            print(f"  ({r['case']}: compared in the truth's frame: {r['frame']})")


if __name__ == "__main__":
    main()
