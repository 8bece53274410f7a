"""3D classification and heterogeneous refinement as generators (docs/maths.md,
"Expectation–maximisation and the gold standard"; docs/classification.md).

One engine, three E steps:

* ``mode="fixed"`` (3D classification, poses from a refinement): the log-likelihood of particle ``i`` under class
  ``k`` is the Gaussian score (whitened by the per-shell noise ``sigma^2``) of its image against the projection,
  at its own pose and CTF, of the class volume composed as ``S · (F · V_k + (1 − F) · V̄)`` and filtered by its FSC.
  ``V̄`` is the consensus map reconstructed explicitly from all particles before the first iteration.
* ``mode="local"``: the same with a local pose search (a few degrees and a pixel) around the input pose per class.
* ``mode="hetero"`` (heterogeneous refinement): every class runs the refinement's coarse-to-fine pose search
  (global, or local around the input poses with ``hetero_search="local"``); volumes live in a class box
  (default ``min(box, 128)``): particles are resampled in Fourier space (the same as scaling the rotation during
  insertion). The halves are aligned to one shared class map there, so they are not independent.

Class FSCs (every mode) compare the class's half maps inside the region the class decides (solvent x focus mask),
corrected for the mask by phase randomisation, read at 0.5: the consensus shared outside the focus mask never
enters them.

Posteriors ``Γ_ik ∝ π_k exp(β LL_ik)`` with ``β = 1 − s`` and the class-similarity ``s`` annealed linearly to 0
over the first ``anneal_iters`` iterations (a deterministic-annealing temperature: with ``s`` near 1 particles are
shared between classes and the classes separate slowly). M step: per class, two half-set reconstructors weighted by
``Γ_ik`` (particles with ``Γ_ik < min_weight`` skipped); class weights ``π_k`` = mean posterior. Online EM: the first
``online_em_iters`` iterations use random minibatches and blend the accumulators,
``acc ← (1 − η) acc + η (N / b) acc_batch``, the rest use every particle. Stops when fewer than ``convergence`` of
the particles change class, or when fewer than ``4 convergence`` change and that fraction stopped falling.

Every iteration carries a :class:`ClassifyCheckpoint`; ``classify(..., resume=checkpoint)`` goes on from it exactly
as the uninterrupted run (the job writes it as ``checkpoint.npz`` so that a killed job can be continued).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryolive.alignment.grid import GridProjections, project_grid
from cryolive.alignment.noise import noise_image, shell_power
from cryolive.alignment.pixels import PARTICLE_DIAMETER_HELP, PixelSet, pixel_set, scoring_window
from cryolive.alignment.score import Scorer, score_poses
from cryolive.alignment.search import Candidates, SearchPlan, local_level, origin_range_px, search_poses
from cryolive.backend import to_numpy, xp
from cryolive.batching import LOCAL_POSES, AdaptiveBatch, pose_search_bytes, rollback
from cryolive.classification.masks import auto_solvent_mask, compose_class_volume, mask_warnings
from cryolive.classification.metrics import effective_classes
from cryolive.image.fourier import rfft2c
from cryolive.image.resample import resample_rfft2, resample_volume
from cryolive.io import InputError, ParticleStack
from cryolive.masks import soft_sphere
from cryolive.params import param
from cryolive.projection import Projector, Reconstructor
from cryolive.projection.gridding import working_freq
from cryolive.reconstruction.halves import finalize_halves, half_sets
from cryolive.resolution.filters import fsc_filter, lowpass
from cryolive.resolution.fsc import fsc, gold_standard_fsc, resolution_at
from cryolive.rotations.grids import local_offsets, so3_grid

MODES = ("fixed", "local", "hetero")


#: a class with fewer (expected) particles reports no resolution (``inf``)
MIN_CLASS_PARTICLES = 10


@dataclass(frozen=True)
class ClassifyParams:
    """Parameters of 3D classification / heterogeneous refinement (Å, degrees, pixels of the particle box).

    Defaults follow cryoSPARC's 3D classification (online EM, class similarity 0.5 annealed) and heterogeneous
    refinement (class box ``min(box, 128)``, FSC read at 0.5) where they have one.
    """

    n_classes: int = param(3, ge=1, flag="--k", label="Classes", help="number of classes")
    mode: str = param("fixed", choices=("fixed", "local", "hetero"), label="Poses")
    max_iter: int = param(20, ge=1, flag="--max-iter", label="Maximum iterations")
    online_em_iters: int = param(2, ge=0, flag="--online-iters", label="Online-EM iterations",
                                 help="online-EM (minibatch) iterations first")
    minibatch_size: int | None = param(None, ge=1, flag="--minibatch", label="Minibatch size",
                                       help="particles per online-EM iteration (default: max(1000, 300 K))")
    online_step: float = param(0.5, gt=0, le=1, label="Online-EM step")
    class_similarity: float = param(0.5, ge=0, le=1, flag="--similarity", label="Class similarity",
                                    help="initial class similarity")
    anneal_iters: int = param(4, ge=0, flag="--anneal-iters", label="Annealing iterations",
                              help="iterations over which the class similarity anneals to 0")
    init_subset_size: int | None = None
    init_lowpass_A: float = param(20.0, gt=0, unit="Å", flag="--lowpass", label="Initial low-pass",
                                  help="low-pass of the starting maps")
    max_resolution_A: float | None = param(None, gt=0, unit="Å", flag="--max-res", label="Align no finer than",
                                           help="never align beyond this resolution (default: no limit)")
    solvent_threshold: float = 0.1
    solvent_lowpass_A: float = 15.0
    solvent_dilate_A: float = 6.0
    solvent_soft_A: float = 10.0
    class_box: int | None = param(None, ge=16, unit="px", flag="--class-box", label="Class box",
                                  help="box of the class maps (default: min(box, 128)); past the particle box the "
                                       "FSC beyond the data's Nyquist is not real")
    # the class projectors and reconstructors work in a box cut, inside the class box, to the radius scored plus a
    # margin (``working_margin`` x that radius + ``working_margin_px`` class-box pixels), as the refinement's do
    # (RefineParams.working_box; RELION's current_size, cryoSPARC's working box): set-up, search, insertion and
    # memory follow the resolution. The last iteration is at the whole class box (a run that converges in a
    # working box does one more iteration there), so the class maps written are complete to the class Nyquist
    working_box: bool = param(True, flag="--working-box", label="Working box",
                              help="work in a box cut to the current resolution (plus a margin) inside the class "
                                   "box, the last iteration at the whole class box (on by default; "
                                   "--no-working-box: the whole class box throughout)")
    working_margin: float = param(1.25, ge=1, label="Working box margin")
    working_margin_px: float = param(10.0, ge=0, unit="px", label="Working box extra")
    symmetry: str = "C1"
    local_step_deg: float = 1.5
    local_extent_deg: float = 3.0
    local_shift_px: float = 1.0
    prior_sigma_deg: float = 2.0
    prior_sigma_px: float = 1.0
    hetero_search: str = "global"
    coarse_step_deg: float = param(7.5, gt=0, le=60, unit="deg", flag="--coarse-step", label="Coarse step",
                                   help="coarsest angular step")
    levels: int = param(3, ge=1, le=8, label="Search levels")
    candidates: int = param(5, ge=1, label="Candidates per level")
    bound_sigma: float = 4.0
    max_shift_px: float | None = None
    convergence: float = 0.005
    min_weight: float = 1e-3
    window_inner: float = 0.85
    window_outer: float = 0.99
    # RELION's --particle_diameter: images scored inside a soft circle of this diameter (see RefineParams)
    particle_diameter_A: float | None = param(None, gt=0, unit="Å", flag="--particle-diameter",
                                              label="Particle diameter",
                                              help=PARTICLE_DIAMETER_HELP)
    batch_size: int = param(256, ge=1, flag="--batch-size", label="Batch size")
    seed: int = 0


@dataclass(frozen=True)
class ClassIteration:
    """One iteration of classification. Maps are NumPy float32 ``[z, y, x]`` in the class box; resolutions in Å."""

    iteration: int
    stage: str  # "online" (minibatch) or "full"
    mode: str
    n_particles: int
    class_maps: np.ndarray  # (K, m, m, m): each class's reconstruction, FSC-filtered, solvent-masked
    class_sizes: np.ndarray  # (K,) fraction of particles (sum of posteriors / N)
    class_resolution_A: np.ndarray  # (K,) class FSC at 0.5 (class half maps inside solvent x focus, corrected)
    class_fsc: np.ndarray  # (K, shells)
    mean_ess: float  # mean effective number of classes per particle (1 = certain)
    changed_fraction: float  # particles whose most probable class changed this iteration
    similarity: float  # the class-similarity used this iteration
    pixel_size: float  # of the class box
    solvent_mask: np.ndarray
    focus_mask: np.ndarray | None
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    job_dir: str | None = None  # set by the job wrapper
    checkpoint: ClassifyCheckpoint | None = None  # what the next iteration starts from (to continue a killed job)
    working_box: int = 0  # box (px) the iteration's projectors and reconstructions worked in (at most the class box)


@dataclass(frozen=True)
class ClassifyCheckpoint:
    """Everything the iteration after ``iteration`` starts from: :func:`classify` with ``resume=`` this goes on
    exactly as the uninterrupted run would have (same assignments, poses, maps and random draws).

    ``N`` particles, ``K`` classes, class box ``m``; NumPy arrays:

    * ``posteriors (N, K)`` float64, ``assigned (N,)`` most probable class (0-based; -1: none yet),
      ``log_prior (K,)`` log class weights;
    * ``rotations (N, K, 3, 3)`` RELION ``A`` and ``shifts_px (N, K, 2)`` origins in pixels of the particle box:
      each class's pose of each particle (local search and hetero move them); empty ``(0,)`` in ``mode="fixed"``,
      where they are the input poses;
    * ``sigma2 (m // 2 + 1,)`` noise power per shell; ``refs (K, m, m, m)`` the class volumes the next E step
      scores against (composed, FSC-filtered, solvent-masked); ``fsc_curves (K, m // 2 + 1)`` the class FSCs
      (they set the next alignment radius);
    * ``numerators``, ``denominators`` ``(K, 2, ...)`` each class's two half-set reconstructor accumulators as the
      :class:`~cryolive.projection.Reconstructor` holds them, and ``n_images (K, 2)``: only when the next
      iteration is an online-EM one, which blends into them; otherwise empty ``(0,)`` (a full iteration starts
      from empty accumulators, and they are the large part: 2 K padded volumes);
    * the stopping state: ``prev_changed`` (the changed fraction the stall test compares with; NaN: none yet) and
      ``finished`` (the run ended at this iteration: converged, stalled or ``max_iter``); the random generator's
      state as JSON;
    * ``accumulator_freq``: the highest frequency (cycles/pixel) the accumulators' working box holds (0.5: the whole
      class box); ``final_pass``: the run converged in a working box, and the next iteration, at the whole class
      box, is its last.
    """

    iteration: int
    posteriors: np.ndarray
    assigned: np.ndarray
    log_prior: np.ndarray
    rotations: np.ndarray
    shifts_px: np.ndarray
    sigma2: np.ndarray
    refs: np.ndarray
    fsc_curves: np.ndarray
    numerators: np.ndarray
    denominators: np.ndarray
    n_images: np.ndarray
    prev_changed: float
    finished: bool
    rng_state: str
    accumulator_freq: float = 0.5
    final_pass: bool = False


@dataclass(frozen=True)
class ClassifyResult:
    """The last iteration, every particle's posteriors ``(N, K)``, class (1-based), max posterior, poses, history."""

    final: ClassIteration
    posteriors: np.ndarray
    classes: np.ndarray
    max_probability: np.ndarray
    particles: ParticleStack  # with rlnClassNumber, rlnMaxValueProbDistribution and (hetero/local) the new poses
    consensus: np.ndarray | None
    history: list[dict[str, float]]


def _similarity(p: ClassifyParams, it: int) -> float:
    """Class similarity of iteration ``it`` (1-based): ``class_similarity`` annealed linearly to 0."""
    if p.anneal_iters <= 0:
        return 0.0
    return float(p.class_similarity * max(0.0, 1.0 - (it - 1) / p.anneal_iters))


def posteriors_from_scores(ll: np.ndarray, log_prior: np.ndarray, beta: float) -> np.ndarray:
    """``Γ_ik ∝ π_k exp(β LL_ik)`` from log-likelihoods ``(B, K)`` and ``log π (K,)``; rows sum to 1."""
    z = beta * ll + log_prior[None]
    z = np.where(np.isfinite(z), z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _marginal(scores: np.ndarray) -> np.ndarray:
    """Log of the mean likelihood over the poses scored around the best one, ``(B, M) -> (B,)``.

    A class's evidence is its likelihood marginalised over the local poses (uniform prior), not its best pose's:
    the maximum also rewards a class for fitting noise with a pose change (a class with a moved domain can rotate
    a little to explain part of it), which blurs the class contrast.
    """
    live = np.isfinite(scores)
    top = np.max(np.where(live, scores, -np.inf), axis=1, keepdims=True)
    total = np.sum(np.where(live, np.exp(scores - top), 0.0), axis=1)
    return top[:, 0] + np.log(total / np.maximum(live.sum(axis=1), 1))


def _blend(old: Reconstructor | None, new: Reconstructor, eta: float, scale: float) -> Reconstructor:
    """Online EM: ``(1 − η) old + η scale new`` on both accumulators (``old`` None: ``scale new``), in the larger
    of their two working boxes (the smaller's accumulators are zero beyond their radius)."""
    if old is None:
        new.numerator *= scale
        new.denominator *= scale
        return new
    if old.grid_box < new.grid_box:
        old = old.grown(new.max_freq)
    elif new.grid_box < old.grid_box:
        new = new.grown(old.max_freq)
    old.blend(new, eta, scale)
    return old


class _Classifier:
    """State and steps of one classification run (used by :func:`classify`)."""

    def __init__(self, stack: ParticleStack, p: ClassifyParams, starts: list[np.ndarray] | None,
                 solvent: Any, focus: Any, consensus: Any, resume: ClassifyCheckpoint | None = None) -> None:
        m = xp()
        if p.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {p.mode!r}")
        if p.n_classes < 1:
            raise ValueError("n_classes must be at least 1")
        self.m, self.stack, self.p = m, stack, p
        self.n = stack.box
        k = p.n_classes
        if p.mode != "hetero" and stack.rotations is None:
            raise InputError(f"{stack.source}: 3D classification with fixed poses needs poses "
                             "(rlnAngleRot/Tilt/Psi); run a refinement first, or use heterogeneous refinement")
        self.nc = int(p.class_box or (min(self.n, 128) if p.mode == "hetero" else self.n))
        self.apix = stack.pixel_size * self.n / self.nc
        self.scorer = Scorer(stack.ctf, self.apix)  # scores in the class box
        self.rng = np.random.default_rng(p.seed)
        self.batches = AdaptiveBatch(p.batch_size, label="classification")  # see iteration
        self.half = half_sets(stack, p.seed)
        n_tot = len(stack)
        rot0 = stack.rotations if stack.rotations is not None else np.tile(np.eye(3), (n_tot, 1, 1))
        sh0 = (stack.shifts / stack.pixel_size if stack.shifts is not None else np.zeros((n_tot, 2)))
        # per class poses (hetero / local search move them); origins in pixels of the *particle* box
        self.rot = np.repeat(rot0[:, None], k, axis=1)
        self.sh = np.repeat(sh0[:, None], k, axis=1)
        self.have_poses = stack.rotations is not None
        self.rot_in, self.sh_in = rot0, sh0  # the input poses: centre of the local-search prior
        self.poses_frozen = False
        self.window = scoring_window(self.n, self.apix, p.particle_diameter_A, p.window_inner, p.window_outer)
        self.max_shift = origin_range_px(self.n, p.max_shift_px)
        self.warnings: list[str] = []
        self.posteriors = np.full((n_tot, k), 1.0 / k)
        self.assigned = np.full(n_tot, -1)
        self.log_prior = np.full(k, -np.log(k))
        self.recs: list[list[Reconstructor | None]] = [[None, None] for _ in range(k)]
        if self.nc > self.n:
            self.warnings.append(
                f"the class box ({self.nc} px at {self.apix:.3g} Å/px) is finer than the particles' own sampling "
                f"({self.n} px at {stack.pixel_size:.3g} Å/px): class FSC curves beyond the data's Nyquist "
                f"({2 * stack.pixel_size:.3g} Å) are not real (interpolation makes them look good); "
                "re-extract with less binning or use a smaller class box")
        if p.mode == "hetero" and p.hetero_search == "local" and not self.have_poses:
            self.warnings.append(f"{stack.source}: the particles have no poses, so heterogeneous refinement "
                                 "searches globally (a local search needs poses from a consensus refinement)")
        self._init_masks(solvent, focus, consensus, starts)
        if starts is not None and len(starts) != k:
            raise ValueError(f"{len(starts)} starting maps for {k} classes")
        if resume is not None:  # the noise, the classes and the random state come from the checkpoint
            self._restore(resume)
            return
        self.sigma2 = self._initial_sigma2()
        self._init_classes(starts)

    # ------------------------------------------------------------------------------------------------- setup
    def _images(self, idx: np.ndarray) -> tuple[Any, Any]:
        """Transforms in the class box ``(B, m, m // 2 + 1)`` of the windowed images (scored: the window removes
        the corners where neighbours live) and of the images as they are (inserted: a window is a convolution in
        Fourier space that smears the fast CTF oscillations at high resolution)."""
        m = self.m
        img = m.asarray(self.stack.images(idx), dtype=m.float32)
        return (resample_rfft2(rfft2c(img * self.window), self.n, self.nc),
                resample_rfft2(rfft2c(img), self.n, self.nc))

    def _ctf_image(self, idx: np.ndarray) -> Any:
        m = self.m
        full = pixel_set(self.nc, self.nc / 2)
        c = m.zeros((len(idx), self.nc * (self.nc // 2 + 1)), dtype=m.float32)
        c[:, full.index] = self.scorer.ctf_at(idx, full)
        return c.reshape(len(idx), self.nc, self.nc // 2 + 1)

    def _reconstruct(self, idx: np.ndarray, weights: np.ndarray | None = None,
                     cls: int = 0) -> tuple[Reconstructor, Reconstructor]:
        """Half-set reconstructions of particles ``idx`` at class ``cls``'s poses (no noise weighting)."""
        recs = (Reconstructor(self.nc, symmetry=self.p.symmetry), Reconstructor(self.nc, symmetry=self.p.symmetry))

        def read(a: int, b: int) -> tuple[Any, Any]:  # the step of a batch that fits the device (cryolive.batching)
            return self._images(idx[a:b])[1], self._ctf_image(idx[a:b])

        for s0, s1, (f, ctf) in self.batches.run(len(idx), read, 64 * self.n**2):  # insertion (adaptive) commits
            b = idx[s0:s1]
            for h, rec in zip((1, 2), recs, strict=True):
                sel = np.nonzero(self.half[b] == h)[0]
                if len(sel):
                    rec.insert(f, self.rot[b[sel], cls], ctf=ctf, shifts=self._class_shifts(b[sel], cls),
                               weights=None if weights is None else weights[s0:s1][sel], take=sel)
            f = ctf = None
        return recs

    def _class_shifts(self, idx: np.ndarray, cls: int) -> np.ndarray:
        """Origins in class-box pixels."""
        return self.sh[idx, cls] * (self.nc / self.n)

    def _init_masks(self, solvent: Any, focus: Any, consensus: Any, starts: list[Any] | None = None) -> None:
        m, p = self.m, self.p
        self.consensus = self.consensus_halves = None
        if p.mode != "hetero":
            if consensus is None:
                ra, rb = self._reconstruct(np.arange(len(self.stack)))
                ha, hb, full = finalize_halves(ra, rb)
                self.consensus_halves = (ha, hb)
                self.consensus = full
            else:
                self.consensus = resample_volume(consensus, self.nc)
        # what a focus-masked class volume shows outside its focus: the consensus filtered by its own half maps' FSC
        # (a consensus given as a file is taken as it is)
        self.consensus_filtered = (fsc_filter(self.consensus, fsc(*self.consensus_halves))
                                   if self.consensus_halves is not None else self.consensus)
        self.solvent_given = solvent is not None
        self.focus = None if focus is None else m.clip(resample_volume(focus, self.nc), 0.0, 1.0)
        if solvent is not None:
            self.solvent = m.clip(resample_volume(solvent, self.nc), 0.0, 1.0)
        elif self.consensus is not None:
            self.solvent = auto_solvent_mask(self.consensus, self.apix, p.solvent_threshold, p.solvent_lowpass_A,
                                             p.solvent_dilate_A, p.solvent_soft_A)
        elif starts is not None and self.focus is None:
            # heterogeneous refinement (no focus mask): the mean of the starting maps stands in for the consensus
            mean = sum(resample_volume(v, self.nc) for v in starts) / len(starts)
            self.solvent = auto_solvent_mask(lowpass(mean, p.init_lowpass_A, self.apix), self.apix,
                                             p.solvent_threshold, p.solvent_lowpass_A, p.solvent_dilate_A,
                                             p.solvent_soft_A)
        else:
            box_A = self.nc * self.apix
            self.solvent = soft_sphere(self.nc, 0.45 * box_A, self.apix, 0.05 * box_A)
        self.warnings.extend(mask_warnings(self.solvent_given, self.focus, self.solvent))

    def _initial_sigma2(self) -> np.ndarray:
        """Noise power per shell: residuals against the consensus at the given poses, else the image power."""
        idx = np.sort(self.rng.choice(len(self.stack), size=min(len(self.stack), 1000), replace=False))
        f = self._images(idx)[0]
        if self.consensus is None:
            return shell_power(f, self.nc)
        acc, cnt = np.zeros(self.nc // 2 + 1), np.zeros(self.nc // 2 + 1)
        self.scorer.residual_power(Projector(self.consensus * self.solvent), f, idx, self.rot[idx, 0],
                                   self._class_shifts(idx, 0), pixel_set(self.nc, self.nc / 2), acc, cnt)
        return acc / np.maximum(cnt, 1e-12)

    def _init_classes(self, starts: list[np.ndarray] | None) -> None:
        """Class references: the given starting maps (low-passed), else reconstructions of K random subsets."""
        p, k = self.p, self.p.n_classes
        if starts is not None:
            self.refs = [lowpass(resample_volume(s, self.nc), p.init_lowpass_A, self.apix) * self.solvent
                         for s in starts]
            self.fsc_curves = [np.zeros(self.nc // 2 + 1) for _ in range(k)]
            return
        n_tot = len(self.stack)
        size = p.init_subset_size or min(n_tot // k, 1000)
        order = self.rng.permutation(n_tot)
        refs, curves = [], []
        for c in range(k):
            sub = np.sort(order[c * size:(c + 1) * size])
            ra, rb = self._reconstruct(sub)
            ha, hb, full = finalize_halves(ra, rb)
            vol, curve = self._compose_filtered(full, ha, hb)
            refs.append(vol)
            curves.append(curve)
        self.refs, self.fsc_curves = refs, curves

    def _compose_filtered(self, full: Any, ha: Any, hb: Any, max_freq: float = 0.5) -> tuple[Any, np.ndarray]:
        """The E-step volume ``S (F V_k + (1 − F) V̄)`` and the class FSC.

        The class FSC compares the class's own half maps inside the region the class decides, ``S F`` (``S``
        without a focus mask), corrected for the mask by phase randomisation: outside the focus the composed
        volumes share the consensus, and an FSC taken there would read the consensus's resolution (Nyquist on a
        large data set), not the class's. The class part is filtered by that FSC, the consensus part by the
        consensus's own half-map FSC. ``max_freq`` (cycles/pixel): the working box the maps were reconstructed in;
        the FSC is zero beyond it (the maps hold nothing there: what a mask spreads there is not resolution).
        """
        region = self.solvent if self.focus is None else self.solvent * self.focus
        curve = np.asarray(gold_standard_fsc(ha, hb, self.apix, mask=region, seed=self.p.seed).fsc)
        if max_freq < 0.5:
            curve = np.where(np.arange(len(curve)) > max_freq * self.nc, 0.0, curve)
        cls = fsc_filter(full, curve)
        if self.focus is None:
            return cls * self.solvent, curve
        return compose_class_volume(cls, self.consensus_filtered, self.solvent, self.focus), curve

    # ------------------------------------------------------------------------------------------ checkpoint
    def checkpoint(self, it: int, prev_changed: float | None, finished: bool,
                   accumulators: bool, final_pass: bool = False) -> ClassifyCheckpoint:
        """A copy (NumPy) of the state after iteration ``it``; ``accumulators``: the next iteration blends into
        the reconstructors (online EM), so they are kept too; ``final_pass``: the next iteration is the last, at
        the whole class box."""
        k = self.p.n_classes
        empty = np.zeros(0)
        moved = self.p.mode != "fixed"
        recs = [rec for pair in self.recs for rec in pair]
        keep = accumulators and all(rec is not None for rec in recs)

        def stacked(name: str) -> np.ndarray:
            arrays = [np.asarray(to_numpy(getattr(rec, name))) for rec in recs]
            return np.stack(arrays).reshape((k, 2) + arrays[0].shape)

        return ClassifyCheckpoint(
            iteration=int(it), posteriors=self.posteriors.copy(), assigned=self.assigned.copy(),
            log_prior=np.asarray(self.log_prior, np.float64).copy(),
            rotations=self.rot.copy() if moved else empty, shifts_px=self.sh.copy() if moved else empty,
            sigma2=np.asarray(self.sigma2, np.float64).copy(),
            # np.stack copies: the next iteration replaces the class volumes and blends into the accumulators
            refs=np.stack([np.asarray(to_numpy(r)) for r in self.refs]),
            fsc_curves=np.stack([np.asarray(c, np.float64) for c in self.fsc_curves]),
            numerators=stacked("numerator") if keep else empty,
            denominators=stacked("denominator") if keep else empty,
            n_images=(np.array([[rec.n_images for rec in pair] for pair in self.recs], np.int64) if keep
                      else empty),
            prev_changed=float("nan") if prev_changed is None else float(prev_changed),
            finished=bool(finished), rng_state=json.dumps(self.rng.bit_generator.state),
            accumulator_freq=float(recs[0].max_freq) if keep else 0.5, final_pass=bool(final_pass))

    def _restore(self, c: ClassifyCheckpoint) -> None:
        """Put the classifier back in the state ``c`` was taken in (shapes checked against the particles and the
        class box; InputError naming the mismatch)."""
        m, p = self.m, self.p
        n, k = len(self.stack), p.n_classes
        if c.posteriors.shape != (n, k) or c.refs.shape != (k,) + (self.nc,) * 3:
            raise InputError(f"the checkpoint holds {c.posteriors.shape[0]} particles in {c.refs.shape[0]} classes of "
                             f"box {c.refs.shape[-1]}; the run has {n} particles in {k} classes of box {self.nc}: "
                             "it belongs to another data set or other parameters")
        self.posteriors = np.asarray(c.posteriors, np.float64).copy()
        self.assigned = np.asarray(c.assigned).astype(int)
        self.log_prior = np.asarray(c.log_prior, np.float64).copy()
        if p.mode != "fixed":
            if c.rotations.shape != self.rot.shape or c.shifts_px.shape != self.sh.shape:
                raise InputError(f"the checkpoint's poses have shape {c.rotations.shape}, the run's "
                                 f"{self.rot.shape}: it belongs to another data set")
            self.rot, self.sh = c.rotations.copy(), c.shifts_px.copy()
        self.sigma2 = np.asarray(c.sigma2, np.float64).copy()
        self.refs = [m.asarray(v) for v in c.refs]
        self.fsc_curves = [np.asarray(v, np.float64).copy() for v in c.fsc_curves]
        self.recs = [[None, None] for _ in range(k)]
        if c.numerators.size:
            for cls in range(k):
                for h in range(2):
                    rec = Reconstructor(self.nc, symmetry=p.symmetry, max_freq=c.accumulator_freq)
                    num, den = c.numerators[cls, h], c.denominators[cls, h]
                    if num.shape != rec.numerator.shape or den.shape != rec.denominator.shape:
                        raise InputError(f"the checkpoint's reconstructor accumulators have shapes {num.shape} and "
                                         f"{den.shape}, this version's {rec.numerator.shape} and "
                                         f"{rec.denominator.shape}: it was written by another version")
                    rec.numerator = m.asarray(num, dtype=rec.numerator.dtype)
                    rec.denominator = m.asarray(den, dtype=rec.denominator.dtype)
                    rec.n_images = int(c.n_images[cls, h])
                    self.recs[cls][h] = rec
        self.rng.bit_generator.state = json.loads(c.rng_state)

    # ---------------------------------------------------------------------------------------------- E step
    def _align_radius(self) -> float:
        """Fourier radius (class-box pixels) scored: where any class FSC still exceeds 0.143, plus a margin,
        never beyond the data's Nyquist or ``max_resolution_A``."""
        p = self.p
        r_data = min(self.n, self.nc) / 2 - 1
        best = 0.0
        for curve in self.fsc_curves:
            above = np.nonzero(np.asarray(curve) >= 0.143)[0]
            best = max(best, float(above.max()) if above.size else 0.0)
        if not best:  # starting maps: their low-pass
            best = self.nc * self.apix / p.init_lowpass_A
        r = best * 1.2 + 2
        if p.max_resolution_A:
            r = min(r, self.nc * self.apix / p.max_resolution_A)
        return float(min(max(r, 4.0), r_data))

    def _plan(self) -> SearchPlan:
        """The hetero search plan in the class box; its last level keeps as many poses as its lattice around one
        candidate holds (rotation offsets x 3 x 3 shifts), the poses a class's evidence is marginalised over
        (:func:`_marginal`)."""
        p = self.p
        plan = SearchPlan.of(p, self.nc, self.max_shift * self.nc / self.n)
        return dataclasses.replace(plan, marginal_top=9 * len(plan.rotation_offsets(p.levels)))

    def _scores(self, projs: list[Projector], grids: list[GridProjections | None], f: Any, idx: np.ndarray,
                pix: PixelSet, radii: list[float]) -> np.ndarray:
        """Log-likelihood ``(B, K)`` of each image under each class; updates per-class poses in local/hetero."""
        p = self.p
        y, c2w = self.scorer.whitened(f, idx, pix, self.sigma2)
        ones = np.ones(len(idx))
        ll = np.empty((len(idx), len(projs)))
        for c, proj in enumerate(projs):
            if p.mode == "fixed" or self.poses_frozen:
                cross, norm = score_poses(proj, y, c2w, self.rot[idx, c], self._class_shifts(idx, c), pix)
                ll[:, c] = to_numpy(cross - 0.5 * norm)
                continue
            prev = None
            if p.mode == "local":
                cand = Candidates(self.rot[idx, c][:, None], self._class_shifts(idx, c)[:, None],
                                  np.zeros((len(idx), 1)))
                offsets = local_offsets(p.local_step_deg, p.local_extent_deg, cover=False)
                d = p.local_shift_px * self.nc / self.n  # origins tried: the current one and +-d
                soff = np.array([[dx, dy] for dy in (-d, 0, d) for dx in (-d, 0, d)])
                cand = local_level(proj, y, c2w, ones, cand, offsets, soff, pix.kx, pix.ky,
                                   keep=len(offsets) * len(soff))
            else:
                local = p.hetero_search == "local" and self.have_poses
                prev = (self.rot[idx, c], self._class_shifts(idx, c)) if local else None
                cand, _ = search_poses(self._plan(), proj, grids[c], y, c2w, ones, pix, radii, prev)
            if p.mode == "local" or prev is not None:
                cand = self._with_pose_prior(cand, idx)
            rot, sh, _ = cand.best()
            score = _marginal(cand.scores)
            self.rot[idx, c] = rot
            self.sh[idx, c] = sh * (self.n / self.nc)
            ll[:, c] = score
        return ll

    def _with_pose_prior(self, cand: Candidates, idx: np.ndarray) -> Candidates:
        """Add the Gaussian prior of a local search around the input poses (RELION's ``--sigma_ang``): minus
        ``angle^2 / 2 sigma_deg^2`` and ``|origin change|^2 / 2 sigma_px^2`` (particle pixels) to every score."""
        p = self.p
        rel = np.swapaxes(self.rot_in[idx], 1, 2)[:, None] @ cand.rotations
        cos = np.clip((np.trace(rel, axis1=2, axis2=3) - 1) / 2, -1, 1)
        ang = np.degrees(np.arccos(cos))
        dt = cand.shifts * (self.n / self.nc) - self.sh_in[idx][:, None]
        prior = -0.5 * (ang / p.prior_sigma_deg) ** 2 - 0.5 * (dt**2).sum(-1) / p.prior_sigma_px**2
        return Candidates(cand.rotations, cand.shifts, cand.scores + prior)

    # ------------------------------------------------------------------------------------------- iteration
    def _working_freq(self, r_align: float, full_box: bool) -> float:
        """Highest frequency (cycles/pixel of the class box) the projectors and reconstructors of an iteration
        hold: the scored radius with the refinement's margin, or 0.5 (the whole class box) for ``full_box`` or
        with the working box off."""
        if full_box or not self.p.working_box:
            return 0.5
        return working_freq(r_align, self.nc, self.p.working_margin, self.p.working_margin_px)

    def iteration(self, it: int, subset: np.ndarray, online: bool, full_box: bool = True) -> dict[str, Any]:
        """One E + M step over ``subset`` (``online``: blended into the accumulators); ``full_box``: work at the
        whole class box instead of the working box (:meth:`_working_freq`)."""
        m, p, k = self.m, self.p, self.p.n_classes
        t0 = time.perf_counter()
        beta = 1.0 - _similarity(p, it)
        # with poses from a consensus refinement, the classes first separate at those poses (while the class
        # similarity anneals), then each class searches locally: searching while the classes are still nearly
        # the same lets every class fit noise with small pose changes, and the classes never separate
        self.poses_frozen = (p.mode == "hetero" and p.hetero_search == "local" and self.have_poses
                             and it <= p.anneal_iters)
        r_align = self._align_radius()
        pix = pixel_set(self.nc, r_align)
        plan = self._plan()
        radius_A = 0.35 * self.nc * self.apix
        radii = plan.level_radii(r_align, 0, radius_A, self.apix)
        projs = [Projector(r, max_freq=self._working_freq(r_align, full_box)) for r in self.refs]
        work_freq = projs[0].max_freq  # 0.5 where the working box is the whole class box
        res_pix = pixel_set(self.nc, work_freq * self.nc)  # residuals out to the working radius (beyond: kept)
        grids: list[GridProjections | None] = [None] * k
        if p.mode == "hetero" and not (p.hetero_search == "local" and self.have_poses):
            grid_rots = so3_grid(p.coarse_step_deg, p.symmetry)
            grids = [project_grid(pr, grid_rots, pix, radii[0]) for pr in projs]
        new = [[Reconstructor(self.nc, symmetry=p.symmetry, max_freq=work_freq) for _ in range(2)] for _ in range(k)]
        nsh = self.nc // 2 + 1
        acc, cnt = np.zeros(nsh), np.zeros(nsh)
        t_e = t_m = 0.0
        noise = noise_image(self.sigma2, self.nc)
        old_assigned = self.assigned[subset].copy()

        def e_step(a: int, b: int) -> tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray, float]:
            """Scores, posteriors, poses and residual power of particles ``subset[a:b]`` for a batch that fits the
            device (:mod:`cryolive.batching`): the writes to the poses, posteriors and assignments are rolled back
            if it runs out of memory, and the insertion is left to the commit below, once it has succeeded, so no
            particle is inserted or counted twice."""
            idx = subset[a:b]
            te = time.perf_counter()
            acc_b, cnt_b = np.zeros(nsh), np.zeros(nsh)
            with rollback(idx, (self.rot, self.sh, self.posteriors, self.assigned)):
                f, f_raw = self._images(idx)
                ll = self._scores(projs, grids, f, idx, pix, radii)
                post = posteriors_from_scores(ll, self.log_prior, beta)
                self.posteriors[idx] = post
                best = np.argmax(post, axis=1)
                self.assigned[idx] = best
                for c in range(k):
                    sel = np.nonzero(best == c)[0]
                    if len(sel):
                        self.scorer.residual_power(projs[c], f[m.asarray(sel)], idx[sel], self.rot[idx[sel], c],
                                                   self._class_shifts(idx[sel], c), res_pix, acc_b, cnt_b)
                ctf = self._ctf_image(idx)
            return f_raw, ctf, post, acc_b, cnt_b, time.perf_counter() - te

        poses = {"fixed": 1, "local": len(local_offsets(p.local_step_deg, p.local_extent_deg, cover=False)),
                 "hetero": p.candidates * LOCAL_POSES}[p.mode]
        item_bytes = pose_search_bytes(len(pix), poses, self.nc)
        for s0, s1, (f_raw, ctf, post, acc_b, cnt_b, dt) in self.batches.run(len(subset), e_step, item_bytes):
            idx = subset[s0:s1]
            acc += acc_b
            cnt += cnt_b
            t_e += dt
            tm = time.perf_counter()
            for c in range(k):
                for h in (1, 2):
                    sel = np.nonzero((self.half[idx] == h) & (post[:, c] >= p.min_weight))[0]
                    if len(sel) == 0:
                        continue
                    new[c][h - 1].insert(f_raw, self.rot[idx[sel], c], ctf=ctf, take=sel,
                                         shifts=self._class_shifts(idx[sel], c), weights=post[sel, c],
                                         noise_power=noise)
            f_raw = ctf = None  # this batch's device arrays go before the next batch is scored
            t_m += time.perf_counter() - tm
        self.sigma2 = np.where(cnt > 0, acc / np.maximum(cnt, 1e-12), self.sigma2)
        tr = time.perf_counter()
        scale = len(self.stack) / len(subset)
        eta = p.online_step if online else 1.0
        maps, curves, res = [], [], []
        members = self.posteriors.sum(axis=0)  # (K,) expected number of particles in each class
        for c in range(k):
            for h in range(2):
                self.recs[c][h] = _blend(self.recs[c][h] if online else None, new[c][h], eta, scale)
            ha, hb, full = finalize_halves(self.recs[c][0], self.recs[c][1])
            held = self.recs[c][0].max_freq  # the accumulators' working box (online EM: the larger one blended)
            work_limit_A = self.apix / held if held < 0.5 else 0.0
            vol, curve = self._compose_filtered(full, ha, hb, held)
            maps.append(fsc_filter(full, curve) * self.solvent)
            curves.append(curve)
            # a class (nearly) without particles has no resolution: its FSC compares two empty half maps; in a
            # working box no resolution finer than the box holds is claimed
            res.append(max(resolution_at(curve, self.nc, self.apix, 0.5), work_limit_A)
                       if members[c] >= MIN_CLASS_PARTICLES else float("inf"))
            self.refs[c] = vol
        self.fsc_curves = curves
        sizes = self.posteriors.mean(axis=0)
        self.log_prior = np.log(np.maximum(sizes, 1e-6))
        changed = float(np.mean(old_assigned != self.assigned[subset]))
        t_r = time.perf_counter() - tr
        return dict(maps=maps, curves=curves, res=res, sizes=sizes, changed=changed, beta=beta,
                    working_box=int(projs[0].grid_box),
                    ess=float(effective_classes(self.posteriors[subset]).mean()),
                    timings={"e_step_s": t_e, "m_step_s": t_m, "reconstruct_s": t_r,
                             "total_s": time.perf_counter() - t0,
                             "particles_classes_per_s": len(subset) * k / max(t_e, 1e-9)})


def classify(particles: ParticleStack, params: ClassifyParams | None = None, *, starts: list[Any] | None = None,
             solvent_mask: Any = None, focus_mask: Any = None, consensus: Any = None,
             resume: ClassifyCheckpoint | None = None) -> Generator[ClassIteration, None, ClassifyResult]:
    """3D classification (``mode`` fixed/local) or heterogeneous refinement (``mode="hetero"``), one
    :class:`ClassIteration` per iteration; returns a :class:`ClassifyResult`.

    ``particles``: with poses and CTFs (hetero: poses optional); ``starts``: K starting maps (hetero; for
    classification None = reconstructions of K random particle subsets); ``solvent_mask``/``focus_mask``/
    ``consensus``: ``(n, n, n)`` maps at the particles' pixel size (None: an automatic solvent mask from the
    consensus, no focus mask, the consensus reconstructed from all particles); ``resume``: the checkpoint of an
    earlier run with the same particles, parameters and maps (``ClassIteration.checkpoint``): the run goes on from
    the iteration after it and ends as the uninterrupted run would have (its ``history`` holds the new iterations
    only). InputError if that run had already ended.
    """
    p = params or ClassifyParams()
    if p.mode == "hetero" and starts is None:
        raise ValueError("heterogeneous refinement needs K starting maps")
    first, prev_changed, final_pass = 1, None, False
    if resume is not None:
        first = resume.iteration + 1
        if resume.finished or first > p.max_iter:
            raise InputError(f"nothing to continue: the run had ended after iteration {resume.iteration} "
                             f"(of at most {p.max_iter})")
        prev_changed = None if np.isnan(resume.prev_changed) else resume.prev_changed
        final_pass = resume.final_pass
    cl = _Classifier(particles, p, starts, solvent_mask, focus_mask, consensus, resume=resume)
    n_tot = len(particles)
    mb = p.minibatch_size or max(1000, 300 * p.n_classes)
    history: list[dict[str, float]] = []
    last: ClassIteration | None = None
    for it in range(first, p.max_iter + 1):
        online = it <= p.online_em_iters and mb < n_tot
        subset = np.sort(cl.rng.choice(n_tot, size=mb, replace=False)) if online else np.arange(n_tot)
        # the last iteration works at the whole class box (the maps written are complete to its Nyquist)
        out = cl.iteration(it, subset, online, full_box=final_pass or it == p.max_iter)
        last = ClassIteration(
            iteration=it, stage="online" if online else "full", mode=p.mode, n_particles=len(subset),
            class_maps=np.stack([to_numpy(v) for v in out["maps"]], dtype=np.float32),  # one copy
            class_sizes=np.asarray(out["sizes"], dtype=np.float64),
            class_resolution_A=np.asarray(out["res"], dtype=np.float64),
            class_fsc=np.stack(out["curves"]), mean_ess=out["ess"], changed_fraction=out["changed"],
            similarity=1.0 - out["beta"], pixel_size=cl.apix,
            solvent_mask=to_numpy(cl.solvent).astype(np.float32),
            focus_mask=None if cl.focus is None else to_numpy(cl.focus).astype(np.float32),
            warnings=tuple(cl.warnings), timings=out["timings"], working_box=out["working_box"])
        history.append({"iteration": it, "stage": last.stage, "n_particles": len(subset),
                        "changed_fraction": out["changed"], "mean_ess": out["ess"], "similarity": last.similarity,
                        "working_box_px": out["working_box"],
                        **{f"class_{c + 1}_size": float(s) for c, s in enumerate(out["sizes"])},
                        **{f"class_{c + 1}_res_A": float(r) for c, r in enumerate(out["res"])},
                        **out["timings"]})
        done = final_pass  # the pass at the whole class box after converging in a working box ends the run
        if not done and not online and it > p.anneal_iters:
            # converged, or stalled: a few particles flip back and forth between two iterations for good
            stalled = (out["changed"] < 4 * p.convergence and prev_changed is not None
                       and out["changed"] >= 0.8 * prev_changed)
            done = out["changed"] < p.convergence or stalled
            if not done:
                prev_changed = out["changed"]
            elif out["working_box"] < cl.nc:  # converged in a working box: one more iteration at the whole box
                done, final_pass = False, True
        blends_next = it + 1 <= p.online_em_iters and mb < n_tot
        ckpt = cl.checkpoint(it, prev_changed, done or it == p.max_iter, accumulators=blends_next,
                             final_pass=final_pass and not done)
        last = dataclasses.replace(last, checkpoint=ckpt)
        yield last
        if done:
            break
    assert last is not None
    post = cl.posteriors
    cls = np.argmax(post, axis=1)
    rot = cl.rot[np.arange(n_tot), cls]
    sh_A = cl.sh[np.arange(n_tot), cls] * particles.pixel_size
    moved = p.mode != "fixed"
    out_stack = particles.with_poses(rot if moved else None, sh_A if moved else None, class_number=cls + 1,
                                     extra_columns={"rlnMaxValueProbDistribution": post.max(axis=1)})
    consensus_np = None if cl.consensus is None else to_numpy(cl.consensus).astype(np.float32)
    return ClassifyResult(last, post.copy(), cls + 1, post.max(axis=1), out_stack, consensus_np, history)
