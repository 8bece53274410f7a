"""The E and M steps of one refinement iteration over a part of the particles: one implementation for one process
and for Dask workers.

The driver (:class:`cryolive.refinement.refine._Refiner`) makes an :class:`IterationContext` per iteration:
everything the particles of that iteration share (the two half sets' references, the working frequency, the
alignment radius and level radii, the half sets' perturbed grid rotations, ``sigma^2``, the window, the search
flags). :func:`run_part` then does, for any set of particles ``idx`` of the stack, in batches that fit the device
(:class:`~cryolive.batching.AdaptiveBatch`): pose search against the particle's own half map, least-squares scale,
residual power per shell, and insertion into that half set's :class:`~cryolive.projection.Reconstructor` (at the
best pose, or at the kept poses weighted by their posterior when marginalising). It returns a :class:`PartResult`:
the new poses of ``idx``, the residual power sums, the pruned-candidate count and the two reconstructors.

One process runs :func:`run_part` over the iteration's whole subset; on Dask each worker runs it over its share
(:mod:`cryolive.refinement.distributed`) and the driver adds the parts (:func:`merge_parts`). Every per-particle
result (search, pruning bound, scale, residual) depends on that particle alone, never on the batch or part it is
in, so the poses are those of one process and the maps differ only by float rounding of the sums, with one
exception: stochastic global search (``sample``) draws from a random generator consumed in batch order (the
driver's in one process; one seeded per part on Dask, see :func:`part_rng`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryolive.alignment.grid import GridProjections, project_grid
from cryolive.alignment.noise import noise_image
from cryolive.alignment.pixels import PixelSet, pixel_set
from cryolive.alignment.score import Scorer, score_poses
from cryolive.alignment.search import Candidates, SearchPlan, search_poses
from cryolive.backend import to_numpy, xp
from cryolive.batching import LOCAL_POSES, AdaptiveBatch, pose_search_bytes, rollback
from cryolive.image.ctf import ctf_2d
from cryolive.image.fourier import rfft2c
from cryolive.io import ParticleStack
from cryolive.projection import Projector, Reconstructor


@dataclass
class Poses:
    """Poses of a set of particles (one row each): ``rotations (B, 3, 3)`` RELION ``A``, ``shifts (B, 2)`` origins
    in pixels, ``scales (B,)``, ``seen (B,)`` bool (has a pose from this run). Mutable: the E step writes it."""

    rotations: np.ndarray
    shifts: np.ndarray
    scales: np.ndarray
    seen: np.ndarray

    def take(self, rows: np.ndarray) -> Poses:
        """A copy of rows ``rows``."""
        return Poses(self.rotations[rows].copy(), self.shifts[rows].copy(), self.scales[rows].copy(),
                     self.seen[rows].copy())

    def put(self, rows: np.ndarray, other: Poses) -> None:
        """Write ``other`` (one row per entry of ``rows``) into rows ``rows``."""
        self.rotations[rows], self.shifts[rows] = other.rotations, other.shifts
        self.scales[rows], self.seen[rows] = other.scales, other.seen

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(rotations, shifts, scales, seen)``."""
        return self.rotations, self.shifts, self.scales, self.seen


@dataclass(frozen=True)
class IterationContext:
    """What every particle of one iteration's E + M step shares; NumPy (or backend) arrays, picklable.

    ``params``: the :class:`~cryolive.refinement.refine.RefineParams`; ``box`` (px), ``pixel_size`` (Å);
    ``refs``: the two half sets' references ``(n, n, n)`` float32 (NumPy to travel to Dask workers);
    ``work_freq``: the projectors' and reconstructors' highest frequency (cycles/pixel); ``r_align``: the alignment
    radius (Fourier pixels) and ``radii`` every search level's (from level 0; the scales are fitted within the
    first); ``grid_rotations``: each half set's perturbed global grid ``(G, 3, 3)`` (None: local
    search); ``sigma2``: noise power per shell ``(n // 2 + 1,)``; ``window``: the real-space image window
    ``(n, n)``; ``max_shift`` (px); ``relax_ops``: pseudo-symmetry mates ``(G, 3, 3)`` tried by local searches
    (None: none); ``local``, ``free_scale``, ``sample``: the search mode (see :func:`search`).
    """

    params: Any
    box: int
    pixel_size: float
    refs: tuple[Any, Any]
    work_freq: float
    r_align: float
    radii: tuple[float, ...]
    grid_rotations: tuple[np.ndarray, np.ndarray] | None
    sigma2: np.ndarray
    window: Any
    max_shift: float
    relax_ops: np.ndarray | None
    local: bool
    free_scale: bool = False
    sample: bool = False

    @property
    def marginal(self) -> bool:
        """Whether particles are inserted at several poses weighted by their posterior (:func:`marginal`)."""
        return marginal(self.params, self.local)

    def plan(self) -> SearchPlan:
        """The search plan of this iteration (:func:`search_plan`)."""
        return search_plan(self.params, self.box, self.max_shift, self.marginal)


@dataclass
class PartResult:
    """What :func:`run_part` made of particles ``idx``: their new ``poses``; residual power ``acc`` and pixel counts
    ``cnt`` per shell ``(n // 2 + 1,)``; candidates the search bound pruned; the half sets' reconstructors
    ``(rec_A, rec_B)`` (in the iteration's working box); seconds searching and inserting."""

    idx: np.ndarray
    poses: Poses
    acc: np.ndarray
    cnt: np.ndarray
    pruned: int
    recs: tuple[Reconstructor, Reconstructor]
    search_s: float = 0.0
    insert_s: float = 0.0


def marginal(params: Any, local: bool) -> bool:
    """Whether an iteration inserts each particle at several poses weighted by their posterior: always with
    ``marginalize``, in global iterations with ``marginalize_global``."""
    return bool(params.marginalize or (params.marginalize_global and not local))


def search_plan(params: Any, box: int, max_shift: float, marginal: bool | None = None) -> SearchPlan:
    """The search plan; ``marginal``: the last level keeps the poses marginalised over (None: as
    ``params.marginalize`` says)."""
    marginal = params.marginalize if marginal is None else marginal
    top = (params.marginal_top if params.marginalize else params.candidates) if marginal else None
    return SearchPlan.of(params, box, max_shift, top)


def image_pair(stack: ParticleStack, idx: np.ndarray, window: Any) -> tuple[Any, Any]:
    """Windowed (E step) and unwindowed (M step) image transforms ``(B, n, n // 2 + 1)`` of particles ``idx``.

    The window removes the box corners from the score; the reconstruction inserts the whole image, because the
    window is a convolution in Fourier space that smears the fast high-resolution CTF oscillations (with true poses
    the windowed reconstruction is 7.44 Å against the truth, the unwindowed 7.21 Å)."""
    img = xp().asarray(stack.images(idx))
    return rfft2c(img * window), rfft2c(img)


def search(ctx: IterationContext, scorer: Scorer, proj: Projector, grid: GridProjections | None, f: Any,
           idx: np.ndarray, pix: PixelSet, poses: Poses, rows: np.ndarray,
           rng: np.random.Generator | None = None) -> tuple[Candidates, int]:
    """Coarse-to-fine pose search (:func:`~cryolive.alignment.search.search_poses`) of particles ``idx`` (windowed
    transforms ``f``; their poses are rows ``rows`` of ``poses``) against ``proj``: global over ``grid``, or local
    around the previous poses (and their pseudo-symmetry mates). ``rng``: draws of a stochastic global search
    (used only with ``ctx.sample``). Returns the candidates and how many the bound pruned."""
    y, c2w = scorer.whitened(f, idx, pix, ctx.sigma2)
    previous = (poses.rotations[rows], poses.shifts[rows]) if ctx.local else None
    return search_poses(ctx.plan(), proj, grid, y, c2w, poses.scales[rows], pix, list(ctx.radii), previous,
                        ctx.free_scale, rng=rng if ctx.sample and not ctx.local else None,
                        mates=ctx.relax_ops if ctx.local else None)


def fit_scales(ctx: IterationContext, scorer: Scorer, proj: Projector, f: Any, idx: np.ndarray, rot: np.ndarray,
               sh: np.ndarray) -> np.ndarray | None:
    """Least-squares scale ``(B,)`` of particles ``idx`` at poses ``rot, sh``, clipped to 0.2 .. 5, over the
    low-resolution pixels only (within the first search level's radius ``ctx.radii[0]``: there the FSC weighting
    of the reference is ~1, so the scale does not absorb the filter and drift); None with ``scale_mode`` "reset"
    (the scales stay)."""
    if ctx.params.scale_mode == "reset":
        return None
    pix = pixel_set(ctx.box, ctx.radii[0])
    cross, norm = score_poses(proj, *scorer.whitened(f, idx, pix, ctx.sigma2), rot, sh, pix)
    a = to_numpy(cross) / np.maximum(to_numpy(norm), 1e-30)
    return np.clip(np.where(np.isfinite(a), a, 1.0), 0.2, 5.0)


@dataclass(frozen=True)
class _Found:
    """One half set's share of a batch, ready to insert: the unwindowed transforms, the candidates, the best pose,
    and the CTF times the scale ``(B, n, n // 2 + 1)``."""

    half: int
    raw: Any
    cand: Candidates
    rot: np.ndarray
    sh: np.ndarray
    ctf2d: Any


def _e_step(stack: ParticleStack, scorer: Scorer, ctx: IterationContext, models: Sequence[tuple[Projector, Any]],
            idx_all: np.ndarray, rows: np.ndarray, poses: Poses, half: np.ndarray,
            rng: np.random.Generator | None) -> tuple[list[_Found], np.ndarray, np.ndarray, int, float]:
    """Search, scales, residual power and CTFs of particles ``idx_all`` (rows ``rows`` of ``poses`` and ``half``),
    both half sets; writes their poses into ``poses``. Returns what to insert, the residual sums ``acc, cnt``, the
    pruned count and the search seconds. Inserts nothing: a batch that runs out of memory is rolled back and
    retried (:mod:`cryolive.batching`), so no particle is inserted or counted twice."""
    m = xp()
    nsh = ctx.box // 2 + 1
    acc, cnt, found, pruned_all = np.zeros(nsh), np.zeros(nsh), [], 0
    pix = pixel_set(ctx.box, ctx.r_align)
    f_all, raw_all = image_pair(stack, idx_all, ctx.window)
    ts = time.perf_counter()
    for h in (1, 2):
        sel = np.nonzero(half[rows] == h)[0]
        if len(sel) == 0:
            continue
        idx, r, f, raw = idx_all[sel], rows[sel], f_all[m.asarray(sel)], raw_all[m.asarray(sel)]
        proj, grid = models[h - 1]
        cand, pruned = search(ctx, scorer, proj, grid, f, idx, pix, poses, r, rng)
        pruned_all += pruned
        rot, sh, _ = cand.best()
        poses.rotations[r], poses.shifts[r] = rot, sh
        poses.seen[r] = True
        scales = fit_scales(ctx, scorer, proj, f, idx, rot, sh)
        if scales is not None:
            poses.scales[r] = scales
        # the residuals out to the projector's working radius (shells beyond keep their noise estimate)
        scorer.residual_power(proj, f, idx, rot, sh, pixel_set(ctx.box, proj.max_freq * ctx.box), acc, cnt,
                              scales=poses.scales[r])
        ctf2d = ctf_2d(stack.ctf.subset(idx), ctx.box, ctx.pixel_size) * m.asarray(
            poses.scales[r], dtype=m.float32)[:, None, None]
        found.append(_Found(h, raw, cand, rot, sh, ctf2d))
    return found, acc, cnt, pruned_all, time.perf_counter() - ts


def _insert(ctx: IterationContext, found: list[_Found], recs: Sequence[Reconstructor], noise_power: Any) -> None:
    """Insert each half set's share of a batch into its reconstructor: at the best pose, or (marginalising, with
    more than one pose kept) at every kept pose weighted by its posterior."""
    for fd in found:
        rec = recs[fd.half - 1]
        scores = fd.cand.scores
        if ctx.marginal and scores.shape[1] > 1:
            wts = np.exp(scores - scores[:, :1])
            wts /= wts.sum(axis=1, keepdims=True)
            for j in range(scores.shape[1]):
                rec.insert(fd.raw, fd.cand.rotations[:, j], ctf=fd.ctf2d, shifts=fd.cand.shifts[:, j],
                           weights=wts[:, j], noise_power=noise_power)
        else:
            rec.insert(fd.raw, fd.rot, ctf=fd.ctf2d, shifts=fd.sh, noise_power=noise_power)


def build_models(ctx: IterationContext) -> list[tuple[Projector, GridProjections | None]]:
    """Each half set's projector of its reference (in the working box) and, for a global search, its grid's
    projections at the first level's pixels."""
    pix = pixel_set(ctx.box, ctx.r_align)
    out = []
    for h in (0, 1):
        proj = Projector(ctx.refs[h], max_freq=ctx.work_freq)
        grid = None if ctx.grid_rotations is None else project_grid(proj, ctx.grid_rotations[h], pix, ctx.radii[0])
        out.append((proj, grid))
    return out


def batch_item_bytes(ctx: IterationContext) -> float:
    """Device bytes per particle of an E-step batch (:func:`~cryolive.batching.pose_search_bytes`)."""
    p = ctx.params
    mates = 1 if ctx.relax_ops is None else len(ctx.relax_ops)
    pix = pixel_set(ctx.box, ctx.r_align)
    return pose_search_bytes(len(pix), max(p.candidates, p.marginal_top, mates) * LOCAL_POSES, ctx.box)


def run_part(stack: ParticleStack, ctx: IterationContext, idx: np.ndarray, poses: Poses, half: np.ndarray, *,
             batches: AdaptiveBatch | None = None, rng: np.random.Generator | None = None,
             models: list[tuple[Projector, GridProjections | None]] | None = None) -> PartResult:
    """The E + M step of particles ``idx`` (indices into ``stack``, any order): pose search, scales, residual power
    and insertion into two new half-set reconstructors, in batches of ``batches`` (default: ``params.batch_size``,
    halved on out-of-memory).

    ``poses``: the particles' current poses (one row per entry of ``idx``; updated in place and returned in the
    result); ``half``: their half sets (1 / 2); ``rng``: the draws of a stochastic global search (``ctx.sample``);
    ``models``: the projectors and grid projections (:func:`build_models`; made here when None, as on a worker).
    """
    models = build_models(ctx) if models is None else models
    batches = AdaptiveBatch(ctx.params.batch_size, label="refinement") if batches is None else batches
    scorer = Scorer(stack.ctf, ctx.pixel_size)
    m = xp()
    recs = (Reconstructor(ctx.box, symmetry=ctx.params.symmetry, max_freq=ctx.work_freq),
            Reconstructor(ctx.box, symmetry=ctx.params.symmetry, max_freq=ctx.work_freq))
    nsh = ctx.box // 2 + 1
    acc, cnt = np.zeros(nsh), np.zeros(nsh)
    pruned = 0
    t_search = t_insert = 0.0
    # sigma^2 is measured on windowed images: whole images carry 1 / mean(window^2) times that noise power
    noise_power = noise_image(ctx.sigma2, ctx.box) / float(m.mean(ctx.window**2))

    def step(a: int, b: int) -> tuple[list[_Found], np.ndarray, np.ndarray, int, float]:
        rows = np.arange(a, b)
        with rollback(rows, poses.arrays(), rng):  # a batch that runs out of memory leaves the poses as they were
            return _e_step(stack, scorer, ctx, models, idx[a:b], rows, poses, half, rng)

    for _, _, (found, acc_b, cnt_b, pruned_b, dt) in batches.run(len(idx), step, batch_item_bytes(ctx)):
        acc += acc_b
        cnt += cnt_b
        pruned += pruned_b
        t_search += dt
        ti = time.perf_counter()
        _insert(ctx, found, recs, noise_power)
        t_insert += time.perf_counter() - ti
        found = None  # this batch's device arrays go before the next batch is searched
    return PartResult(idx, poses, acc, cnt, pruned, recs, t_search, t_insert)


def part_rng(seed: int, iteration: int, part: int) -> np.random.Generator:
    """The random generator of part ``part`` of iteration ``iteration`` on Dask (stochastic global search only):
    seeded from ``(seed, iteration, part)``, so a run repeats with the same parts (workers and ``parts``), but its
    draws differ from one process's, which consumes the driver's generator in batch order."""
    return np.random.default_rng([seed, iteration, part])


def merge_parts(parts: Iterable[PartResult]) -> PartResult:
    """The sum of the parts of one iteration (consumed one at a time, so that a part's accumulators can go once
    added, as on Dask where they arrive one by one): the particles and poses of every part, the residual power and
    pruned counts summed, the reconstructors added (:meth:`Reconstructor.add`; into the first part's), the seconds
    summed over the parts."""
    total: PartResult | None = None
    for part in parts:
        if total is None:
            total = part
            continue
        total = PartResult(
            np.concatenate([total.idx, part.idx]),
            Poses(*(np.concatenate([a, b]) for a, b in zip(total.poses.arrays(), part.poses.arrays(), strict=True))),
            total.acc + part.acc, total.cnt + part.cnt, total.pruned + part.pruned, total.recs,
            total.search_s + part.search_s, total.insert_s + part.insert_s)
        total.recs[0].add(part.recs[0])
        total.recs[1].add(part.recs[1])
    if total is None:
        raise ValueError("no part to merge")
    return total
