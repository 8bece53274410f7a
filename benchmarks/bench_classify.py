"""3D classification and heterogeneous refinement against the truth: ARI, class maps vs true states, time.

Data: the simulator's 3-state phantom (state 0 whole, 1 without the variable domain, 2 with it moved), true poses.

Cases (``--cases``):
  focus    fixed-pose classification, focus mask on the variable domain (drawn from the true states, as a user
           would draw it around the part that moves), automatic solvent mask
  nofocus  the same without a focus mask
  hetero   heterogeneous refinement from 3 perturbed copies of the consensus map (smooth noise at 20 Å of
           ``--perturb`` x the map's SD), local pose search around poses perturbed by ~3° (standing in for a
           consensus refinement's poses), on ``--hetero-n`` particles
  binned   heterogeneous refinement with a class box larger than the particle box: must warn

Usage: ``python benchmarks/bench_classify.py [--n 15000] [--box 64] [--apix 2] [--snr 0.05] [--cases ...]``
Prints a Markdown table; record it in docs/benchmarks.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from cryolive.backend import device_label, to_numpy
from cryolive.classification import ClassifyParams, adjusted_rand_index, classify
from cryolive.io import read_map, read_particles
from cryolive.masks import threshold_mask
from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
from cryolive.resolution.filters import fsc_filter, lowpass
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.rotations.euler import axis_angle_to_matrix
from cryolive.simulator.dataset import SimulationParams, simulate_dataset


def focus_mask_from_states(states: list[np.ndarray], apix: float) -> np.ndarray:
    """A soft mask around the variable domain in every state (where any state differs from state 1, which lacks
    it): what a user draws around the part that moves."""
    dom = np.maximum(states[0] - states[1], 0) + np.maximum(states[2] - states[1], 0)
    return to_numpy(threshold_mask(dom, 0.15, 4.0, 6.0, apix)).astype(np.float32)


def reconstruct(stack, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half maps and full map of particles ``idx`` at their poses."""
    sub = stack.subset(idx)
    recs = None
    for _, batch_recs in backproject_halves(sub, half_sets(sub), batch_size=512):
        recs = batch_recs
    return tuple(to_numpy(v) for v in finalize_halves(*recs))


def match_classes(states: np.ndarray, classes: np.ndarray, k: int) -> dict[int, int]:
    """Class (1-based) -> the true state most of its particles come from."""
    return {c: int(np.bincount(states[classes == c], minlength=k).argmax()) for c in range(1, k + 1)
            if np.any(classes == c)}


def class_vs_truth(result, stack, states: np.ndarray, truth: list[np.ndarray], apix: float) -> list[tuple]:
    """Per class: (state, FSC-0.5 vs the true state of the class map, the same for the true-assignment map)."""
    out = []
    k = len(truth)
    solvent = result.final.solvent_mask
    for c, s in match_classes(states, result.classes, k).items():
        mine = result.final.class_maps[c - 1]
        ha, hb, full = reconstruct(stack, np.nonzero(states == s)[0])
        ref = to_numpy(fsc_filter(full, fsc(ha * solvent, hb * solvent))) * solvent
        n = truth[s].shape[0]
        out.append((s, resolution_at(fsc(mine, truth[s]), n, apix, 0.5),
                    resolution_at(fsc(ref, truth[s]), n, apix, 0.5)))
    return out


def run(name: str, stack, states, truth, apix, params: ClassifyParams, **kw) -> dict:
    t0 = time.perf_counter()
    gen = classify(stack, params, **kw)
    its = []
    while True:
        try:
            it = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        its.append(it)
        sizes = " ".join(f"{100 * s:.0f}%" for s in it.class_sizes)
        print(f"  [{name}] iteration {it.iteration} ({it.stage}): {sizes}, changed {100 * it.changed_fraction:.1f} %,"
              f" {it.timings['total_s']:.1f} s", flush=True)
    total = time.perf_counter() - t0
    full_its = [it for it in its if it.stage == "full"] or its
    pcs = np.median([it.timings["particles_classes_per_s"] for it in full_its])
    per_iter = np.median([it.timings["total_s"] for it in full_its])
    ari = adjusted_rand_index(states, result.classes)
    maps = class_vs_truth(result, stack, states, truth, apix) if truth else []
    ratio = max((a / b for _, a, b in maps), default=float("nan"))
    return {"case": name, "n": len(stack), "iterations": len(its), "ARI": ari, "worst_fsc_ratio": ratio,
            "maps": maps, "s_per_iter": per_iter, "pc_per_s": pcs, "total_s": total,
            "warnings": result.final.warnings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=15000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--apix", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--hetero-n", type=int, default=5000)
    ap.add_argument("--perturb", type=float, default=0.1)
    ap.add_argument("--max-iter", type=int, default=20, help="iterations allowed in the hetero case")
    ap.add_argument("--cases", nargs="+", default=["focus", "nofocus", "hetero", "binned"])
    ap.add_argument("--data", default=None, help="reuse a simulated data folder")
    a = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {device_label()}")
    data = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix="bench_classify_")) / "data"
    if not (data / "particles.star").exists():
        t = time.perf_counter()
        simulate_dataset(data, SimulationParams(n=a.n, box=a.box, pixel_size=a.apix, snr=a.snr, n_states=3, seed=3,
                                                batch_size=1024))
        print(f"simulated {a.n} particles in {time.perf_counter() - t:.0f} s: {data}")
    stack = read_particles(data / "particles.star")
    states = np.load(data / "truth" / "truth.npz")["states"]
    truth = [read_map(data / "truth" / f"state_{k}.mrc")[0] for k in range(3)]
    apix = stack.pixel_size
    rows = []
    if "focus" in a.cases:
        rows.append(run("focus", stack, states, truth, apix, ClassifyParams(n_classes=3),
                        focus_mask=focus_mask_from_states(truth, apix)))
    if "nofocus" in a.cases:
        rows.append(run("nofocus", stack, states, truth, apix, ClassifyParams(n_classes=3)))
    if "hetero" in a.cases or "binned" in a.cases:
        rng = np.random.default_rng(0)
        sub = np.sort(rng.choice(len(stack), size=min(a.hetero_n, len(stack)), replace=False))
        hs = stack.subset(sub)
        v = rng.normal(size=(len(hs), 3))
        v *= np.deg2rad(3.0) * np.abs(rng.normal(size=(len(hs), 1))) / np.linalg.norm(v, axis=1, keepdims=True)
        rots = np.einsum("nij,njk->nik", hs.rotations, np.stack([axis_angle_to_matrix(x) for x in v]))
        hs = hs.with_poses(rots, hs.shifts)
        _, _, cons = reconstruct(hs, np.arange(len(hs)))
        starts = []
        for _ in range(3):
            noise = to_numpy(lowpass(rng.normal(size=cons.shape).astype(np.float32), 20.0, apix))
            starts.append(cons + a.perturb * cons.std() / noise.std() * noise)
        p = ClassifyParams(n_classes=3, mode="hetero", hetero_search="local", max_iter=a.max_iter)
        if "hetero" in a.cases:
            rows.append(run("hetero", hs, states[sub], truth, apix, p, starts=starts))
        if "binned" in a.cases:
            small = hs.subset(np.arange(min(600, len(hs))))
            rows.append(run("binned", small, states[sub][:len(small)], [], apix,
                            ClassifyParams(n_classes=3, mode="hetero", hetero_search="local", max_iter=1,
                                           class_box=int(a.box * 1.5)), starts=starts))
    print()
    print("| case | particles | iterations | ARI | class map FSC-0.5 vs truth (Å): class / true assignment | "
          "worst ratio | s/iteration | particles·classes/s (E step) | total (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        maps = "; ".join(f"state {s}: {x:.2f} / {y:.2f}" for s, x, y in r["maps"]) or "-"
        print(f"| {r['case']} | {r['n']} | {r['iterations']} | {r['ARI']:.3f} | {maps} | {r['worst_fsc_ratio']:.3f} "
              f"| {r['s_per_iter']:.1f} | {r['pc_per_s']:.0f} | {r['total_s']:.0f} |")
    for r in rows:
        for w in r["warnings"]:
            print(f"warning [{r['case']}]: {w}")


if __name__ == "__main__":
    main()
