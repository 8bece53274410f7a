"""Simulated movies with known per-particle trajectories and radiation damage (for motion correction).

Model of frame ``f`` (0-based, ``F`` frames) of a micrograph holding particles ``i`` at integer pick coordinates
``c_i`` (pixels, (x, y))::

    frame_f = sum_i paste(c_i, IFT[ R_i(k) exp(-2 pi i k.d_if) exp(-B_f s^2 / 4) ]) + N_f

* ``R_i`` is the RELION model image of particle ``i`` in a box of ``box`` pixels: its projection at its pose,
  shifted by ``-origin`` (origins in Å, RELION convention) and multiplied by its CTF (RELION sign).
* ``d_if`` (pixels, (x, y)) is the particle's displacement in frame ``f``: a global drift ``g_f`` shared by the
  micrograph plus a local part ``l_if``. Both are smooth in time (low-order polynomials of ``t = f / (F - 1)``)
  and zero-mean over frames, so the frame sum is centred at the pick coordinate. The local polynomial
  coefficients are a Gaussian-process sample over the particle positions with covariance
  ``exp(-|p_i - p_j|^2 / (2 z^2))`` (``z = correlation_A`` Å), scaled to ``local_rms_px`` RMS.
* Radiation damage: ``B_f = bfactor_per_dose * dose_per_frame * (f + 1/2)`` Å^2 (default 4 Å^2 per e/Å^2, so
  frame 24 of 1.5 e/Å^2 frames has B ≈ 141 Å^2: the range RELION's empirical per-frame B-factors cover).
* Noise: white Gaussian per frame with variance ``F var(signal) / snr``, ``var(signal)`` the mean variance of the
  undamaged particle images over their box: the frame sum has SNR ``snr``, each frame ``snr / F``.

Particles are pasted box-periodic (a model image of ``box`` pixels, so the reference model is exact apart from
damage, motion and noise). Layout of :func:`simulate_movies` ``(out, p)``::

    out/movies/mic_<nnn>.mrcs  frames x y x x float32 MRC stacks, pixel size set
    out/particles.mrcs         per-particle images extracted from the frame SUM (no motion correction)
    out/particles.star         RELION 3.1: rlnImageName, rlnMicrographName (movies/mic_<nnn>.mrcs),
                               rlnCoordinateX/Y (pixels), true poses, origins (Å), CTFs, half sets
    out/half_A.mrc, half_B.mrc the true map (both halves), out/mask.mrc a soft sphere
    out/truth/truth.npz        trajectories (N, F, 2) px, global_drift (M, F, 2) px, bfactors (F,) Å^2,
                               positions (N, 2) px, micrograph (N,) index, dose (F,) e/Å^2 at frame middles
    out/params.json            the simulation parameters
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryolive.backend import to_numpy, xp
from cryolive.image.ctf import ctf_2d
from cryolive.image.fourier import irfft2c, rfft_freqs_2d, shift_phase
from cryolive.io import ParticleStack, StackWriter, write_map, write_star
from cryolive.masks import soft_sphere
from cryolive.projection import Projector
from cryolive.simulator.dataset import SimulationParams, phantom_volumes
from cryolive.simulator.particles import draw_truth


@dataclass(frozen=True)
class MovieSimParams:
    """What to simulate. Pixels unless named ``_A`` (Å); dose in e/Å^2; ``snr`` of the frame sum."""

    n_micrographs: int = 2
    mic_size: int = 256
    box: int = 40
    pixel_size: float = 2.0
    n_frames: int = 24
    dose_per_frame: float = 1.5
    bfactor_per_dose: float = 4.0
    snr: float = 0.5
    particles_per_micrograph: int = 30
    spacing_px: int | None = None
    local_rms_px: float = 1.5
    drift_px: float = 4.0
    correlation_A: float = 150.0
    max_origin_px: float = 2.0
    defocus_min_A: float = 8000.0
    defocus_max_A: float = 20000.0
    seed: int = 0


@dataclass(frozen=True)
class MovieTruth:
    """Ground truth (NumPy). Trajectories are displacements of each particle's content in each frame (px)."""

    trajectories: np.ndarray  # (N, F, 2) px (x, y), zero mean over frames
    global_drift: np.ndarray  # (M, F, 2) px
    bfactors: np.ndarray  # (F,) Å^2
    positions: np.ndarray  # (N, 2) px (x, y) pick coordinates
    micrograph: np.ndarray  # (N,) int


def _time_basis(n_frames: int) -> np.ndarray:
    """Smooth zero-mean temporal basis ``(3, F)``: t, t^2 (unit RMS) and a fast early decay exp(-t / 0.15)
    (RMS 0.4)."""
    t = np.linspace(0.0, 1.0, n_frames)
    basis = np.stack([t, t * t, -np.exp(-t / 0.15)])
    basis -= basis.mean(axis=1, keepdims=True)
    basis /= np.maximum(np.sqrt((basis**2).mean(axis=1, keepdims=True)), 1e-12)
    return basis * np.array([1.0, 1.0, 0.4])[:, None]


def place_particles(p: MovieSimParams, rng: np.random.Generator) -> np.ndarray:
    """Non-overlapping integer pick coordinates ``(n, 2)`` px (x, y): a jittered grid, random cells kept."""
    spacing = p.spacing_px or int(np.ceil(p.box * 1.05))
    margin = p.box // 2 + 8
    cells = np.arange(margin, p.mic_size - margin + 1, spacing)
    gx, gy = np.meshgrid(cells, cells)
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    keep = rng.permutation(len(grid))[: p.particles_per_micrograph]
    jitter = max((spacing - p.box) // 2, 0)
    pos = grid[np.sort(keep)] + rng.integers(-jitter, jitter + 1, (len(keep), 2))
    return np.clip(pos, margin, p.mic_size - margin).astype(np.int64)


def draw_trajectories(positions: np.ndarray, p: MovieSimParams, rng: np.random.Generator) -> np.ndarray:
    """Local trajectories ``(n, F, 2)`` px: GP-correlated (over positions) coefficients of a smooth time basis."""
    basis = _time_basis(p.n_frames)
    dist2 = ((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1) * p.pixel_size**2
    cov = np.exp(-dist2 / (2.0 * p.correlation_A**2)) + 1e-6 * np.eye(len(positions))
    chol = np.linalg.cholesky(cov)
    coef = np.einsum("ij,jka->ika", chol, rng.normal(size=(len(positions), len(basis), 2)))
    traj = np.einsum("ika,kf->ifa", coef, basis)
    rms = np.sqrt((traj**2).mean())
    return traj * (p.local_rms_px / max(rms, 1e-12))


def draw_drift(p: MovieSimParams, rng: np.random.Generator) -> np.ndarray:
    """Global drift ``(F, 2)`` px of one micrograph: ``drift_px`` from first to last frame, slightly curved."""
    t = np.linspace(0.0, 1.0, p.n_frames)
    ang = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(ang), np.sin(ang)])
    curve = np.array([-np.sin(ang), np.cos(ang)]) * rng.uniform(-0.3, 0.3)
    g = p.drift_px * (t[:, None] * direction + (t * t - t)[:, None] * curve)
    return g - g.mean(axis=0)


def frame_bfactors(p: MovieSimParams) -> np.ndarray:
    """Per-frame B-factors ``(F,)`` Å^2: ``bfactor_per_dose`` times the dose at each frame's middle."""
    return p.bfactor_per_dose * p.dose_per_frame * (np.arange(p.n_frames) + 0.5)


def _model_images(proj: Projector, truth: object, idx: np.ndarray, box: int, apix: float) -> object:
    """Model transforms ``(B, box, box//2+1)``: projection shifted by -origin, times CTF (backend array)."""
    ctf = ctf_2d(truth.ctf.subset(idx), box, apix)
    return proj.project(truth.rotations[idx], truth.shifts_A[idx] / apix, ctf)


def render_movie(models: object, positions: np.ndarray, traj: np.ndarray, bfac: np.ndarray, p: MovieSimParams,
                 noise_sd: float, rng: np.random.Generator) -> np.ndarray:
    """Frames ``(F, mic, mic)`` float32 of one micrograph (see the module docstring for the model)."""
    m = xp()
    n = p.box
    ky, kx = rfft_freqs_2d(n)
    s2 = (kx * kx + ky * ky) / p.pixel_size**2
    out = np.zeros((p.n_frames, p.mic_size, p.mic_size), np.float32)
    h = n // 2
    for f in range(p.n_frames):
        ph = shift_phase(kx, ky, traj[:, f, 0], traj[:, f, 1])
        imgs = to_numpy(irfft2c(models * ph * m.exp(-bfac[f] * s2 / 4.0), n))
        for (x, y), img in zip(positions, imgs, strict=True):
            out[f, y - h:y - h + n, x - h:x - h + n] += img
        out[f] += rng.normal(0.0, noise_sd, out[f].shape).astype(np.float32)
    return out


def extract(frame: np.ndarray, positions: np.ndarray, box: int) -> np.ndarray:
    """Boxes ``(n, box, box)`` centred (pixel box//2) on integer positions (x, y); zero outside the image."""
    h = box // 2
    pad = np.pad(frame, box)
    return np.stack([pad[y - h + box:y - h + 2 * box, x - h + box:x - h + 2 * box] for x, y in positions])


def simulate_movies(out: str | os.PathLike, p: MovieSimParams) -> Path:
    """Simulate ``p.n_micrographs`` movies with particles into the new folder ``out``; returns ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new output folder")
    (out / "movies").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir()
    rng = np.random.default_rng(p.seed)
    sp = SimulationParams(box=p.box, pixel_size=p.pixel_size, seed=p.seed)
    vol = phantom_volumes(sp)[0]
    proj = Projector(vol)
    positions = [place_particles(p, rng) for _ in range(p.n_micrographs)]
    n_per = [len(x) for x in positions]
    n = int(sum(n_per))
    truth = draw_truth(n, p.pixel_size, max_shift_px=p.max_origin_px, scale_sd=0.0, seed=p.seed + 1,
                       defocus_range_A=(p.defocus_min_A, p.defocus_max_A))
    models = _model_images(proj, truth, np.arange(n), p.box, p.pixel_size)
    sig_var = float(to_numpy(irfft2c(models, p.box)).var(axis=(1, 2)).mean())
    noise_sd = float(np.sqrt(p.n_frames * sig_var / p.snr))
    bfac = frame_bfactors(p)
    mic_of = np.repeat(np.arange(p.n_micrographs), n_per)
    traj = np.zeros((n, p.n_frames, 2))
    drift = np.zeros((p.n_micrographs, p.n_frames, 2))
    sums = np.zeros((n, p.box, p.box), np.float32)
    names = []
    for k in range(p.n_micrographs):
        sel = np.nonzero(mic_of == k)[0]
        drift[k] = draw_drift(p, rng)
        traj[sel] = draw_trajectories(positions[k], p, rng) + drift[k][None]
        frames = render_movie(models[xp().asarray(sel)], positions[k], traj[sel], bfac, p, noise_sd, rng)
        name = f"movies/mic_{k:03d}.mrcs"
        names.append(name)
        with StackWriter(out / name, p.n_frames, p.mic_size, p.pixel_size) as w:
            w[0:p.n_frames] = frames
        sums[sel] = extract(frames.sum(axis=0), positions[k], p.box)
    with StackWriter(out / "particles.mrcs", n, p.box, p.pixel_size) as w:
        w[0:n] = sums
    pos = np.concatenate(positions)
    table = pd.DataFrame({"rlnMicrographName": [names[k] for k in mic_of],
                          "rlnCoordinateX": pos[:, 0].astype(float), "rlnCoordinateY": pos[:, 1].astype(float)})
    stack = ParticleStack(pixel_size=p.pixel_size, box=p.box, ctf=truth.ctf, stack_paths=[out / "particles.mrcs"],
                          stack_file_id=np.zeros(n, int), stack_index=np.arange(n), rotations=truth.rotations,
                          shifts=truth.shifts_A, half_set=truth.half_set, table=table,
                          source=out / "particles.star")
    write_star(stack, out / "particles.star", relative_to=out)
    write_map(out / "half_A.mrc", vol, p.pixel_size)
    write_map(out / "half_B.mrc", vol, p.pixel_size)
    write_map(out / "truth_map.mrc", vol, p.pixel_size)
    radius = 0.5 * p.box * p.pixel_size * 0.8
    write_map(out / "mask.mrc", to_numpy(soft_sphere(p.box, radius, p.pixel_size, 3 * p.pixel_size)), p.pixel_size)
    dose = p.dose_per_frame * (np.arange(p.n_frames) + 0.5)
    np.savez(out / "truth" / "truth.npz", trajectories=traj, global_drift=drift, bfactors=bfac, positions=pos,
             micrograph=mic_of, dose=dose, noise_sd=noise_sd, half_set=truth.half_set)
    (out / "params.json").write_text(json.dumps({**asdict(p), "noise_sd": noise_sd}, indent=2) + "\n")
    return out


def load_truth(folder: str | os.PathLike) -> MovieTruth:
    """Read ``folder/truth/truth.npz`` written by :func:`simulate_movies`."""
    z = np.load(Path(folder) / "truth" / "truth.npz")
    return MovieTruth(z["trajectories"], z["global_drift"], z["bfactors"], z["positions"], z["micrograph"])
