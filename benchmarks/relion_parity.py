"""cryolive and RELION side by side, on particles RELION made (``relion_project --ctf --add_noise``).

For each case (phantom x box x SNR) the script makes the data once in ``--workdir`` and runs, on the same STAR and
machine:

* ``reconstruct``: known-pose reconstruction, cryolive (:func:`finalize_halves` without prior) against
  ``relion_reconstruct --ctf``: FSC with the true map at 0.5 and 0.143, wall time.
* ``NAME:BOX:SNR:junk`` cases refine a copy with 20 % junk added (:func:`add_junk`: blank and carbon-edge
  images, a second particle in the box, duplicate picks); pose errors are measured on the real particles.
* ``refine`` (with ``--refine``): homogeneous refinement without poses from the true map low-passed to 25 Å,
  cryolive (default parameters) against ``mpirun -n 3 relion_refine_mpi --auto_refine`` (same start): FSC with the
  truth at 0.5, the ratio to the true-pose ``relion_reconstruct`` map, the reported GSFSC (0.143) beside the
  truth's FSC at 0.5 (an honest GSFSC is within 10 % of it), median pose error and the fraction of particles more
  than 20 deg off, wall time.

Phantoms: ``chain`` (the project's own pseudo-atom phantom), ``pseudo_d2`` (elongated, nearly D2: see
:func:`cryolive.simulator.phantom.elongated_pseudo_symmetric`), ``d2`` (exactly D2, refined with D2 symmetry) and
``flexible`` (the chain phantom whose last domain swings over ±12 deg across the particles).

Usage::

    python benchmarks/relion_parity.py --workdir /tmp/parity [--cases chain:64:0.05 pseudo_d2:64:0.05 ...]
                                       [--n 4000] [--refine] [--skip-relion-refine]

Prints one table row per case and method; record it in docs/benchmarks.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from cryolive.backend import to_numpy
from cryolive.io import read_map, read_particles, write_map
from cryolive.jobs import drain
from cryolive.jobs.refine import refine_job
from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
from cryolive.refinement.refine import RefineParams
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.rotations.symmetry import symmetric_angular_distance
from cryolive.simulator.phantom import elongated_pseudo_symmetric, make_phantom, render, state_phantom
from cryolive.simulator.relion import relion_reconstruct, relion_refine, relion_simulate

SYMMETRY = {"chain": "C1", "pseudo_d2": "C1", "d2": "D2", "flexible": "C1"}


def phantom_map(name: str, box: int, apix: float) -> np.ndarray | list[np.ndarray]:
    """The true map of a case (a list of maps for ``flexible``: one per conformation)."""
    if name == "chain":
        return render(make_phantom(box, apix, seed=3), box, apix)
    if name == "pseudo_d2":
        return render(elongated_pseudo_symmetric(box, apix, seed=1), box, apix)
    if name == "d2":
        return render(make_phantom(box, apix, seed=5, symmetry="D2"), box, apix)
    if name == "flexible":
        ph = make_phantom(box, apix, seed=3)
        return [render(state_phantom(ph, 2, move_deg=a) if a else ph, box, apix) for a in (-12, -6, 0, 6, 12)]
    raise ValueError(f"unknown phantom {name!r}")


def make_case(workdir: Path, name: str, box: int, snr: float, n: int):
    """The RELION-made data set of a case (made once, then reused)."""
    apix = 128.0 / box  # the same 128 Å box at every size
    folder = workdir / f"{name}_{box}_{snr:g}"
    vol = phantom_map(name, box, apix)
    if isinstance(vol, list):  # flexible: equal parts from each conformation, merged into one STAR
        return _flexible_case(folder, vol, apix, snr, n)
    if (folder / "particles.star").exists():
        from cryolive.simulator.relion import RelionDataset

        st = read_particles(folder / "particles.star")
        return RelionDataset(folder, folder / "particles.star", folder / "truth.mrc", None, None, st.half_set,
                             float("nan"), apix, box)
    return relion_simulate(folder, vol, apix, n=n, snr=snr, seed=1)


def _flexible_case(folder: Path, vols: list[np.ndarray], apix: float, snr: float, n: int):
    import starfile

    from cryolive.simulator.relion import RelionDataset

    box = vols[0].shape[0]
    star = folder / "particles.star"
    if not star.exists():
        folder.mkdir(parents=True, exist_ok=True)
        parts, optics = [], None
        for k, v in enumerate(vols):
            sub = relion_simulate(folder / f"state{k}", v, apix, n=n // len(vols), snr=snr, seed=10 + k)
            blocks = starfile.read(sub.star, always_dict=True)
            optics = blocks["optics"]
            p = blocks["particles"]
            p["rlnImageName"] = [s.replace("@", f"@state{k}/") for s in p["rlnImageName"]]
            parts.append(p)
        allp = __import__("pandas").concat(parts, ignore_index=True)
        starfile.write({"optics": optics, "particles": allp}, star, overwrite=True)
        write_map(folder / "truth.mrc", np.mean(vols, axis=0).astype(np.float32), apix, overwrite=True)
    st = read_particles(star)
    return RelionDataset(folder, star, folder / "truth.mrc", None, None, st.half_set, float("nan"), apix, box)


def add_junk(ds, fraction: float = 0.2, seed: int = 7):
    """A copy of a case with ``fraction`` junk added (made once): blank noise images, carbon edges (a soft step
    of random direction and contrast 3x the particles'), two particles in one box (a second particle 0.45 box
    away) and duplicate picks (the same image listed twice). Every row gets a micrograph name and coordinates
    (50 particles a micrograph) so that duplicates are recognisable as such. Returns the new data set and the
    number of good particles (the first rows)."""
    import mrcfile
    import starfile

    from cryolive.simulator.relion import RelionDataset

    folder = ds.folder.parent / f"{ds.folder.name}_junk"
    star = folder / "particles.star"
    good = read_particles(ds.star, require_images=False)
    n_good = len(good)
    if not star.exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        blocks = starfile.read(ds.star, always_dict=True)
        parts = blocks["particles"].copy()
        with mrcfile.mmap(ds.folder / "particles.mrcs", mode="r") as m:
            imgs = np.asarray(m.data, np.float32)
        n, box = imgs.shape[0], imgs.shape[1]
        noise_sd = float(np.median(imgs.std(axis=(1, 2))))
        n_junk = int(round(fraction * n / (1 - fraction)))
        kinds = rng.integers(0, 4, n_junk)
        junk, rows = [], []
        yy, xx = np.mgrid[:box, :box] - box // 2
        for kind in kinds:
            src = int(rng.integers(n))
            row = parts.iloc[src].copy()
            if kind == 0:  # blank
                img = rng.normal(0, noise_sd, (box, box))
            elif kind == 1:  # carbon edge
                ang = rng.uniform(0, 2 * np.pi)
                d = xx * np.cos(ang) + yy * np.sin(ang) - rng.uniform(-box / 4, box / 4)
                img = 3.0 * noise_sd * np.sqrt(0.05) / (1 + np.exp(-d / 2.0)) + rng.normal(0, noise_sd, (box, box))
            elif kind == 2:  # a neighbour in the box
                other = imgs[int(rng.integers(n))]
                shift = (np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)]) * 0.45 * box).astype(int)
                img = (imgs[src] + np.roll(other, tuple(shift), axis=(0, 1))) / np.sqrt(2)
            else:  # duplicate pick: the same image again
                img = imgs[src]
                row["rlnImageName"] = f"{src + 1:06d}@particles.mrcs"
            junk.append(img.astype(np.float32))
            rows.append((row, kind, src))
        allimg = np.concatenate([imgs, np.stack(junk)])
        with mrcfile.new(folder / "particles.mrcs", overwrite=True) as m:
            m.set_data(allimg)
            m.voxel_size = ds.pixel_size
        jparts = __import__("pandas").DataFrame([r for r, _, _ in rows]).reset_index(drop=True)
        for i, (_, kind, _) in enumerate(rows):
            if kind != 3:
                jparts.loc[i, "rlnImageName"] = f"{n + i + 1:06d}@particles.mrcs"
        allp = __import__("pandas").concat([parts, jparts], ignore_index=True)
        mic = np.arange(len(allp)) // 50
        xy = rng.uniform(0, 4000, (len(allp), 2))
        for i, (_, kind, src) in enumerate(rows):  # a duplicate sits where its original was picked
            if kind == 3:
                mic[n + i], xy[n + i] = mic[src], xy[src] + rng.normal(0, 2, 2)
        allp["rlnMicrographName"] = [f"mic_{k:04d}.mrc" for k in mic]
        allp["rlnCoordinateX"], allp["rlnCoordinateY"] = xy[:, 0], xy[:, 1]
        allp = allp.drop(columns=[c for c in ("rlnRandomSubset",) if c in allp.columns])
        starfile.write({"optics": blocks["optics"], "particles": allp}, star, overwrite=True)
        write_map(folder / "truth.mrc", read_map(ds.truth_map)[0], ds.pixel_size, overwrite=True)
    st = read_particles(star, require_images=False)
    return RelionDataset(folder, star, folder / "truth.mrc", None, None, st.half_set, float("nan"),
                         ds.pixel_size, ds.box), n_good


def _res(vol: np.ndarray, truth: np.ndarray, apix: float, level: float) -> float:
    return resolution_at(fsc(vol, truth), truth.shape[0], apix, level)


def cryolive_reconstruct(star: Path, symmetry: str) -> np.ndarray:
    stack = read_particles(star)
    recs = None
    for _done, batch_recs in backproject_halves(stack, half_sets(stack), symmetry, 512):
        recs = batch_recs
    return to_numpy(finalize_halves(*recs, prior=False)[2])


def pose_errors(star_found: Path, star_true: Path, symmetry: str, n_good: int | None = None) -> tuple[float, float]:
    """Median angular error (deg, minimised over the symmetry's mates) and fraction > 20 deg, over the first
    ``n_good`` particles (the real ones; all by default)."""
    found = read_particles(star_found, require_images=False)
    true = read_particles(star_true, require_images=False)
    if n_good is not None:
        found, true = found.subset(np.arange(n_good)), true.subset(np.arange(n_good))
    best = np.degrees(symmetric_angular_distance(found.rotations, true.rotations, symmetry))
    return float(np.median(best)), float(np.mean(best > 20.0))


def run_reconstruct(ds, symmetry: str, rows: list[dict]) -> float:
    truth = read_map(ds.truth_map)[0]
    t0 = time.perf_counter()
    ours = cryolive_reconstruct(ds.star, symmetry)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = relion_reconstruct(ds.star, ds.folder / "relion_reconstruct.mrc", symmetry=symmetry)
    t_theirs = time.perf_counter() - t0
    for who, vol, t in (("cryolive", ours, t_ours), ("RELION", theirs, t_theirs)):
        rows.append({"step": "reconstruct", "who": who, "fsc05": _res(vol, truth, ds.pixel_size, 0.5),
                     "fsc0143": _res(vol, truth, ds.pixel_size, 0.143), "time_s": t})
    return _res(theirs, truth, ds.pixel_size, 0.5)


def parse_overrides(items: list[str]) -> dict:
    """``["relax_symmetry=D2", "global_iters=5"]`` -> RefineParams keyword arguments (typed like the defaults)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(RefineParams)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--param {item}: RefineParams has no field {key!r}")
        default = getattr(RefineParams(), key)
        if value.lower() == "none":
            out[key] = None
        elif default is None:  # an optional number (particle_diameter_A=80.0, minibatch_size=500), else the text
            for kind in (int, float, str):
                try:
                    out[key] = kind(value)
                    break
                except ValueError:
                    continue
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def run_refine(ds, symmetry: str, rows: list[dict], true_pose_res: float, relion: bool,
               n_good: int | None = None, overrides: dict | None = None) -> None:
    truth = read_map(ds.truth_map)[0]
    apix = ds.pixel_size
    jobs = ds.folder / "cryolive_jobs"
    cwd = os.getcwd()
    os.chdir(ds.folder)  # a RELION project: the STAR names images relative to this folder
    try:
        t0 = time.perf_counter()
        result = drain(refine_job("particles.star", "truth.mrc", str(jobs),
                                  RefineParams(**{"symmetry": symmetry, "initial_lowpass_A": 25.0,
                                                  **(overrides or {})})))[1]
        t_ours = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    job = sorted(jobs.glob("job_refine_*"))[-1]
    fin = result.final
    avg = 0.5 * (fin.half_a + fin.half_b)
    med, far = pose_errors(job / "particles.star", ds.star, symmetry, n_good)
    res = _res(avg, truth, apix, 0.5)
    rows.append({"step": "refine", "who": "cryolive", "fsc05": res, "ratio": res / true_pose_res,
                 "gsfsc": float(fin.resolution_unmasked_A), "gsfsc_masked": float(fin.resolution_A),
                 "median_deg": med, "frac_gt20": far, "time_s": t_ours, "iters": fin.iteration})
    if not relion:
        return
    t0 = time.perf_counter()
    root = relion_refine(ds.star, ds.truth_map, ds.folder / "relion_refine", apix,
                         diameter_A=0.8 * truth.shape[0] * apix, symmetry=symmetry, initial_lowpass_A=25.0)
    t_theirs = time.perf_counter() - t0
    vol = read_map(Path(f"{root}_class001.mrc"))[0]
    med, far = pose_errors(Path(f"{root}_data.star"), ds.star, symmetry, n_good)
    gs = _relion_final_resolution(Path(f"{root}_model.star"))
    res = _res(vol, truth, apix, 0.5)
    rows.append({"step": "refine", "who": "RELION", "fsc05": res, "ratio": res / true_pose_res, "gsfsc": gs,
                 "gsfsc_masked": float("nan"), "median_deg": med, "frac_gt20": far, "time_s": t_theirs,
                 "iters": float("nan")})


def _relion_final_resolution(model_star: Path) -> float:
    import starfile

    general = starfile.read(model_star, always_dict=True)["model_general"]
    return float(np.asarray(general["rlnCurrentResolution"]).ravel()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/cryolive_parity")
    ap.add_argument("--cases", nargs="+", default=["chain:64:0.05", "chain:64:0.5", "pseudo_d2:64:0.05",
                                                   "d2:64:0.05", "flexible:64:0.05", "chain:128:0.05"])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--refine", action="store_true", help="also run the refinements (minutes to hours)")
    ap.add_argument("--skip-relion-refine", action="store_true")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a RefineParams field of cryolive's refinement (repeatable)")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; {a.n} particles per case")
    head = (f"{'case':22s} {'step':11s} {'who':9s} {'FSC0.5':>7s} {'FSC.143':>7s} {'ratio':>6s} {'GSFSC':>6s} "
            f"{'GSmask':>6s} {'med°':>6s} {'>20°':>6s} {'time s':>8s}")
    print(head)
    for case in a.cases:
        name, box, snr, *extra = case.split(":")
        ds = make_case(work, name, int(box), float(snr), a.n)
        sym = SYMMETRY[name]
        rows: list[dict] = []
        true_pose = run_reconstruct(ds, sym, rows)
        n_good = None
        if "junk" in extra:  # the true-pose yardstick stays the clean set's; refine on the set with 20 % junk
            ds, n_good = add_junk(ds)
        if a.refine:
            run_refine(ds, sym, rows, true_pose, relion=not a.skip_relion_refine, n_good=n_good,
                       overrides=parse_overrides(a.param))
        for r in rows:
            def f(key: str, fmt: str = "7.2f", r: dict = r) -> str:
                v = r.get(key, float("nan"))
                return format(v, fmt) if np.isfinite(v) else " " * int(fmt.split(".")[0])
            print(f"{case:22s} {r['step']:11s} {r['who']:9s} {f('fsc05')} {f('fsc0143')} {f('ratio', '6.3f')} "
                  f"{f('gsfsc', '6.2f')} {f('gsfsc_masked', '6.2f')} {f('median_deg', '6.1f')} "
                  f"{f('frac_gt20', '6.3f')} {f('time_s', '8.1f')}", flush=True)


if __name__ == "__main__":
    main()
