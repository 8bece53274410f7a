"""Particles as a user brings them, refined by cryolive (and optionally RELION) and checked against the truth.

What makes these particles "real-like" (each thing the project's other simulations leave out):

* **Crowded micrographs.** A D2 phantom at 1.5 Å/px is placed at random, non-overlapping positions on 1024² px
  micrographs (centres at least 0.9 particle diameter apart), so neighbours reach into every box. Each particle
  is projected in a 128 px box (the CTF's delocalisation kept) with a sub-pixel position, one defocus per
  micrograph (1–3 µm, plus ±200 Å per particle and 300 Å astigmatism), white noise at the micrograph level.
* **Carbon and ice.** A fifth of the micrographs hold a carbon film over a half-plane (a soft edge, 3× the
  particles' contrast, its own texture, CTF-modulated); every micrograph has a linear ice-thickness ramp.
* **Picks as LoG gives them.** Every particle is picked within ~1.5 px of its centre; 15 % of them are picked a
  second time 0.15–0.3 box away (duplicate picks); 15 % more picks are junk: empty ice, carbon, the carbon edge.
* **Extraction as RELION does it.** 96 px boxes at the picks, Fourier-binned 2× to 48 px at 3 Å/px (Nyquist 6 Å),
  normalised to a background (outside 0.75 of the radius) of mean 0 and standard deviation 1, stored in
  **float16**, in a RELION 3.1 STAR with micrograph names, coordinates in micrograph pixels and
  ``rlnMicrographOriginalPixelSize``, no poses and no ``rlnRandomSubset``. The SNR of a binned particle image (clean
  particle variance over noise variance in the box) is ``--snr``.

The refinement starts from the true map low-passed to 25 Å, with D2 symmetry and default parameters. Reported:
the FSC 0.5 of the refined map with the truth (at 3 Å/px), the ratio to a true-pose reconstruction of the real
picks only (``relion_reconstruct`` and cryolive's), the GSFSC (unmasked / masked), the solvent FSC (does it warn?),
pose errors over the real picks (up to D2), and wall time. ``--relion`` also runs ``relion_refine_mpi
--auto_refine`` (``mpirun -n 3``) on a float32 copy (RELION 3.1 cannot read float16).

Usage::

    python benchmarks/real_like.py --workdir /tmp/real_like [--micrographs 25] [--snr 0.05] [--relion]

Prints the table rows; record them in docs/benchmarks.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryolive.backend import to_numpy
from cryolive.image.ctf import CTFParams, ctf_2d
from cryolive.image.fourier import irfft2c
from cryolive.image.resample import resample_volume
from cryolive.io import read_map, read_particles, write_map
from cryolive.jobs import drain
from cryolive.jobs.refine import refine_job
from cryolive.projection import Projector
from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
from cryolive.reconstruction.solvent import solvent_fsc
from cryolive.refinement.refine import RefineParams
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.rotations.euler import matrix_to_euler
from cryolive.rotations.symmetry import symmetric_angular_distance
from cryolive.simulator.particles import random_rotations
from cryolive.simulator.phantom import make_phantom, render
from cryolive.simulator.relion import relion_reconstruct, relion_refine

MIC_APIX, MIC_SIZE, MIC_BOX, RENDER_BOX, BIN = 1.5, 1024, 96, 128, 2
BOX, APIX = MIC_BOX // BIN, MIC_APIX * BIN
SYMMETRY = "D2"
REAL, DUPLICATE, JUNK = 0, 1, 2


def phantom() -> tuple[np.ndarray, float]:
    """The true D2 map at micrograph pixels ``(96,)*3`` and its diameter (Å, the extent of its density)."""
    vol = render(make_phantom(MIC_BOX, MIC_APIX, seed=5, symmetry=SYMMETRY), MIC_BOX, MIC_APIX)
    zz, yy, xx = np.indices(vol.shape) - MIC_BOX // 2
    r = np.sqrt(xx**2 + yy**2 + zz**2)[vol > 0.05 * vol.max()]
    return vol.astype(np.float32), 2.0 * float(np.percentile(r, 99)) * MIC_APIX


def place(n_target: int, min_dist: float, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n_target`` sub-pixel centres ``(n, 2)`` (x, y) px at least ``min_dist`` px apart (dart throwing)."""
    pts: list[np.ndarray] = []
    margin = MIC_BOX // 2
    for _ in range(50 * n_target):
        c = rng.uniform(margin, MIC_SIZE - margin, 2)
        if all(np.hypot(*(c - q)) >= min_dist for q in pts):
            pts.append(c)
            if len(pts) == n_target:
                break
    return np.array(pts)


def carbon_layer(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A carbon film over a random half-plane ``(MIC_SIZE, MIC_SIZE)``: soft edge (3 px), textured, mean
    ``amplitude``."""
    yy, xx = np.indices((MIC_SIZE, MIC_SIZE), dtype=np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    d = (xx - MIC_SIZE / 2) * np.cos(ang) + (yy - MIC_SIZE / 2) * np.sin(ang) - rng.uniform(-200, 200)
    film = 1.0 / (1.0 + np.exp(-d / 3.0))
    texture = np.fft.irfft2(np.fft.rfft2(rng.normal(size=(MIC_SIZE, MIC_SIZE)))
                            * np.exp(-(np.fft.fftfreq(MIC_SIZE)[:, None] ** 2
                                       + np.fft.rfftfreq(MIC_SIZE)[None] ** 2) / (2 * 0.05**2)), s=film.shape)
    texture /= texture.std()
    return (amplitude * film * (1.0 + 0.3 * texture)).astype(np.float32)


def apply_ctf(img: np.ndarray, ctf: CTFParams) -> np.ndarray:
    """A whole micrograph ``(MIC_SIZE, MIC_SIZE)`` multiplied by one CTF in Fourier space."""
    c = to_numpy(ctf_2d(ctf, MIC_SIZE, MIC_APIX))[0]  # centred rfft layout of cryolive
    f = np.fft.rfft2(np.fft.ifftshift(img))
    c = np.fft.ifftshift(c, axes=0)  # rows back to numpy's order (the columns are rfft already)
    return np.fft.fftshift(np.fft.irfft2(f * c, s=img.shape)).astype(np.float32)


def binned_boxes(mic: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Boxes ``(n, 48, 48)`` of 96 px at integer picks ``(n, 2)`` (x, y), padded with the micrograph's mean and
    Fourier-binned 2x (intensities kept)."""
    pad = np.pad(mic, MIC_BOX, constant_values=float(mic.mean()))
    h = MIC_BOX // 2
    lo = (MIC_BOX - BOX) // 2
    out = np.empty((len(picks), BOX, BOX), np.float32)
    for i, (x, y) in enumerate(picks):
        img = pad[y - h + MIC_BOX:y - h + 2 * MIC_BOX, x - h + MIC_BOX:x - h + 2 * MIC_BOX]
        f = np.fft.fftshift(np.fft.fft2(img))[lo:lo + BOX, lo:lo + BOX]
        out[i] = np.real(np.fft.ifft2(np.fft.ifftshift(f))) / BIN**2
    return out


def extract(mic: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """:func:`binned_boxes` normalised as RELION's extraction does (background outside 0.75 of the radius: mean 0,
    sd 1)."""
    out = binned_boxes(mic, picks)
    yy, xx = np.indices((BOX, BOX)) - BOX // 2
    bg = np.hypot(xx, yy) > 0.75 * BOX / 2
    mean, sd = out[:, bg].mean(axis=1), np.maximum(out[:, bg].std(axis=1), 1e-12)
    return (out - mean[:, None, None]) / sd[:, None, None]


def make_data(folder: Path, n_mics: int, snr: float, seed: int = 0) -> dict:
    """Micrographs, picks, particles (float16 and a float32 copy), STARs and truth into ``folder``."""
    rng = np.random.default_rng(seed)
    vol, diameter_A = phantom()
    padded = np.pad(vol, (RENDER_BOX - MIC_BOX) // 2)
    proj = Projector(padded)
    min_dist = 0.9 * diameter_A / MIC_APIX
    mics, rows, images = [], [], []
    truth_rot, truth_origin, kinds = [], [], []
    for _ in range(n_mics):
        centres = place(200, min_dist, rng)
        n = len(centres)
        rot = random_rotations(n, rng)
        df = rng.uniform(10000, 30000)
        astig, ang = rng.uniform(-300, 300), rng.uniform(-np.pi, np.pi)
        dfp = df + rng.uniform(-200, 200, n)
        ctf = CTFParams.make(dfp + astig / 2, dfp - astig / 2, np.full(n, ang))
        whole = np.rint(centres).astype(np.int64)
        frac = centres - whole
        models = to_numpy(irfft2c(proj.project(rot, -frac, ctf_2d(ctf, RENDER_BOX, MIC_APIX)), RENDER_BOX))
        clean = np.zeros((MIC_SIZE + RENDER_BOX, MIC_SIZE + RENDER_BOX), np.float32)
        h = RENDER_BOX // 2
        for (x, y), img in zip(whole, models, strict=True):
            clean[y - h + h:y + h + h, x - h + h:x + h + h] += img
        clean = clean[h:h + MIC_SIZE, h:h + MIC_SIZE]
        signal_sd = float(models.std())
        has_carbon = rng.random() < 0.2
        if has_carbon:
            clean = clean + apply_ctf(carbon_layer(rng, 3.0 * signal_sd), CTFParams.make(df, df, 0.0))
        ramp = np.add.outer(np.linspace(-1, 1, MIC_SIZE) * rng.normal(), np.linspace(-1, 1, MIC_SIZE) * rng.normal())
        # picks: every particle near its centre; duplicates 0.15-0.3 box away; junk anywhere (or on the carbon edge)
        real = np.rint(centres + rng.normal(0, 1.5, centres.shape)).astype(np.int64)
        dup_src = rng.choice(n, int(round(0.15 * n)), replace=False)
        phi = rng.uniform(0, 2 * np.pi, len(dup_src))
        dist = rng.uniform(0.15, 0.3, len(dup_src)) * MIC_BOX
        dups = np.rint(centres[dup_src] + np.stack([np.cos(phi), np.sin(phi)], 1) * dist[:, None]).astype(np.int64)
        junk = rng.integers(MIC_BOX // 2, MIC_SIZE - MIC_BOX // 2, (int(round(0.15 * n)), 2))
        picks = np.concatenate([real, dups, junk])
        src = np.concatenate([np.arange(n), dup_src, np.full(len(junk), -1)])
        kind = np.concatenate([np.full(n, REAL), np.full(len(dups), DUPLICATE), np.full(len(junk), JUNK)])
        inside = ((picks >= MIC_BOX // 2) & (picks <= MIC_SIZE - MIC_BOX // 2)).all(axis=1)
        picks, src, kind = picks[inside], src[inside], kind[inside]
        mics.append((clean, ramp, picks, src, kind, rot, centres, ctf, ang, astig, dfp, has_carbon))
    # one noise level for the set, from the binned clean particles' variance on the first micrograph (white noise
    # loses BIN^2 of its variance in the binning; the band-limited signal keeps most of it)
    first = mics[0]
    noise_sd = float(np.sqrt(binned_boxes(first[0], first[2][first[4] == REAL]).var(axis=(1, 2)).mean()
                             * BIN**2 / snr))
    for k, (clean, ramp, picks, src, kind, rot, centres, _ctf, ang, astig, dfp, _carbon) in enumerate(mics):
        mic = clean + rng.normal(0, noise_sd, clean.shape).astype(np.float32) + 0.5 * noise_sd * ramp
        name = f"Micrographs/mic_{k:03d}.mrc"
        (folder / "Micrographs").mkdir(parents=True, exist_ok=True)
        with mrcfile.new(folder / name, overwrite=True) as m:
            m.set_data(mic.astype(np.float32))
            m.voxel_size = MIC_APIX
        images.append(extract(mic, picks))
        for p, s, kd in zip(picks, src, kind, strict=True):
            i = s if s >= 0 else 0
            rows.append({"rlnMicrographName": name, "rlnCoordinateX": float(p[0]), "rlnCoordinateY": float(p[1]),
                         "rlnDefocusU": float(dfp[i] + astig / 2), "rlnDefocusV": float(dfp[i] - astig / 2),
                         "rlnDefocusAngle": float(np.degrees(ang)), "rlnOpticsGroup": 1})
            kinds.append(kd)
            truth_rot.append(rot[i] if s >= 0 else np.eye(3))
            # the particle centre sits at centre - pick (micrograph px) in the box; RELION: at -origin
            truth_origin.append(-(centres[i] - p) * MIC_APIX if s >= 0 else np.zeros(2))
    imgs = np.concatenate(images)
    n = len(imgs)
    with mrcfile.new(folder / "particles.mrcs", overwrite=True) as m:
        m.set_data(imgs.astype(np.float16))
        m.voxel_size = APIX
    with mrcfile.new(folder / "particles_f32.mrcs", overwrite=True) as m:
        m.set_data(imgs.astype(np.float32))
        m.voxel_size = APIX
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographOriginalPixelSize": [MIC_APIX], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [APIX], "rlnImageSize": [BOX], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame(rows)
    parts.insert(0, "rlnImageName", [f"{i + 1:06d}@particles.mrcs" for i in range(n)])
    starfile.write({"optics": optics, "particles": parts}, folder / "particles.star", overwrite=True)
    f32 = parts.copy()
    f32["rlnImageName"] = [f"{i + 1:06d}@particles_f32.mrcs" for i in range(n)]
    starfile.write({"optics": optics, "particles": f32}, folder / "particles_f32.star", overwrite=True)
    kinds = np.array(kinds)
    rots = np.array(truth_rot)
    origins = np.array(truth_origin)
    # the true poses of the real picks (for the true-pose reconstructions and the pose errors)
    real = np.nonzero(kinds == REAL)[0]
    rot_deg, tilt_deg, psi_deg = (np.degrees(x) for x in matrix_to_euler(rots[real]))
    good = f32.iloc[real].copy()
    good["rlnAngleRot"], good["rlnAngleTilt"], good["rlnAnglePsi"] = rot_deg, tilt_deg, psi_deg
    good["rlnOriginXAngst"], good["rlnOriginYAngst"] = origins[real, 0], origins[real, 1]
    starfile.write({"optics": optics, "particles": good}, folder / "true_poses_real.star", overwrite=True)
    truth = to_numpy(resample_volume(vol, BOX)).astype(np.float32)
    write_map(folder / "truth.mrc", truth, APIX)
    np.savez(folder / "truth.npz", kinds=kinds, rotations=rots, origins=origins, noise_sd=noise_sd,
             diameter_A=diameter_A)
    return {"n": n, "kinds": kinds, "diameter_A": diameter_A}


def _res(vol: np.ndarray, truth: np.ndarray, level: float) -> float:
    return float(resolution_at(fsc(vol, truth), BOX, APIX, level))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/real_like"))
    ap.add_argument("--micrographs", type=int, default=25)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--relion", action="store_true", help="also run RELION auto-refine (tens of minutes)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a RefineParams field for cryolive's refinement (repeatable)")
    a = ap.parse_args()
    from relion_parity import parse_overrides  # the sibling benchmark's typed KEY=VALUE parser

    overrides = parse_overrides(a.param)
    folder = a.workdir
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "truth.npz").exists():
        t0 = time.perf_counter()
        make_data(folder, a.micrographs, a.snr)
        print(f"made the data in {time.perf_counter() - t0:.0f} s")
    z = np.load(folder / "truth.npz")
    kinds, rots = z["kinds"], z["rotations"]
    truth = read_map(folder / "truth.mrc")[0]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; {len(kinds)} picks: "
          f"{np.sum(kinds == REAL)} real, {np.sum(kinds == DUPLICATE)} duplicate, {np.sum(kinds == JUNK)} junk; "
          f"box {BOX} at {APIX} Å/px (binned {BIN}x), D2, particle diameter {float(z['diameter_A']):.0f} Å")
    # true-pose reconstructions of the real picks
    theirs = relion_reconstruct(folder / "true_poses_real.star", folder / "relion_true_poses.mrc", symmetry=SYMMETRY)
    st = read_particles(folder / "true_poses_real.star")
    *_, (ra, rb) = (r for _d, r in backproject_halves(st, half_sets(st), SYMMETRY))
    ours = to_numpy(finalize_halves(ra, rb, prior=False)[2])
    base = _res(theirs, truth, 0.5)
    print(f"true poses, real picks only: relion_reconstruct {base:.2f} Å, cryolive {_res(ours, truth, 0.5):.2f} Å "
          "(FSC 0.5 with the truth)")
    if not (folder / "reference.mrc").exists():
        write_map(folder / "reference.mrc", truth, APIX)
    real = np.nonzero(kinds == REAL)[0]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        t0 = time.perf_counter()
        result = drain(refine_job("particles.star", "reference.mrc", "cryolive_jobs",
                                  RefineParams(**{"symmetry": SYMMETRY, "initial_lowpass_A": 25.0,
                                                  **overrides})))[1]
        t_ours = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    job = sorted((folder / "cryolive_jobs").glob("job_refine_*"))[-1]
    fin = result.final
    found = read_particles(job / "particles.star", require_images=False)
    err = np.degrees(symmetric_angular_distance(found.rotations[real], rots[real], SYMMETRY))
    res = _res(0.5 * (fin.half_a + fin.half_b), truth, 0.5)
    solvent = solvent_fsc(fin.half_a, fin.half_b, APIX)
    log = (job / "log.txt").read_text().splitlines()
    print(next((line for line in log if "half sets" in line), ""))
    mask = read_map(job / "mask_fsc.mrc")[0]
    in_mask = float(resolution_at(fsc(0.5 * (fin.half_a + fin.half_b), truth, mask), BOX, APIX, 0.5))
    base_in_mask = float(resolution_at(fsc(theirs, truth, mask), BOX, APIX, 0.5))
    print(f"in the job's FSC mask: refined {in_mask:.2f} Å, true-pose RELION {base_in_mask:.2f} Å (ratio "
          f"{in_mask / base_in_mask:.3f}) against the masked GSFSC {fin.resolution_A:.2f} Å")
    label = " ".join(["cryolive refine", *a.param])
    print(f"{label}: truth {res:.2f} Å (ratio {res / base:.3f}), GSFSC {fin.resolution_unmasked_A:.2f} / "
          f"{fin.resolution_A:.2f} Å (unmasked / masked), solvent FSC {solvent.mean:.3f} "
          f"({'WARNS' if solvent.shared else 'quiet'}), median error {np.median(err):.1f} deg, "
          f"{np.mean(err > 20):.1%} > 20 deg (real picks), {t_ours:.0f} s, {fin.iteration} iterations")
    if not a.relion:
        return
    t0 = time.perf_counter()
    root = relion_refine(folder / "particles_f32.star", folder / "reference.mrc", folder / "relion_refine", APIX,
                         diameter_A=float(z["diameter_A"]) * 1.1, symmetry=SYMMETRY, initial_lowpass_A=25.0)
    t_theirs = time.perf_counter() - t0
    vol = read_map(Path(f"{root}_class001.mrc"))[0]
    rel = read_particles(Path(f"{root}_data.star"), require_images=False)
    err = np.degrees(symmetric_angular_distance(rel.rotations[real], rots[real], SYMMETRY))
    gen = starfile.read(Path(f"{root}_model.star"), always_dict=True)["model_general"]
    gs = float(np.asarray(gen["rlnCurrentResolution"]).ravel()[0])
    res = _res(vol, truth, 0.5)
    print(f"RELION auto-refine: truth {res:.2f} Å (ratio {res / base:.3f}), its resolution {gs:.2f} Å, median error "
          f"{np.median(err):.1f} deg, {np.mean(err > 20):.1%} > 20 deg, {t_theirs:.0f} s")


if __name__ == "__main__":
    main()
