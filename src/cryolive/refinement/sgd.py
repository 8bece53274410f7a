"""Stochastic (minibatch) reconstruction at low resolution: the ab-initio step that frees a refinement from a wrong
starting map (cryoSPARC's ab-initio SGD, Punjani et al. 2017; RELION's 3D initial model).

Homogeneous refinement is expectation-maximisation: from a wrong but plausible map it converges to a nearby
fixed point, a map both half sets reproduce (their particles are assigned to the wrong map's views in the same
way) but not the molecule. This step instead updates the map after every small random minibatch:

1. Images are cropped in Fourier space to a small working box (Nyquist at ``final_resolution_A`` or finer), so
   a step costs milliseconds per particle.
2. Every particle of the minibatch is scored against the current map over a global SO(3) grid x in-plane shifts
   (scale-free Gaussian log-likelihood, see :mod:`cryolive.alignment.score`, only frequencies up to the
   current resolution); its ``top`` best poses get posterior weights ``softmax(beta LL)``.
3. The minibatch is inserted at those poses with those weights; the map's sufficient statistics (numerator and
   denominator of the Fourier reconstruction) are a running average, ``S <- (1 - rate) S + rate S_batch``, so
   the map remembers the last ~``1 / rate`` minibatches (online EM: a stochastic gradient step preconditioned by
   the denominator).
4. The new map is low-passed to the current resolution, made non-negative and masked by a soft sphere (the
   projection onto plausible maps that cryoSPARC's ab initio also applies).

The resolution rises from ``start_resolution_A`` to ``final_resolution_A`` over the first ``anneal`` of the
steps, and the posterior sharpens (``beta`` from ``beta_start`` to 1), so early steps average over many poses.
The generator yields one :class:`SGDStep` per minibatch step and returns the final map (particle box).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryolive.alignment.grid import project_grid
from cryolive.alignment.noise import noise_image, shell_power
from cryolive.alignment.pixels import pixel_set, soft_window
from cryolive.alignment.score import whitened_terms
from cryolive.alignment.search import global_level, origin_range_px, shift_grid
from cryolive.backend import to_numpy, xp
from cryolive.image.ctf import ctf_2d
from cryolive.image.fourier import rfft2c
from cryolive.image.resample import box_for_resolution, resample_rfft2, resample_volume
from cryolive.io import ParticleStack
from cryolive.masks import soft_sphere
from cryolive.projection import Projector, Reconstructor
from cryolive.resolution.filters import lowpass
from cryolive.rotations.grids import random_perturbation, so3_grid


@dataclass(frozen=True)
class SGDParams:
    """Minibatch reconstruction parameters (lengths in Å, angles in degrees, shifts in pixels of the particle box).

    ``steps`` minibatches of ``batch_size`` particles; ``rate`` the weight of each minibatch in the running
    statistics; ``top`` poses per particle enter the posterior; ``beta_start`` the posterior's inverse temperature
    at the first step (1 at the end of annealing); ``step_deg`` the SO(3) grid step; ``max_shift_px`` the largest
    origin searched (None: 10 % of the box); ``particle_diameter_A`` sets the sphere mask (None: 70 % of the box).
    """

    steps: int = 150
    batch_size: int = 200
    rate: float = 0.1
    start_resolution_A: float = 35.0
    final_resolution_A: float = 15.0
    anneal: float = 0.7
    top: int = 20
    beta_start: float = 0.1
    step_deg: float = 15.0
    max_shift_px: float | None = None
    particle_diameter_A: float | None = None
    wiener_constant: float = 0.05
    symmetry: str = "C1"
    seed: int = 0


@dataclass(frozen=True)
class SGDStep:
    """One minibatch step: the step number (from 1) of ``n_steps``, the resolution used (Å), the posterior's inverse
    temperature, the map (NumPy float32, working box ``box`` at ``pixel_size`` Å) and the step's time (s)."""

    step: int
    n_steps: int
    resolution_A: float
    beta: float
    map: np.ndarray
    box: int
    pixel_size: float
    seconds: float

    @property
    def milestone(self) -> bool:
        """Whether a log reports this step: every 10th and the last."""
        return self.step % 10 == 0 or self.step == self.n_steps

    def map_in_box(self, n: int) -> np.ndarray:
        """The step's map resampled (Fourier crop/pad) to the particles' box ``n``: NumPy float32 ``(n, n, n)``."""
        return to_numpy(resample_volume(self.map, n)).astype(np.float32)


def _schedule(p: SGDParams, step: int) -> tuple[float, float]:
    """Resolution (Å, linear in 1/resolution) and inverse temperature at ``step`` (1-based)."""
    t = min(1.0, (step - 1) / max(p.anneal * p.steps, 1.0))
    res = 1.0 / ((1 - t) / p.start_resolution_A + t / p.final_resolution_A)
    return float(res), float(p.beta_start + (1.0 - p.beta_start) * t)


class _Minibatch:
    """Images of a particle stack cropped to the working box, with their CTFs."""

    def __init__(self, stack: ParticleStack, box: int) -> None:
        self.stack, self.n, self.box = stack, stack.box, box
        self.window = soft_window(stack.box)
        self.pixel_size = stack.pixel_size * stack.box / box  # Å per pixel of the working box

    def images(self, idx: np.ndarray) -> Any:
        """Windowed image transforms cropped to the working box ``(B, box, box // 2 + 1)``."""
        m = xp()
        return resample_rfft2(rfft2c(m.asarray(self.stack.images(idx)) * self.window), self.n, self.box)

    def ctf(self, idx: np.ndarray) -> Any:
        """CTF ``(B, box, box // 2 + 1)`` of particles ``idx`` on the working box's grid."""
        return ctf_2d(self.stack.ctf.subset(idx), self.box, self.pixel_size)


def sgd_reconstruct(stack: ParticleStack, start: Any, params: SGDParams | None = None
                    ) -> Generator[SGDStep, None, np.ndarray]:
    """Minibatch reconstruction from ``start`` (an ``(n, n, n)`` map at the particles' pixel size, may be wrong).

    Yields an :class:`SGDStep` per minibatch; returns the final map ``(n, n, n)`` float32 (NumPy) at the
    particles' pixel size, low-passed to ``final_resolution_A``.
    """
    p = params or SGDParams()
    m = xp()
    rng = np.random.default_rng(p.seed)
    n, apix = stack.box, stack.pixel_size
    box = box_for_resolution(n, apix, p.final_resolution_A)
    apix_w = apix * n / box
    data = _Minibatch(stack, box)
    diameter = p.particle_diameter_A or 0.7 * n * apix
    sphere = soft_sphere(box, 0.5 * diameter, apix_w, 0.1 * n * apix)
    max_shift = origin_range_px(n, p.max_shift_px) * box / n
    shifts = shift_grid(max_shift, max(0.5, max_shift / 4))
    sample = np.sort(rng.choice(len(stack), size=min(len(stack), 500), replace=False))
    sigma2 = np.maximum(shell_power(data.images(sample), box), 1e-30)
    noise = noise_image(sigma2, box)
    vol = _project_plausible(resample_volume(m.asarray(start, dtype=m.float32), box), p.start_resolution_A,
                             apix_w, sphere)
    running: Reconstructor | None = None
    grid_rots = so3_grid(p.step_deg, p.symmetry)
    for step in range(1, p.steps + 1):
        t0 = time.perf_counter()
        res, beta = _schedule(p, step)
        idx = np.sort(rng.choice(len(stack), size=min(len(stack), p.batch_size), replace=False))
        pix = pixel_set(box, min(n * apix / res * 1.1, box / 2 - 1))
        f, c = data.images(idx), data.ctf(idx)
        y, c2w = whitened_terms(f, c.reshape(len(idx), -1)[:, pix.index], sigma2, pix)
        proj = Projector(vol)
        grid = project_grid(proj, grid_rots @ random_perturbation(rng, p.step_deg / 2), pix)
        cand, _ = global_level(grid, y, c2w, np.ones(len(idx)), shifts,
                               pix.kx, pix.ky, p.top, np.inf, free_scale=True)
        ll = beta * (cand.scores - cand.scores[:, :1])
        wts = np.exp(ll)
        wts /= wts.sum(axis=1, keepdims=True)
        batch = Reconstructor(box, symmetry=p.symmetry)
        for j in range(cand.scores.shape[1]):
            batch.insert(f, cand.rotations[:, j], ctf=c, shifts=cand.shifts[:, j], weights=wts[:, j],
                         noise_power=noise)
        if running is None:
            running = batch
        else:
            running.blend(batch, p.rate)
        vol = _project_plausible(running.finalize(wiener_constant=p.wiener_constant), res, apix_w, sphere)
        yield SGDStep(step, p.steps, res, beta, to_numpy(vol).astype(np.float32), box, apix_w, time.perf_counter() - t0)
    final = lowpass(resample_volume(vol, n), p.final_resolution_A, apix)
    return to_numpy(final).astype(np.float32)


def _project_plausible(vol: Any, resolution_A: float, pixel_size: float, sphere: Any) -> Any:
    """Low-pass to ``resolution_A``, clip negative density, mask by ``sphere``."""
    m = xp()
    return m.maximum(lowpass(vol, resolution_A, pixel_size), 0.0) * sphere
