"""Homogeneous refinement as a generator: ``refine(particles, reference, params)``.

Each iteration (docs/maths.md: "The score", "Pose search", "Expectation–maximisation and the gold standard",
"Reconstruction, half maps and the Wiener prior"):

1. E step, per half set against its own half map (gold standard): coarse-to-fine pose search
   (:mod:`cryolive.alignment.search`) scored with the Gaussian log-likelihood over Fourier pixels up to the
   alignment resolution, whitened by the per-shell noise spectrum ``sigma^2``; per-particle scale by least squares.
2. M step: Fourier insertion of the particles at their best pose (or, with marginalisation, at their most
   probable poses weighted by the posterior) into two half-set reconstructors; Wiener prior from the half-map FSC.
3. Gold-standard FSC (masked, phase-randomisation corrected, and unmasked); the next references are the half maps
   filtered by ``sqrt(2 FSC / (1 + FSC))``, averaged below the split resolution (default 20 Å) so the halves stay in
   register, independent above it, and multiplied by the refinement mask.
4. ``sigma^2`` from the residuals at the best poses; a dynamic mask from the half maps once the resolution passes
   ``dynamic_mask_start_A``.

Optionally (``sgd_steps``) the reference is first replaced by a minibatch ab-initio reconstruction started from it
(:mod:`cryolive.refinement.sgd`), for a reference that may be wrong.

The generator yields one immutable :class:`RefineIteration` per iteration and returns a :class:`RefineResult`;
with ``sgd_steps`` it first yields one :class:`~cryolive.refinement.sgd.SGDStep` per ab-initio step (so a viewer
shows that phase live and a stop takes effect within one step). Consumers tell them apart by type
(:data:`RefineStep`).
It reads particles in batches (memory bounded by ``batch_size``), holds no Qt, and writes no files (the job
wrapper :func:`cryolive.jobs.refine.refine_job` does). Steps 1 and 2 of an iteration are one function over any part
of the particles (:func:`cryolive.refinement.estep.run_part`): this process runs it over the iteration's particles,
or, with ``workers`` / ``scheduler`` (or a Dask ``client``), the Dask workers run it over their parts and the driver
adds them (:mod:`cryolive.refinement.distributed`); steps 3 and 4 run here either way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryolive.alignment.grid import project_grid
from cryolive.alignment.noise import shell_power
from cryolive.alignment.pixels import PARTICLE_DIAMETER_HELP, pixel_set, scoring_window
from cryolive.alignment.score import Scorer, score_poses
from cryolive.alignment.search import origin_range_px
from cryolive.backend import to_numpy, xp
from cryolive.batching import AdaptiveBatch
from cryolive.io import InputError, ParticleStack
from cryolive.masks import mask_volume_fraction, soft_sphere, solvent_mask_from_map
from cryolive.params import check_params, param
from cryolive.projection import Projector
from cryolive.projection.gridding import working_freq
from cryolive.reconstruction.halves import half_sets, regularised_halves
from cryolive.refinement.distributed import DaskParts
from cryolive.refinement.estep import IterationContext, PartResult, Poses, image_pair, run_part, search, search_plan
from cryolive.refinement.sgd import SGDParams, SGDStep, sgd_reconstruct
from cryolive.resolution.filters import fsc_filter, lowpass, lowpass_below
from cryolive.resolution.fsc import FSCResult, gold_standard_fsc, resolution_at
from cryolive.rotations.grids import random_perturbation, so3_grid
from cryolive.rotations.symmetry import (
    canonical_symmetry_name,
    check_symmetry,
    point_group_order,
    symmetric_angular_distance,
    symmetry_operators,
)


@dataclass(frozen=True)
class RefineParams:
    """Parameters of homogeneous refinement (lengths in Å, angles in degrees, shifts in pixels).

    Defaults follow cryoSPARC's homogeneous refinement / RELION's auto-refine where they have one.
    """

    symmetry: str = "C1"
    initial_lowpass_A: float = param(20.0, gt=0, unit="Å", flag="--lowpass", label="Initial low-pass",
                                     help="initial low-pass of the reference")
    split_resolution_A: float = param(20.0, gt=0, unit="Å", label="Halves joined below")
    greyscale: bool = True
    max_iter: int = param(12, ge=1, flag="--max-iter", label="Maximum iterations")
    extra_final_passes: int = param(1, ge=0, label="Final passes")
    stop_tolerance: float = param(0.01, ge=0, le=1, label="Stop tolerance")
    global_iters: int = param(3, ge=0, flag="--global-iters", label="Global iterations",
                              help="iterations with a global pose search before local refinement")
    # global search goes on past ``global_iters`` while more than ``global_moved_fraction`` of the particles moved
    # by > 20 deg (up to the symmetry) in the last global iteration, up to ``max_global_iters`` global iterations
    # in all: on pseudo-symmetric particles each global iteration moves part of those stuck on a wrong mate
    # (RELION likewise searches globally until its sampling is fine)
    global_moved_fraction: float = param(0.05, ge=0, le=1, label="Global while moving")
    max_global_iters: int = param(8, ge=0, flag="--max-global-iters", label="Maximum global iterations",
                                  help="global search goes on after --global-iters while > 5 % of the particles "
                                       "still move by > 20 deg, up to this many global iterations (equal to "
                                       "--global-iters: never)")
    # start from the particles' own poses (a previous refinement's) with local searches from iteration 1, as
    # cryoSPARC's local refinement / RELION's continued auto-refine; off: poses in the input are ignored
    use_input_poses: bool = False
    # pseudo-symmetry to relax (RELION's --relax_sym, cryoSPARC's symmetry relaxation by maximisation): the map is
    # reconstructed with ``symmetry``, but every local search also tries each mate of the previous pose under this
    # larger group and keeps the best, so particles aligned to the wrong copy of a near-symmetric map can move
    relax_symmetry: str | None = None
    # draw global poses from the coarse posterior in the global iterations before the last (stochastic EM).
    # Off by default: on the CI data it left 4.3 % of the particles > 20° off against 1.5 %, and it did not make a
    # wrong starting map converge; it does keep a blob-like start from piling particles onto a few views
    stochastic_global: bool = False
    # minibatch (ab-initio) reconstruction from the reference before the refinement starts
    # (:mod:`cryolive.refinement.sgd`): frees the refinement from a wrong starting map. Off (0) by default, as in
    # RELION's and cryoSPARC's refinements: from a good reference it costs ~0.5 s a step and turned the frame by
    # 3° on the CI data (the map keeps its shape but not exactly the reference's orientation)
    sgd_steps: int = param(0, ge=0, flag="--sgd-steps", label="Ab-initio steps",
                           help="minibatch (ab-initio) steps from the reference at low resolution before the "
                                "refinement: lets it converge from a wrong starting map (~0.5 s per step); off (0) "
                                "trusts the reference")
    sgd_batch_size: int = param(200, ge=1, label="Ab-initio batch")
    sgd_resolution_A: float = param(15.0, gt=0, unit="Å", label="Ab-initio resolution")
    coarse_step_deg: float = param(7.5, gt=0, le=60, unit="deg", flag="--coarse-step", label="Coarse step",
                                   help="coarsest angular step")
    levels: int = param(3, ge=1, le=8, label="Search levels")
    candidates: int = param(5, ge=1, label="Candidates per level")
    # RELION's --particle_diameter: the images are scored inside a soft circle of this diameter (5 px edge), so
    # neighbours and junk at the box's edge stay out of the comparison; None: the window below
    particle_diameter_A: float | None = param(None, gt=0, unit="Å", flag="--particle-diameter",
                                              label="Particle diameter",
                                              help=PARTICLE_DIAMETER_HELP)
    bound_sigma: float = param(4.0, gt=0, label="Bound (sigma)")
    max_shift_px: float | None = param(None, ge=0, unit="px", flag="--max-shift", label="Maximum shift",
                                       help="shift search range (default: 10 % of the box)")
    max_align_resolution_A: float | None = param(None, gt=0, unit="Å", flag="--max-align-res",
                                                 label="Align no finer than",
                                                 help="never align beyond this resolution (default: no limit)")
    marginalize: bool = False
    marginal_top: int = param(5, ge=1, label="Poses marginalised")
    # global iterations insert each particle at every pose basin its search kept (up to ``candidates``, at least a
    # few grid steps apart), weighted by their posterior, as RELION marginalises: while the reference is at low
    # resolution the posterior is broad and the best pose is often a wrong one; inserting only that one builds
    # the wrong poses into both half maps, which then agree with them (on an elongated pseudo-D2 phantom 60 % of
    # the particles were > 20 deg off after the first iteration)
    marginalize_global: bool = True
    scale_mode: str = param("minimize", choices=("minimize", "reset"), flag="--scale", label="Scale",
                            help="per-particle scale")
    window_inner: float = param(0.85, gt=0, le=1, label="Window inner radius")
    window_outer: float = param(0.99, gt=0, le=1, label="Window outer radius")
    minibatch_iters: int = param(2, ge=0, label="Minibatch iterations")
    minibatch_size: int | None = param(None, ge=1, label="Minibatch size")
    dynamic_mask_threshold: float = param(0.2, gt=0, le=1, label="Mask threshold")
    dynamic_mask_near: float = 0.6
    dynamic_mask_far: float = 1.4
    dynamic_mask_start_A: float = 12.0
    dynamic_mask_lowpass_A: float = 15.0
    dynamic_mask_min_fraction: float = 0.02
    fsc_mask_min_near_A: float = 4.0
    fsc_mask_min_far_A: float = 9.0
    batch_size: int = param(256, ge=1, flag="--batch-size", label="Batch size")
    # projectors and reconstructors work in a box cut to the current alignment resolution plus a margin
    # (``working_margin`` x the alignment radius + ``working_margin_px``), as RELION's current_size and cryoSPARC's
    # working box do: set-up, search, insertion and memory scale with the resolution. The final passes (and the last
    # allowed iteration) use the whole box, so the maps written are complete to Nyquist
    working_box: bool = param(True, flag="--working-box", label="Working box",
                              help="work in a box cut to the current resolution (plus a margin), the final passes "
                                   "at the whole box (on by default; --no-working-box: the whole box throughout)")
    working_margin: float = param(1.25, ge=1, label="Working box margin")
    working_margin_px: float = param(10.0, ge=0, unit="px", label="Working box extra")
    seed: int = 0
    # beyond one process (:mod:`cryolive.refinement.distributed`): each iteration's E + M step on a local Dask
    # cluster of ``workers`` processes, or on the existing cluster at ``scheduler`` (tcp://host:8786); the maps and
    # poses are one process's (to float rounding of the sums)
    workers: int | None = param(None, ge=1, flag="--workers", label="Dask workers",
                                help="search and insert on a local Dask cluster of this many processes")
    scheduler: str | None = None


@dataclass(frozen=True)
class RefineIteration:
    """What one iteration produced. Maps are NumPy float32 ``[z, y, x]``; resolutions in Å."""

    iteration: int
    search: str  # "global" or "local"
    n_particles: int
    align_resolution_A: float
    resolution_A: float  # GSFSC 0.143 (masked, corrected)
    resolution_unmasked_A: float
    fsc: FSCResult
    map: np.ndarray  # full map filtered by the FSC weight
    half_a: np.ndarray
    half_b: np.ndarray
    mask: np.ndarray
    angular_distribution: np.ndarray  # (18, 36) counts over (tilt, rot) in 10-degree bins
    pose_summary: dict[str, float]
    sigma2: np.ndarray  # noise power per shell
    timings: dict[str, float] = field(default_factory=dict)
    fsc_mask: np.ndarray | None = None  # the (tighter) mask the corrected FSC used
    checkpoint: RefineCheckpoint | None = None  # what the next iteration starts from (to continue a killed job)
    working_box: int = 0  # box (px) the iteration's projectors and reconstructions worked in (RefineParams.working_box)


@dataclass(frozen=True)
class RefineCheckpoint:
    """Everything the iteration after ``iteration`` starts from: :func:`refine` with ``resume=`` this goes on
    exactly as the uninterrupted run would have (same poses, maps and random draws).

    Poses: ``rotations (N, 3, 3)`` RELION ``A``, ``shifts_px (N, 2)`` origins in pixels, ``scales (N,)``,
    ``seen (N,)`` (has a pose from this run), ``half (N,)`` (1 / 2); ``sigma2`` noise power per shell;
    ``ref_a``, ``ref_b``, ``mask``, ``fsc_mask`` ``(n, n, n)`` float32; resolutions in Å; the stopping state
    (``best_resolution_A``, ``stalls``, ``final_left``: -1 while not counting down) and the random generator's
    state as JSON.
    """

    iteration: int
    rotations: np.ndarray
    shifts_px: np.ndarray
    scales: np.ndarray
    seen: np.ndarray
    half: np.ndarray
    sigma2: np.ndarray
    ref_a: np.ndarray
    ref_b: np.ndarray
    mask: np.ndarray
    fsc_mask: np.ndarray
    resolution_A: float
    align_resolution_A: float
    global_iters: int
    best_resolution_A: float
    stalls: int
    final_left: int
    rng_state: str


#: what :func:`refine` yields: the ab-initio steps (only with ``sgd_steps``), then one result per iteration
RefineStep = SGDStep | RefineIteration


@dataclass(frozen=True)
class RefineResult:
    """The last iteration and every particle's final pose (rotations RELION ``A``, origins in Å)."""

    final: RefineIteration
    rotations: np.ndarray
    shifts_A: np.ndarray
    half_set: np.ndarray
    scales: np.ndarray
    particles: ParticleStack
    history: list[dict[str, float]]


def _host32(a: Any) -> np.ndarray:
    """A fresh map of this iteration as a NumPy float32 array: the array itself on NumPy when it is float32 already
    (the iteration hands it on, the dock shows it without a copy), else one copy (from the GPU, or a cast)."""
    return np.asarray(to_numpy(a), dtype=np.float32)


def _angular_histogram(rotations: np.ndarray) -> np.ndarray:
    """Counts of viewing directions (third row of A) in 10-degree bins of (tilt 0-180, rot -180-180)."""
    d = rotations[:, 2, :]
    tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
    rot = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    h, _, _ = np.histogram2d(tilt, rot, bins=(18, 36), range=((0, 180), (-180, 180)))
    return h.astype(np.float32)


def _combine_below(half: Any, other: Any, res_A: float, apix: float) -> Any:
    """``half`` above ``res_A``, the average of both halves below it (soft edge)."""
    avg = 0.5 * (half + other)
    return lowpass_below(avg, res_A, apix) + half - lowpass_below(half, res_A, apix)


def _require_poses(stack: ParticleStack) -> None:
    """Raise an InputError naming the file when ``stack`` has no poses to start from."""
    if stack.rotations is None:
        raise InputError(f"{stack.source}: no poses (rlnAngleRot/Tilt/Psi) to start from; run a refinement with a "
                         "global search first, or do not ask for the input poses")


def _initial_state(stack: ParticleStack, use_input_poses: bool) -> Poses:
    """Every particle's pose before iteration 1: identity (no pose yet) or, with ``use_input_poses``, the stack's
    own rotations and origins (Å in the stack, pixels in the state)."""
    n = len(stack)
    if not use_input_poses:
        return Poses(np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 2)), np.ones(n), np.zeros(n, bool))
    _require_poses(stack)
    shifts = np.zeros((n, 2)) if stack.shifts is None else stack.shifts / stack.pixel_size
    return Poses(stack.rotations.astype(np.float64).copy(), shifts.astype(np.float64), np.ones(n),
                  np.ones(n, bool))


def _relaxed_mates(symmetry: str, relax: str | None) -> np.ndarray | None:
    """Operators ``(G, 3, 3)`` of the pseudo-symmetry ``relax`` (None: no relaxation), checked to be a larger group
    than the enforced ``symmetry`` that contains it (C1 in C2, C2 in D2 or C4; not C3 in D2)."""
    if relax is None or canonical_symmetry_name(relax) == "C1":
        return None
    ops = symmetry_operators(relax)
    enforced = symmetry_operators(symmetry)
    contained = all(np.abs(ops - s).max(axis=(1, 2)).min() < 1e-6 for s in enforced)
    if point_group_order(relax) <= point_group_order(symmetry) or not contained:
        raise ValueError(f"relax_symmetry {relax} must be a larger group than the enforced symmetry {symmetry}, "
                         f"containing it")
    return ops


def check_inputs(stack: ParticleStack, p: RefineParams) -> None:
    """Raise (InputError / ValueError, naming the problem) before any work if ``p`` cannot run on ``stack``: a scale
    mode that does not exist, a relaxed symmetry no larger than the enforced one, input poses asked for but absent
    or together with ab-initio steps."""
    check_params(p)
    check_symmetry(p.symmetry)
    if p.relax_symmetry is not None:
        check_symmetry(p.relax_symmetry, "relax_symmetry")
    if p.window_inner >= p.window_outer:
        raise InputError(f"window_inner ({p.window_inner}) must be below window_outer ({p.window_outer})")
    _relaxed_mates(p.symmetry, p.relax_symmetry)
    check_dask_options(p.workers, p.scheduler)
    if p.use_input_poses:
        if p.sgd_steps > 0:
            raise ValueError("ab-initio steps (sgd_steps) rebuild the map without poses: they cannot be combined "
                             "with starting from the particles' poses (use_input_poses)")
        _require_poses(stack)


def check_dask_options(workers: int | None, scheduler: str | None) -> None:
    """Refuse ``--workers`` together with ``--scheduler`` (a local cluster or an existing one, not both), and a
    scheduler address that is empty or holds spaces."""
    if workers is not None and scheduler is not None:
        raise InputError(f"--workers {workers} and --scheduler {scheduler}: give one (a local cluster of N "
                         "processes, or an existing cluster's scheduler), not both")
    if scheduler is not None and (not scheduler.strip() or len(scheduler.split()) != 1):
        raise InputError(f"--scheduler {scheduler!r}: not a scheduler address (e.g. tcp://host:8786)")


def _checked_reference(reference: Any, box: int) -> np.ndarray:
    """The reference as NumPy float32, after checking its shape ``(box, box, box)`` and that it is finite."""
    ref = np.asarray(to_numpy(reference), dtype=np.float32)
    if ref.shape != (box,) * 3:
        raise InputError(f"reference map has shape {ref.shape}, the particles' box is {box}")
    if not np.isfinite(ref).all():
        raise InputError("reference map holds NaN or Inf values")
    return ref


class _Refiner:
    """The state and steps of one refinement (used by :func:`refine`)."""

    def __init__(self, stack: ParticleStack, reference: Any, p: RefineParams, mask: Any = None,
                 dask: DaskParts | None = None) -> None:
        m = xp()
        self.m, self.stack, self.p = m, stack, p
        self.n, self.apix = stack.box, stack.pixel_size
        self.scorer = Scorer(stack.ctf, self.apix)
        ref = _checked_reference(reference, self.n)
        self.rng = np.random.default_rng(p.seed)
        self.batches = AdaptiveBatch(p.batch_size, label="refinement")  # E/M batches (see iteration)
        self.dask = dask  # the E/M step on Dask workers (None: in this process)
        self.half = half_sets(stack, p.seed)
        self.state = _initial_state(stack, p.use_input_poses)
        self.global_iters = 0 if p.use_input_poses else p.global_iters
        self.relax_ops = _relaxed_mates(p.symmetry, p.relax_symmetry)
        self.window = scoring_window(self.n, self.apix, p.particle_diameter_A, p.window_inner, p.window_outer)
        self.max_shift = origin_range_px(self.n, p.max_shift_px)
        self.static_mask = None if mask is None else m.asarray(mask, dtype=m.float32)
        self.mask = (self.static_mask if self.static_mask is not None else
                     soft_sphere(self.n, 0.45 * self.n * self.apix, self.apix, 0.05 * self.n * self.apix))
        self.fsc_mask = self.mask
        self.ref_mask = self.mask  # static: the user's mask or the sphere, never the dynamic one
        ref0 = lowpass(m.asarray(ref), p.initial_lowpass_A, self.apix)
        self.refs = [ref0 * self.ref_mask, ref0 * self.ref_mask]
        self.resolution = self.align_resolution = p.initial_lowpass_A
        self.sigma2 = self._initial_sigma2()

    # ----------------------------------------------------------------------------------------------- helpers
    def _images(self, idx: np.ndarray) -> Any:
        """Windowed image transforms ``(B, n, n // 2 + 1)`` (what the E step scores)."""
        return image_pair(self.stack, idx, self.window)[0]

    def _initial_sigma2(self) -> np.ndarray:
        idx = np.sort(self.rng.choice(len(self.stack), size=min(len(self.stack), 1000), replace=False))
        return shell_power(self._images(idx), self.n)

    def _align_radius(self) -> float:
        res = self.align_resolution
        if self.p.max_align_resolution_A:
            res = max(res, self.p.max_align_resolution_A)
        return float(min(self.n * self.apix / res * 1.1 + 1.0, self.n / 2 - 1))

    def _level_radii(self, r_align: float, first_level: int) -> list[float]:
        """Fourier radius (pixels) of each search level (see :meth:`SearchPlan.level_radii`)."""
        radius_A = 0.5 * (self.p.particle_diameter_A or 0.7 * self.n * self.apix)
        return search_plan(self.p, self.n, self.max_shift).level_radii(r_align, first_level, radius_A, self.apix)

    # ------------------------------------------------------------------------------------------- iteration
    def _working_freq(self, r_align: float, full_box: bool) -> float:
        """Highest frequency (cycles/pixel) the projectors and reconstructors of an iteration hold: the alignment
        radius with its margin, or 0.5 (the whole box) for ``full_box`` or with the working box off."""
        if full_box or not self.p.working_box:
            return 0.5
        return working_freq(r_align, self.n, self.p.working_margin, self.p.working_margin_px)

    def perturbed_grids(self) -> tuple[np.ndarray, np.ndarray]:
        """Each half set's global grid ``(G, 3, 3)`` for the next global iteration, drawn from the refiner's
        generator (on the driver): each half set gets its own randomly perturbed grid, new every iteration (as
        RELION perturbs its HEALPix grid): with one fixed grid, particles of both halves snap to the same discrete
        poses and the back-projection pattern they share inflates the FSC."""
        p = self.p
        base = so3_grid(p.coarse_step_deg, p.symmetry)
        return (base @ random_perturbation(self.rng, p.coarse_step_deg / 2),
                base @ random_perturbation(self.rng, p.coarse_step_deg / 2))

    def context(self, local: bool, free_scale: bool = False, sample: bool = False, full_box: bool = True,
                grids: tuple[np.ndarray, np.ndarray] | None = None) -> IterationContext:
        """What the E + M step of an iteration shares (:class:`~cryolive.refinement.estep.IterationContext`) with
        the refiner's references, ``sigma^2`` and resolution now; ``grids``: a global search's grids
        (:meth:`perturbed_grids`)."""
        r_align = self._align_radius()
        return IterationContext(params=self.p, box=self.n, pixel_size=self.apix, refs=(self.refs[0], self.refs[1]),
                                work_freq=self._working_freq(r_align, full_box), r_align=r_align,
                                radii=tuple(self._level_radii(r_align, 0)), grid_rotations=grids, sigma2=self.sigma2,
                                window=self.window, max_shift=self.max_shift, relax_ops=self.relax_ops, local=local,
                                free_scale=free_scale, sample=sample)

    def e_m_step(self, it: int, subset: np.ndarray, ctx: IterationContext) -> PartResult:
        """Search and insert particles ``subset`` (:func:`~cryolive.refinement.estep.run_part`): in this process in
        batches that fit the device (the search's random draws from the refiner's generator), or over the Dask
        workers (:class:`~cryolive.refinement.distributed.DaskParts`); the new poses are written to the state."""
        poses, half = self.state.take(subset), self.half[subset]
        if self.dask is None:
            part = run_part(self.stack, ctx, subset, poses, half, batches=self.batches, rng=self.rng)
        else:
            part = self.dask.run(ctx, subset, poses, half, it, self.p.seed)
        self.state.put(part.idx, part.poses)
        return part

    def iteration(self, it: int, subset: np.ndarray, local: bool, free_scale: bool,
                  sample: bool = False, full_box: bool = True) -> dict[str, Any]:
        """One E + M step over ``subset``; ``sample``: draw global poses from the coarse posterior (see
        :func:`~cryolive.alignment.search.search_poses`) instead of taking the best; ``full_box``: work at the
        whole box instead of the working box (:meth:`_working_freq`)."""
        p = self.p
        t0 = time.perf_counter()
        ctx = self.context(local, free_scale, sample, full_box, None if local else self.perturbed_grids())
        old_rot = self.state.rotations[subset].copy()
        had_pose = self.state.seen[subset].copy()
        part = self.e_m_step(it, subset, ctx)
        recs, pruned, t_search, t_insert = part.recs, part.pruned, part.search_s, part.insert_s
        self.sigma2 = np.where(part.cnt > 0, part.acc / np.maximum(part.cnt, 1e-12), self.sigma2)
        del part
        if p.scale_mode == "minimize":  # the map carries the absolute scale: keep the median particle scale at 1
            self.state.scales[subset] /= float(np.median(self.state.scales[subset]))
        tr = time.perf_counter()
        # the half maps, their FSC and the output map are plain num / den (what relion_reconstruct makes from the
        # written STAR); the references are the half maps remade with the FSC's Wiener prior (RELION's tau2)
        half_a, half_b = recs[0].finalize(), recs[1].finalize()
        reg_a, reg_b = regularised_halves(recs[0], recs[1], half_a, half_b)
        avg = 0.5 * (half_a + half_b)
        self._update_mask(avg)
        fsc = gold_standard_fsc(half_a, half_b, self.apix, mask=self.fsc_mask, seed=p.seed + it)
        # in a working box the maps hold nothing beyond its radius: no resolution finer than that is claimed (a
        # mask would spread some of the signal there)
        work_limit_A = self.apix / ctx.work_freq if ctx.work_freq < 0.5 else 0.0
        self.resolution = max(float(fsc.res_0143), work_limit_A)
        # Alignment follows the *unmasked* FSC, and the references are filtered by it and masked only by the
        # static mask (user mask or sphere): a mask made from both halves' average, or an FSC raised by it, would
        # feed the same high-resolution template to both halves and the resolution would run away to Nyquist.
        self.align_resolution = max(float(resolution_at(fsc.fsc_unmasked, self.n, self.apix, 0.143)),
                                    work_limit_A)
        full_map = fsc_filter(avg, fsc.fsc)
        refs = []
        for h, o in ((reg_a, reg_b), (reg_b, reg_a)):
            filt = fsc_filter(h, fsc.fsc_unmasked)
            refs.append(_combine_below(filt, fsc_filter(o, fsc.fsc_unmasked), p.split_resolution_A, self.apix)
                        * self.ref_mask)
        self.refs = refs
        t_rec = time.perf_counter() - tr
        change = np.degrees(symmetric_angular_distance(old_rot, self.state.rotations[subset], p.symmetry))
        change = change[had_pose]
        return dict(
            half_a=half_a, half_b=half_b, map=full_map, fsc=fsc, r_align=ctx.r_align,
            pose_summary={
                "median_pose_change_deg": float(np.median(change)) if change.size else float("nan"),
                "moved_20deg_fraction": float(np.mean(change > 20.0)) if change.size else 1.0,
                "median_scale": float(np.median(self.state.scales[subset])),
                "pruned_candidates": float(pruned),
                "max_shift_px": float(self.max_shift),
            },
            timings={"search_s": t_search, "insert_s": t_insert, "reconstruct_fsc_s": t_rec,
                     "total_s": time.perf_counter() - t0},
            working_box=recs[0].grid_box,
        )

    def _update_mask(self, avg: Any) -> None:
        """Refinement mask (static, else dynamic from the half maps once past the start resolution) and the
        tighter FSC mask.

        The FSC mask is dilated by ``near x resolution`` (at least ``fsc_mask_min_near_A``) with a soft edge of
        ``far x resolution`` (at least ``fsc_mask_min_far_A``); the refinement mask has twice those widths (at
        least cryoSPARC's 6 / 14 Å). Thinner, sharper FSC masks are not honest: on 3000 true-pose particles a
        mask dilated 2 Å with a 4.5 Å edge gave a phase-randomised FSC of ~0.8 at high resolution and a
        corrected GSFSC at Nyquist (4.0 Å) against 5.95 Å from the masked FSC with the truth; 3.8 / 8.8 Å gave
        5.21 against 5.03 Å."""
        p = self.p
        if self.static_mask is not None:
            self.mask = self.fsc_mask = self.static_mask
            return
        res = self.resolution
        if res <= p.dynamic_mask_start_A:
            # a mask with fine detail would carry both halves' noise into the FSC (and the resolution would run
            # away to Nyquist): build it from the average low-passed to max(15 Å, 2 x resolution)
            smooth = lowpass(avg, max(p.dynamic_mask_lowpass_A, 2.0 * res), self.apix)
            near = max(p.dynamic_mask_near * res, p.fsc_mask_min_near_A)
            far = max(p.dynamic_mask_far * res, p.fsc_mask_min_far_A)
            # the FSC mask, and a looser refinement mask (twice the widths, at least cryoSPARC's 6 / 14 Å)
            fsc_mask = solvent_mask_from_map(smooth, self.apix, p.dynamic_mask_threshold, near, far)
            mask = solvent_mask_from_map(smooth, self.apix, p.dynamic_mask_threshold, max(2 * near, 6.0),
                                         max(2 * far, 14.0))
            # a degenerate mask (a few voxels around a noise peak) makes the masked FSC meaningless: keep the
            # previous mask until the map supports a real one
            if mask_volume_fraction(fsc_mask) >= p.dynamic_mask_min_fraction:
                self.mask, self.fsc_mask = mask, fsc_mask
        else:
            self.fsc_mask = self.mask

    def greyscale(self) -> float:
        """Rescale the references so their projections match the particles' amplitudes; returns the factor."""
        sub = np.sort(self.rng.choice(len(self.stack), size=min(len(self.stack), 300), replace=False))
        ctx = self.context(local=False, free_scale=True)
        pix = pixel_set(self.n, ctx.r_align)
        proj = Projector(self.refs[0])
        grid = project_grid(proj, so3_grid(self.p.coarse_step_deg, self.p.symmetry), pix, ctx.radii[0])
        f = self._images(sub)
        cand, _ = search(ctx, self.scorer, proj, grid, f, sub, pix, self.state.take(sub), np.arange(len(sub)))
        rot, sh, _ = cand.best()
        cross, norm = score_poses(proj, *self.scorer.whitened(f, sub, pix, self.sigma2), rot, sh, pix)
        factor = float(np.median(to_numpy(cross) / np.maximum(to_numpy(norm), 1e-30)))
        if not np.isfinite(factor) or factor <= 0:
            return 1.0
        self.refs = [r * factor for r in self.refs]
        return factor


def _keep_global(r: _Refiner, p: RefineParams, it: int, local: bool, moved: float) -> bool:
    """Whether the iteration after ``it``, the last planned global one, searches globally too: the poses still
    move (``moved`` > ``p.global_moved_fraction``), the cap ``p.max_global_iters`` allows, and at least two
    iterations are left for local refinement."""
    return (not local and it >= r.global_iters and r.global_iters < min(p.max_global_iters, p.max_iter - 2)
            and moved > p.global_moved_fraction)


def sgd_start(particles: ParticleStack, reference: Any, p: RefineParams) -> Generator[SGDStep, None, np.ndarray]:
    """Yield ``p.sgd_steps`` minibatch steps from ``reference`` (see :mod:`cryolive.refinement.sgd`), over all
    particles, to ``p.sgd_resolution_A``; return the refinement's starting map ``(n, n, n)``. The refinement then
    low-passes it to ``p.initial_lowpass_A`` as it would the reference, so the half sets stay independent above
    that."""
    sp = SGDParams(steps=p.sgd_steps, batch_size=p.sgd_batch_size, final_resolution_A=p.sgd_resolution_A,
                   max_shift_px=p.max_shift_px, particle_diameter_A=p.particle_diameter_A, symmetry=p.symmetry,
                   seed=p.seed)
    return (yield from sgd_reconstruct(particles, reference, sp))


def _checkpoint(r: _Refiner, it: int, best_res: float, stalls: int, final_left: int | None) -> RefineCheckpoint:
    """A copy of the refiner's state after iteration ``it`` (NumPy arrays)."""
    s = r.state
    return RefineCheckpoint(
        iteration=it, rotations=s.rotations.copy(), shifts_px=s.shifts.copy(), scales=s.scales.copy(),
        seen=s.seen.copy(), half=r.half.copy(), sigma2=np.asarray(r.sigma2, np.float64).copy(),
        # the maps are replaced, never changed in place, by the next iteration: no copy on the CPU
        ref_a=np.asarray(to_numpy(r.refs[0]), np.float32), ref_b=np.asarray(to_numpy(r.refs[1]), np.float32),
        mask=np.asarray(to_numpy(r.mask), np.float32), fsc_mask=np.asarray(to_numpy(r.fsc_mask), np.float32),
        resolution_A=float(r.resolution), align_resolution_A=float(r.align_resolution),
        global_iters=int(r.global_iters), best_resolution_A=float(best_res), stalls=int(stalls),
        final_left=-1 if final_left is None else int(final_left),
        rng_state=json.dumps(r.rng.bit_generator.state))


def _restore(r: _Refiner, c: RefineCheckpoint) -> None:
    """Put the refiner back in the state ``c`` was taken in (shapes checked against the particles)."""
    n = len(r.stack)
    if c.rotations.shape != (n, 3, 3) or c.ref_a.shape != (r.n,) * 3:
        raise InputError(f"the checkpoint holds {len(c.rotations)} poses of box {c.ref_a.shape[0]}; the particles "
                         f"are {n} of box {r.n}: it belongs to another data set")
    m = r.m
    r.state = Poses(c.rotations.copy(), c.shifts_px.copy(), c.scales.copy(), c.seen.astype(bool).copy())
    r.half = c.half.copy()
    r.sigma2 = np.asarray(c.sigma2, np.float64).copy()
    r.refs = [m.asarray(c.ref_a), m.asarray(c.ref_b)]
    r.mask, r.fsc_mask = m.asarray(c.mask), m.asarray(c.fsc_mask)
    r.resolution, r.align_resolution = c.resolution_A, c.align_resolution_A
    r.global_iters = c.global_iters
    r.rng.bit_generator.state = json.loads(c.rng_state)


def refine(particles: ParticleStack, reference: Any, params: RefineParams | None = None,
           mask: Any = None, resume: RefineCheckpoint | None = None,
           client: Any = None) -> Generator[RefineStep, None, RefineResult]:
    """Gold-standard homogeneous refinement; yields a :class:`RefineIteration` per iteration (after an
    :class:`~cryolive.refinement.sgd.SGDStep` per ab-initio step when ``params.sgd_steps`` > 0).

    ``particles``: a :class:`~cryolive.io.ParticleStack` with CTFs (poses, if present, are ignored: global search;
    with ``params.use_input_poses`` the search is local around them from the first iteration);
    ``reference``: ``(n, n, n)`` map at the particles' pixel size; ``mask``: optional static mask (else a soft
    sphere, then a dynamic mask from the half maps); ``resume``: a checkpoint of an earlier run of the same
    particles and parameters (``RefineIteration.checkpoint``): the run goes on from the iteration after it;
    ``client``: a ``distributed.Client`` whose workers run each iteration's E + M step
    (:mod:`cryolive.refinement.distributed`). Without one, ``params.workers`` / ``params.scheduler`` open one for
    the run (:func:`~cryolive.reconstruction.distributed.dask_client`), closed when the run ends or the generator
    is closed; with neither, everything runs in this process. Returns a :class:`RefineResult`.
    """
    p = params or RefineParams()
    check_inputs(particles, p)
    if client is None and (p.workers or p.scheduler):
        from cryolive.reconstruction.distributed import dask_client

        with dask_client(p.workers, p.scheduler) as own:
            return (yield from _refine(particles, reference, p, mask, resume, own))
    return (yield from _refine(particles, reference, p, mask, resume, client))


def _refine(particles: ParticleStack, reference: Any, p: RefineParams, mask: Any, resume: RefineCheckpoint | None,
            client: Any) -> Generator[RefineStep, None, RefineResult]:
    """:func:`refine` once the inputs are checked and the Dask client, if any, is open."""
    if p.sgd_steps > 0 and resume is None:
        _checked_reference(reference, particles.box)
        reference = yield from sgd_start(particles, reference, p)
    r = _Refiner(particles, reference, p, mask, dask=None if client is None else DaskParts(client, particles))
    n_tot = len(particles)
    history: list[dict[str, float]] = []
    best_res, stalls, final_left = np.inf, 0, None
    if resume is not None:
        _restore(r, resume)
        best_res, stalls = resume.best_resolution_A, resume.stalls
        final_left = None if resume.final_left < 0 else resume.final_left
    elif p.greyscale:
        r.greyscale()
    mb_size = p.minibatch_size or min(n_tot, max(1000, n_tot // 4))
    last: RefineIteration | None = None
    first = 1 if resume is None else resume.iteration + 1
    if first > p.max_iter or (final_left is not None and final_left <= 0):
        raise InputError(f"nothing to continue: the run had finished its iterations ({first - 1} of {p.max_iter})")
    for it in range(first, p.max_iter + 1):
        # minibatches speed up the first global iterations; local refinement from the file's poses and the last
        # iteration always use every particle (the maps and poses written are those of the whole set)
        minibatch = (it <= p.minibatch_iters and mb_size < n_tot and not p.use_input_poses and it < p.max_iter)
        subset = (np.sort(r.rng.choice(n_tot, size=mb_size, replace=False)) if minibatch else np.arange(n_tot))
        local = it > r.global_iters and bool(r.state.seen[subset].all())
        # global iterations before the last one draw poses from the posterior (stochastic EM); the last global one
        # and the local ones take the best pose
        sample = p.stochastic_global and not local and it < p.global_iters
        full_box = final_left is not None or it == p.max_iter
        out = r.iteration(it, subset, local, free_scale=False, sample=sample, full_box=full_box)
        fsc = out["fsc"]
        res_unmasked = resolution_at(fsc.fsc_unmasked, r.n, r.apix, 0.143)
        last = RefineIteration(
            iteration=it, search="local" if local else "global", n_particles=len(subset),
            align_resolution_A=float(r.n * r.apix / out["r_align"]), resolution_A=r.resolution,
            resolution_unmasked_A=float(res_unmasked), fsc=fsc, map=_host32(out["map"]),
            half_a=_host32(out["half_a"]), half_b=_host32(out["half_b"]),
            mask=to_numpy(r.mask).astype(np.float32),
            angular_distribution=_angular_histogram(r.state.rotations[subset]),
            pose_summary=out["pose_summary"], sigma2=r.sigma2.copy(), timings=out["timings"],
            fsc_mask=to_numpy(r.fsc_mask).astype(np.float32), working_box=int(out["working_box"]))
        history.append({"iteration": it, "resolution_A": r.resolution, "n_particles": len(subset),
                        "working_box_px": out["working_box"], **out["pose_summary"], **out["timings"]})
        if _keep_global(r, p, it, local, out["pose_summary"]["moved_20deg_fraction"]):
            r.global_iters += 1
        done = False
        if final_left is not None:
            final_left -= 1
            done = final_left <= 0
        elif not minibatch:
            if r.resolution < best_res * (1 - p.stop_tolerance):
                best_res, stalls = r.resolution, 0
            else:
                stalls += 1
            if stalls >= 1 and it > r.global_iters:
                final_left = p.extra_final_passes
                done = final_left <= 0
        last = dataclasses.replace(last, checkpoint=_checkpoint(r, it, best_res, stalls, final_left))
        yield last
        if done:
            break
    assert last is not None
    shifts_a = r.state.shifts * r.apix
    scales = r.state.scales.copy()
    out_stack = particles.with_poses(r.state.rotations.copy(), shifts_a, half_set=r.half)
    return RefineResult(last, r.state.rotations.copy(), shifts_a, r.half.copy(), scales, out_stack, history)
