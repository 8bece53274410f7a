"""Working box on vs off in 3D classification / heterogeneous refinement: ARI, class maps vs the true states, time.

Data: the simulator's two-state phantom (state 0 whole, state 1 without the variable domain), true poses. Each
case runs with ``working_box=True`` and then ``False``, back to back on the same machine.

Cases (``--cases``):
  hetero        heterogeneous refinement (global search, coarse 15°, 2 levels) from the true states
  hetero-local  the same with a local search around the (true) input poses
  fixed         fixed-pose 3D classification

Usage: ``python benchmarks/bench_classify_wbox.py [--n 1500] [--box 96] [--apix 2] [--snr 0.05] [--max-iter 4]
[--cases hetero] [--margin-px 10]``. Prints one line per run; record them in docs/benchmarks.md with the machine
and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from cryolive.backend import device_label
from cryolive.classification import ClassifyParams, adjusted_rand_index, classify
from cryolive.image.resample import resample_volume
from cryolive.io import read_map, read_particles
from cryolive.jobs import drain
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.simulator.dataset import SimulationParams, simulate_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--apix", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--max-iter", type=int, default=4)
    ap.add_argument("--margin-px", type=float, default=10.0, help="working_margin_px")
    ap.add_argument("--cases", nargs="+", default=["hetero"], choices=("hetero", "hetero-local", "fixed"))
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    d = Path(a.workdir or tempfile.mkdtemp(prefix="bench_wbox_")) / f"sim_{a.box}_{a.n}"
    if not (d / "particles.star").exists():
        simulate_dataset(d, SimulationParams(n=a.n, box=a.box, pixel_size=a.apix, snr=a.snr, n_states=2, seed=3))
    stack = read_particles(d / "particles.star")
    states = np.load(d / "truth" / "truth.npz")["states"]
    truth = [read_map(d / "truth" / f"state_{k}.mrc")[0] for k in range(2)]
    print(f"# {device_label()}; {a.n} particles, box {a.box}, {a.apix} Å/px, SNR {a.snr}")
    for case in a.cases:
        if case == "fixed":
            p, kw = ClassifyParams(n_classes=2, max_iter=a.max_iter), {}
        else:
            p = ClassifyParams(mode="hetero", n_classes=2, max_iter=a.max_iter, coarse_step_deg=15.0, levels=2,
                               hetero_search="local" if case == "hetero-local" else "global")
            kw = {"starts": truth}
        p = dataclasses.replace(p, working_margin_px=a.margin_px)
        for wb in (True, False):
            t0 = time.perf_counter()
            its, r = drain(classify(stack, dataclasses.replace(p, working_box=wb), **kw))
            dt = time.perf_counter() - t0
            nc = r.final.class_maps.shape[-1]
            res = []
            for c in range(2):
                s = int(np.bincount(states[r.classes == c + 1], minlength=2).argmax())
                t = truth[s] if nc == a.box else np.asarray(resample_volume(truth[s], nc))
                res.append(resolution_at(fsc(r.final.class_maps[c], t), nc, r.final.pixel_size, 0.5))
            per_it = ", ".join(f"{it.timings['total_s']:.0f}" for it in its)
            print(f"{case} working_box={wb}: {len(its)} iterations, working boxes "
                  f"{[it.working_box for it in its]}, ARI {adjusted_rand_index(states, r.classes):.3f}, class maps "
                  f"FSC-0.5 vs truth {' / '.join(f'{x:.2f}' for x in res)} Å, {dt:.1f} s (per iteration {per_it})",
                  flush=True)


if __name__ == "__main__":
    main()
