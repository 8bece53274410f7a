"""Simulated particle images ``X_i = a_i C_i shift(P_{A_i} V_{k_i}, -origin_i) + N_i`` with their truth.

Poses are uniform on SO(3); origins (RELION convention, Å) uniform within ``+-max_shift_px`` pixels; defocus
uniform in ``defocus_range_A`` with astigmatism; per-particle scale ``a_i ~ N(1, scale_sd)``; white Gaussian
noise whose variance is ``var(signal) / snr``, where ``var(signal)`` is the mean per-image variance of the
noiseless CTF-modulated images over the box (the usual definition of SNR for simulations).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cryolive.backend import to_numpy, xp
from cryolive.image.ctf import CTFParams, ctf_2d
from cryolive.image.fourier import irfft2c
from cryolive.projection import Projector


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices drawn uniformly from SO(3) (via uniform unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


@dataclass(frozen=True)
class ParticleTruth:
    """Ground truth of a simulated data set (NumPy arrays, length N)."""

    rotations: np.ndarray  # (N, 3, 3) RELION A
    shifts_A: np.ndarray  # (N, 2) RELION origins in Å
    ctf: CTFParams
    states: np.ndarray  # (N,) int
    scales: np.ndarray  # (N,)
    half_set: np.ndarray  # (N,) 1 or 2
    noise_sd: float
    pixel_size: float


def draw_truth(n: int, pixel_size: float, n_states: int = 1, max_shift_px: float = 4.0,
               defocus_range_A: tuple[float, float] = (10000.0, 30000.0), astig_A: float = 300.0,
               scale_sd: float = 0.1, voltage: float = 300.0, cs: float = 2.7, amp_contrast: float = 0.1,
               bfactor: float = 0.0, seed: int = 0, noise_sd: float = 1.0) -> ParticleTruth:
    """Draw the per-particle parameters of a data set (no images yet)."""
    rng = np.random.default_rng(seed)
    rot = random_rotations(n, rng)
    shifts = rng.uniform(-max_shift_px, max_shift_px, (n, 2)) * pixel_size
    mean_df = rng.uniform(*defocus_range_A, n)
    astig = rng.uniform(-astig_A, astig_A, n)
    ctf = CTFParams.make(mean_df + astig / 2, mean_df - astig / 2, rng.uniform(-np.pi, np.pi, n), voltage, cs,
                         amp_contrast, 0.0, bfactor, 1.0)
    states = rng.integers(0, n_states, n)
    scales = np.clip(rng.normal(1.0, scale_sd, n), 0.3, None) if scale_sd > 0 else np.ones(n)
    half = rng.permutation(np.arange(n) % 2) + 1
    return ParticleTruth(rot, shifts, ctf, states, scales, half, float(noise_sd), float(pixel_size))


def clean_images(projectors: list[Projector], truth: ParticleTruth, index: np.ndarray) -> np.ndarray:
    """Noiseless images ``a C shift(P V_k, -origin)`` ``(B, n, n)`` (backend array) for particles ``index``."""
    m = xp()
    n = projectors[0].box
    out = m.zeros((len(index), n, n), dtype=m.float32)
    ctf = ctf_2d(truth.ctf.subset(index), n, truth.pixel_size)
    states = truth.states[index]
    for k, proj in enumerate(projectors):
        sel = np.nonzero(states == k)[0]
        if len(sel) == 0:
            continue
        ii = index[sel]
        f = proj.project(truth.rotations[ii], truth.shifts_A[ii] / truth.pixel_size, ctf[m.asarray(sel)])
        f = f * m.asarray(truth.scales[ii], dtype=m.float32)[:, None, None]
        out[m.asarray(sel)] = irfft2c(f, n)
    return out


def noise_sd_for_snr(projectors: list[Projector], truth: ParticleTruth, snr: float, n_probe: int = 256) -> float:
    """Noise standard deviation giving ``snr = var(signal) / var(noise)`` on the first ``n_probe`` particles."""
    idx = np.arange(min(n_probe, len(truth.states)))
    clean = to_numpy(clean_images(projectors, truth, idx))
    return float(np.sqrt(clean.var(axis=(1, 2)).mean() / snr))


def simulate_batches(volumes: list[np.ndarray], truth: ParticleTruth, batch_size: int = 512,
                     seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, images)`` batches (NumPy float32) of noisy particle images, deterministic for a seed."""
    projectors = [Projector(v) for v in volumes]
    n_total = len(truth.states)
    rng = np.random.default_rng(seed + 7919)
    n = projectors[0].box
    for start in range(0, n_total, batch_size):
        idx = np.arange(start, min(start + batch_size, n_total))
        imgs = to_numpy(clean_images(projectors, truth, idx))
        noise = rng.normal(0.0, truth.noise_sd, (len(idx), n, n)).astype(np.float32)
        yield idx, imgs + noise
