"""A 2D-classification test set: a map projected at a few distinct views, plus junk, with the truth.

Every good particle is the map seen along one of ``n_views`` directions (spread over the sphere by a Fibonacci
lattice) with a random in-plane angle ``psi`` and origin, CTF-modulated, plus white noise at ``snr`` (var(signal)
over the box / var(noise), as :mod:`cryolive.simulator.particles`). Junk (``junk_fraction`` of all particles, in
equal parts): noise only; a carbon edge (a soft step of random direction and position, contrast 3x the particles'
signal s.d.); two particles of random orientation 0.22 box either side of the centre. Images are divided by the
noise s.d. (background s.d. 1, as after ``relion_preprocess --norm``).

``simulate_views`` writes ``particles.mrcs`` and ``particles.star`` (CTFs, no poses) and ``truth.npz``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.ctf import CTFParams, ctf_2d
from cryolive.io import ParticleStack, write_stack, write_star
from cryolive.projection import Projector
from cryolive.rotations.euler import euler_to_matrix
from cryolive.simulator.particles import random_rotations

JUNK_KINDS = ("noise", "carbon edge", "two particles")


@dataclass(frozen=True)
class ViewsTruth:
    """Ground truth (NumPy). ``view``/``junk_kind`` are -1 where they do not apply."""

    view: np.ndarray  # (N,) view index of a good particle, -1 for junk
    junk_kind: np.ndarray  # (N,) index into JUNK_KINDS, -1 for a good particle
    psi_deg: np.ndarray  # (N,) in-plane angle (RELION rlnAnglePsi) of good particles
    shifts_A: np.ndarray  # (N, 2) RELION origins (Å) of good particles
    view_angles_deg: np.ndarray  # (V, 2) (rot, tilt) of each view
    projections: np.ndarray  # (V, n, n) CTF-free, noise-free, centred projections at psi = 0 (same scale)
    noise_sd: float  # before the images were divided by it
    pixel_size: float


def view_directions(n_views: int) -> np.ndarray:
    """``(V, 2)`` RELION (rot, tilt) in degrees of ``n_views`` directions spread over the sphere (Fibonacci)."""
    i = np.arange(n_views) + 0.5
    z = 1.0 - 2.0 * i / n_views
    phi = np.pi * (1.0 + 5**0.5) * i
    return np.stack([np.degrees(np.mod(phi, 2 * np.pi)) - 180.0, np.degrees(np.arccos(z))], axis=1)


def _ctfs(n: int, rng: np.random.Generator, defocus_A: tuple[float, float]) -> CTFParams:
    du = rng.uniform(*defocus_A, n)
    return CTFParams.make(du, du + rng.uniform(-300.0, 300.0, n), rng.uniform(-np.pi, np.pi, n), 300.0, 2.7, 0.1)


def simulate_views(out: str | os.PathLike, volume: np.ndarray, pixel_size: float, n_views: int = 4,
                   per_view: int = 100, junk_fraction: float = 0.2, snr: float = 0.1, max_shift_px: float = 3.0,
                   defocus_A: tuple[float, float] = (10000.0, 25000.0),
                   seed: int = 0) -> tuple[Path, ViewsTruth]:
    """Write the data set into the new or empty folder ``out``; returns ``(particles.star, truth)``.

    Particles are in random order; ``max_shift_px`` bounds each origin coordinate (pixels).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(volume.shape[0])
    proj = Projector(volume)
    n_good = n_views * per_view
    n_junk = int(round(junk_fraction * n_good / (1.0 - junk_fraction)))
    n_tot = n_good + n_junk
    view = np.full(n_tot, -1)
    view[:n_good] = np.repeat(np.arange(n_views), per_view)
    kind = np.full(n_tot, -1)
    kind[n_good:] = np.arange(n_junk) % len(JUNK_KINDS)
    order = rng.permutation(n_tot)
    view, kind = view[order], kind[order]
    angles = view_directions(n_views)
    psi = np.where(view >= 0, rng.uniform(-180.0, 180.0, n_tot), 0.0)
    shifts_px = np.where((view >= 0)[:, None], rng.uniform(-max_shift_px, max_shift_px, (n_tot, 2)), 0.0)
    ctf = _ctfs(n_tot, rng, defocus_A)
    clean = np.zeros((n_tot, n, n), np.float32)
    good = np.nonzero(view >= 0)[0]
    rot = euler_to_matrix(*np.radians([angles[view[good], 0], angles[view[good], 1], psi[good]]))
    c2d = ctf_2d(ctf.subset(good), n, pixel_size)
    clean[good] = to_numpy(proj.project_real(rot, shifts_px[good], c2d))
    signal_sd = float(np.sqrt(clean[good].var(axis=(1, 2)).mean()))
    noise_sd = signal_sd / np.sqrt(snr)
    yy, xx = np.mgrid[:n, :n] - n // 2
    for i in np.nonzero(kind == 1)[0]:  # carbon edge
        a = rng.uniform(0, 2 * np.pi)
        d = xx * np.cos(a) + yy * np.sin(a) - rng.uniform(-n / 4, n / 4)
        clean[i] = 3.0 * signal_sd / (1.0 + np.exp(-d / 2.0))
    pairs = np.nonzero(kind == 2)[0]
    if len(pairs):
        a = rng.uniform(0, 2 * np.pi, len(pairs))
        off = 0.22 * n * np.stack([np.cos(a), np.sin(a)], 1)
        c2 = ctf_2d(ctf.subset(pairs), n, pixel_size)
        for sign in (1.0, -1.0):
            clean[pairs] += to_numpy(proj.project_real(random_rotations(len(pairs), rng), sign * off, c2))
    images = (clean + rng.normal(0.0, noise_sd, clean.shape).astype(np.float32)) / noise_sd
    write_stack(out / "particles.mrcs", images, pixel_size, overwrite=True)
    stack = ParticleStack(pixel_size=pixel_size, box=n, ctf=ctf, stack_paths=[out / "particles.mrcs"],
                          stack_file_id=np.zeros(n_tot, int), stack_index=np.arange(n_tot),
                          source=out / "particles.star")
    write_star(stack, out / "particles.star", overwrite=True, relative_to=out)
    views = euler_to_matrix(np.radians(angles[:, 0]), np.radians(angles[:, 1]), np.zeros(n_views))
    projections = to_numpy(proj.project_real(views)).astype(np.float32) / noise_sd
    truth = ViewsTruth(view, kind, np.where(view >= 0, psi, np.nan), shifts_px * pixel_size, angles, projections,
                       float(noise_sd), float(pixel_size))
    np.savez(out / "truth.npz", view=view, junk_kind=kind, psi_deg=truth.psi_deg, shifts_A=truth.shifts_A,
             view_angles_deg=angles, projections=projections, noise_sd=noise_sd)
    return out / "particles.star", truth
