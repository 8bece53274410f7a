"""2D classification: cryolive against RELION's ``relion_refine --K`` on the same simulated stack.

A phantom (box 64) is projected at ``--views`` distinct views (Fibonacci directions) with random in-plane angles,
origins up to 3 px, CTF and noise at ``--snr``, plus 20 % junk (noise only, carbon edges, two particles in one
box); see :mod:`cryolive.simulator.views2d`. Both programs classify it into ``--k`` classes for ``--iter``
iterations. Measures, from the truth:

* views found: views whose best class average correlates >= 0.9 with the true CTF-free projection after the best
  in-plane rotation and shift (both low-passed to ``--compare-res`` Å and masked by the same disc);
* good kept / junk dropped: selecting the classes that match a view (correlation >= 0.9), the fraction of the
  good particles kept and of the junk left out.

Usage::

    python benchmarks/bench_class2d.py --workdir /tmp/bench_class2d [--views 12] [--per-view 60] [--k 24]
        [--iter 20] [--snr 0.1] [--no-relion]

RELION runs (if ``relion_refine`` is on the PATH) as
``relion_refine --i particles.star --o relion/run --K K --iter N --tau2_fudge 2 --particle_diameter D --ctf
--flatten_solvent --zero_mask --psi_step 10 --offset_range 5 --offset_step 1 --norm --scale --j 2``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from cryolive.class2d import Class2DParams
from cryolive.class2d.evaluate import correlation_matrix
from cryolive.io import MrcStack, read_star
from cryolive.jobs import drain
from cryolive.jobs.class2d import class2d_job
from cryolive.simulator.phantom import make_phantom, render
from cryolive.simulator.views2d import simulate_views

BOX, APIX = 64, 2.0


def measures(averages: np.ndarray, classes: np.ndarray, truth, compare_res: float) -> dict[str, float]:
    """Views found, good kept and junk dropped (see the module docstring); ``classes`` 0-based per particle."""
    corr = correlation_matrix(averages, truth.projections, APIX, compare_res, angle_step_deg=3.0)
    selected = np.nonzero(corr.max(axis=1) >= 0.9)[0]
    chosen = np.isin(classes, selected)
    good = truth.view >= 0
    return {"views_found": int((corr.max(axis=0) >= 0.9).sum()), "n_views": corr.shape[1],
            "good_kept": float(chosen[good].mean()), "junk_dropped": float(1.0 - chosen[~good].mean()),
            "median_best_corr": float(np.median(corr.max(axis=0)))}


def run_cryolive(star: Path, workdir: Path, k: int, iters: int, diameter: float) -> tuple[float, np.ndarray,
                                                                                         np.ndarray]:
    t0 = time.perf_counter()

    def show(it) -> None:  # noqa: ANN001 - Class2DIteration
        print(f"  cryolive iteration {it.iteration}: changed {100 * it.changed_fraction:.1f} %, "
              f"{it.seconds:.1f} s", flush=True)

    _, result = drain(class2d_job(str(star), str(workdir / "cryolive"),
                                  Class2DParams(k=k, max_iter=iters, diameter_A=diameter)), show)
    return time.perf_counter() - t0, result.averages, result.assignments


def run_relion(star: Path, workdir: Path, k: int, iters: int, diameter: float) -> tuple[float, np.ndarray,
                                                                                       np.ndarray]:
    out = star.parent / "relion"
    out.mkdir(exist_ok=True)
    cmd = ["relion_refine", "--i", star.name, "--o", "relion/run", "--K", str(k), "--iter", str(iters),
           "--tau2_fudge", "2", "--particle_diameter", f"{diameter:g}", "--ctf", "--flatten_solvent", "--zero_mask",
           "--psi_step", "10", "--offset_range", "5", "--offset_step", "1", "--norm", "--scale", "--j", "2",
           "--dont_combine_weights_via_disc", "--pool", "30"]
    print("  " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(out / "relion.log", "w") as log:
        subprocess.run(cmd, cwd=star.parent, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - t0
    with MrcStack(out / f"run_it{iters:03d}_classes.mrcs") as st:
        averages = st.read(np.arange(len(st)))
    parts = read_star(out / f"run_it{iters:03d}_data.star", require_images=False)
    return seconds, averages, parts.class_number - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/bench_class2d")
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--per-view", type=int, default=60)
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--iter", type=int, default=20)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--compare-res", type=float, default=10.0, help="low-pass (Å) before correlating (10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-relion", action="store_true")
    a = ap.parse_args()
    work = Path(a.workdir)
    if work.exists():
        shutil.rmtree(work)
    vol = render(make_phantom(BOX, APIX, seed=1), BOX, APIX, 1.6)
    star, truth = simulate_views(work / "data", vol, APIX, n_views=a.views, per_view=a.per_view, snr=a.snr,
                                 max_shift_px=3.0, seed=a.seed)
    n = len(truth.view)
    diameter = 0.9 * BOX * APIX
    print(f"{n} particles ({a.views} views x {a.per_view} + {int((truth.view < 0).sum())} junk), box {BOX}, "
          f"{APIX} Å/px, SNR {a.snr}, K {a.k}, {a.iter} iterations", flush=True)
    header = ("| program | wall time (s) | views found (corr >= 0.9) | median best corr | good kept | junk dropped |\n"
              "|---|---|---|---|---|---|")

    def row(name: str, t: float, m: dict[str, float]) -> str:
        return (f"| {name} | {t:.0f} | {m['views_found']}/{m['n_views']} | {m['median_best_corr']:.3f} | "
                f"{100 * m['good_kept']:.1f} % | {100 * m['junk_dropped']:.1f} % |")

    t, avg, cls = run_cryolive(star, work, a.k, a.iter, diameter)
    rows = [row("cryolive class2d", t, measures(avg, cls, truth, a.compare_res))]
    print(header + "\n" + rows[0], flush=True)  # before RELION, which takes much longer
    if not a.no_relion and shutil.which("relion_refine"):
        t, avg, cls = run_relion(star, work, a.k, a.iter, diameter)
        rows.append(row("RELION 3.1 relion_refine --K", t, measures(avg, cls, truth, a.compare_res)))
    print()
    print(header)
    print("\n".join(rows))

if __name__ == "__main__":
    main()
