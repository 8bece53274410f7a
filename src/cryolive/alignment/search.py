"""Coarse-to-fine pose search with the Gaussian log-likelihood score of :mod:`cryolive.alignment.score`
(docs/maths.md, "The score" and "Pose search").

Images enter as their whitened terms ``Y (B, K)`` and ``w C^2 (B, K)`` at a pixel set sorted by radius; over all
images and poses the cross term is one real matrix product ``[Re Z, Im Z] @ [Re R, Im R]^T`` with ``Z`` the shifted
images (images x shifts) and ``R`` the projections (poses): that is where the time goes, batched, with no Python
loop over particles or poses.

Search levels: level 0 scores a global SO(3) grid (step ``coarse_step``, projections from
:mod:`cryolive.alignment.grid`) x a shift grid at low resolution and keeps the best ``keep`` (rotation, shift)
candidates whose score is within a statistical bound of the best (``bound_sigma`` standard deviations of the cross
term, ``a sqrt(norm)``: a pose that far behind at the coarse level is pruned); each further level halves the
angular and shift steps, scores a small local lattice around every surviving candidate at a higher resolution, and
keeps fewer candidates. Local search (a good map) starts at a finer level around the previous pose. Rotations are
RELION's ``A`` ``(3, 3)``, origins pixels of the box searched, angles degrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryolive.alignment.grid import GridProjections
from cryolive.alignment.pixels import PixelSet
from cryolive.alignment.score import shift_phases
from cryolive.backend import to_numpy, xp
from cryolive.projection import Projector
from cryolive.rotations.grids import local_offsets


@dataclass(frozen=True)
class Candidates:
    """Per-particle pose candidates: rotations ``(B, M, 3, 3)`` (NumPy), origins ``(B, M, 2)`` px, scores ``(B, M)``."""

    rotations: np.ndarray
    shifts: np.ndarray
    scores: np.ndarray

    def best(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best rotation ``(B, 3, 3)``, origin ``(B, 2)`` and score ``(B,)``."""
        j = np.argmax(self.scores, axis=1)
        b = np.arange(len(j))
        return self.rotations[b, j], self.shifts[b, j], self.scores[b, j]


def origin_range_px(box: int, max_shift_px: float | None) -> float:
    """The largest origin searched (pixels of a box-``box`` image): ``max_shift_px`` when given, else 10 % of the
    box and at least 3 px."""
    return max_shift_px if max_shift_px is not None else max(3.0, round(0.1 * box))


def shift_grid(max_shift: float, step: float) -> np.ndarray:
    """Origins ``(T, 2)`` px on a square grid of ``step`` within a disc of radius ``max_shift`` (0 included)."""
    k = int(np.floor(max_shift / step + 1e-9))
    r = np.arange(-k, k + 1) * step
    g = np.stack(np.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)
    return g[np.hypot(g[:, 0], g[:, 1]) <= max_shift + 1e-9]


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(B, k)`` of the ``k`` largest scores per row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)


def _diverse_top_k(scores: np.ndarray, rotations: np.ndarray, k: int, min_sep_deg: float,
                   pool: int = 64) -> np.ndarray:
    """Indices ``(B, k)`` of up to ``k`` high scores per row whose rotations are at least ``min_sep_deg`` apart.

    Greedy non-maximum suppression over the ``pool`` best of each row: take the best, drop every pooled rotation
    within ``min_sep_deg`` of it, repeat. The coarse level of a global search keeps one candidate per basin, so the
    basins of a pseudo-symmetric particle's mates (turns of 180° for a near-D2 particle) both reach the finer
    levels, where the resolution can tell them apart; plain top-k keeps the grid neighbours of the best basin.
    Rows with fewer than ``k`` separated rotations in the pool are filled with the best remaining ones.
    ``scores``: ``(B, G)``; ``rotations``: ``(G, 3, 3)``.
    """
    if min_sep_deg <= 0 or k <= 1:
        return _top_k(scores, k)
    b = scores.shape[0]
    cand = _top_k(scores, pool)  # (B, P) best first
    rots = rotations[cand]  # (B, P, 3, 3)
    # cos of the angle between pooled rotations: trace(R_i R_j^T) = 1 + 2 cos(theta)
    tr = np.einsum("bpij,bqij->bpq", rots, rots)
    close = tr > 1.0 + 2.0 * np.cos(np.deg2rad(min_sep_deg))
    alive = np.ones(cand.shape, bool)
    picked = np.zeros((b, k), np.int64)
    rows = np.arange(b)
    for t in range(k):
        first = np.argmax(alive, axis=1)  # best alive (pool is sorted); 0 when none is alive
        none_left = ~alive[rows, first]
        picked[:, t] = first
        alive &= ~close[rows, first]
        alive[rows, first] = False
        if none_left.any():  # fill: the best pooled entry not yet picked
            taken = np.zeros(cand.shape, bool)
            np.put_along_axis(taken, picked[:, :t + 1], True, 1)
            picked[none_left, t] = np.argmax(~taken[none_left], axis=1)
    return np.take_along_axis(cand, picked, 1)


def global_level(grid: GridProjections, y: Any, c2w: Any, scale: Any, shifts: np.ndarray, kx: Any, ky: Any,
                 keep: int, bound_sigma: float, free_scale: bool = False,
                 max_elems: int = 20_000_000, rng: np.random.Generator | None = None,
                 min_separation_deg: float = 0.0) -> tuple[Candidates, int]:
    """Score every grid rotation x every shift for images ``y (B, K)``; keep the best ``keep`` per image, at least
    ``min_separation_deg`` apart (distinct basins, see :func:`_diverse_top_k`).

    ``c2w (B, K)`` = w C^2; ``scale (B,)`` per-particle scales. With ``free_scale`` the score is maximised over the
    scale (``cross^2 / 2 norm`` for positive cross), used for the first, greyscale-unknown pass. With ``rng`` the
    one candidate kept is a *sample* of the rotation posterior ``p(r) ∝ exp(LL(r, best shift))`` over the grid
    (Gumbel-max trick) instead of the best: see :func:`search_poses`. Returns the candidates and how many
    (rotation, shift) candidates the bound pruned.
    """
    m = xp()
    b, k = y.shape
    g = grid.reim.shape[0]
    phases = shift_phases(kx, ky, shifts)  # (T, K)
    t = phases.shape[0]
    chunk = max(1, int(max_elems // max(t * g, 1)))
    rots, shs, scs = [], [], []
    pruned = 0
    a_all = m.asarray(scale, dtype=m.float32)
    for s0 in range(0, b, chunk):
        yb = y[s0:s0 + chunk]
        bc = yb.shape[0]
        z = (yb[:, None, :] * phases[None]).reshape(bc * t, k)
        cross = (m.concatenate([z.real, z.imag], axis=1) @ grid.reim.T).reshape(bc, t, g)
        # the norm term does not depend on the shift and the scale is positive, so the best shift of every
        # rotation is the one with the largest cross term (also for the free-scale score, monotone in cross > 0)
        cmax = m.max(cross, axis=1)  # (bc, G)
        norm = c2w[s0:s0 + chunk] @ grid.power.T  # (bc, G)
        a = a_all[s0:s0 + chunk][:, None]
        if free_scale:
            ll = m.where(cmax > 0, cmax * cmax / (2 * norm + 1e-30), 0.0)
        else:
            ll = a * cmax - 0.5 * a * a * norm
        llg = to_numpy(ll)
        if rng is None:
            idx = _diverse_top_k(llg, grid.rotations, keep, min_separation_deg)
        else:
            idx = np.argmax(llg - np.log(-np.log(rng.uniform(1e-12, 1.0, llg.shape))), axis=1)[:, None]
        bi = np.arange(bc)[:, None]
        best_t = to_numpy(m.argmax(cross[m.asarray(bi), :, m.asarray(idx)], axis=-1))  # (bc, keep)
        sc = np.take_along_axis(llg, idx, 1)
        sd = bound_sigma * np.sqrt(np.maximum(np.take_along_axis(to_numpy(norm), idx[:, :1], 1), 1e-30))
        if not free_scale:
            sd = sd * to_numpy(a_all[s0:s0 + chunk])[:, None]
        weak = sc < sc[:, :1] - sd
        pruned += int(weak.sum())
        sc = np.where(weak, -np.inf, sc)
        rots.append(grid.rotations[idx])
        shs.append(shifts[best_t])
        scs.append(sc)
    return Candidates(np.concatenate(rots), np.concatenate(shs), np.concatenate(scs)), pruned


def local_level(proj: Projector, y: Any, c2w: Any, scale: Any, cand: Candidates, offsets: np.ndarray,
                shift_offsets: np.ndarray, kx: Any, ky: Any, keep: int) -> Candidates:
    """Refine candidates: score ``offsets (O, 3, 3) @ R_m`` x ``t_m + shift_offsets (U, 2)`` for every candidate m.

    Candidates with score ``-inf`` (pruned) are dropped from the work when every image has fewer live ones.
    """
    m = xp()
    live = np.isfinite(cand.scores)
    n_live = max(int(live.sum(axis=1).max()), 1)
    order = np.argsort(-np.where(live, cand.scores, -np.inf), axis=1)[:, :n_live]
    c_rot = np.take_along_axis(cand.rotations, order[..., None, None], 1)  # (B, M, 3, 3)
    c_sh = np.take_along_axis(cand.shifts, order[..., None], 1)  # (B, M, 2)
    c_live = np.take_along_axis(live, order, 1)
    b, mm = c_rot.shape[:2]
    o = offsets.shape[0]
    rots = (offsets[None, None] @ c_rot[:, :, None]).reshape(b, mm * o, 3, 3)
    r = proj.slice_pixels(rots.reshape(-1, 3, 3), kx, ky).reshape(b, mm * o, -1)
    base = m.repeat(shift_phases(kx, ky, c_sh), o, axis=1)  # (B, J, K)
    q = (y[:, None, :] * base) * r.conj()
    p = shift_phases(kx, ky, shift_offsets)  # (U, K)
    cross = q.real @ p.real.T - q.imag @ p.imag.T  # (B, J, U)
    norm = m.sum(c2w[:, None, :] * (r.real**2 + r.imag**2), axis=-1)  # (B, J)
    a = m.asarray(scale, dtype=m.float32)[:, None, None]
    ll = to_numpy(a * cross - 0.5 * a * a * norm[:, :, None])
    ll[~np.repeat(c_live, o, axis=1)] = -np.inf
    u = shift_offsets.shape[0]
    # each candidate keeps its own best (rotation, shift): the candidates stay in their own basins, so a
    # pseudo-symmetric mate found at a coarser level is still compared at this level's resolution instead of
    # being crowded out by the neighbours of the leading basin
    per_cand = ll.reshape(b, mm, o * u)
    inner = np.argmax(per_cand, axis=2)  # (B, M)
    best = np.take_along_axis(per_cand, inner[..., None], 2)[..., 0]
    top = _top_k(best, keep)  # (B, keep) candidate indices
    flat_idx = top * (o * u) + np.take_along_axis(inner, top, 1)
    j, uu = flat_idx // u, flat_idx % u
    bi = np.arange(b)[:, None]
    new_rot = rots[bi, j]
    new_sh = c_sh[bi, j // o] + shift_offsets[uu]
    return Candidates(new_rot, new_sh, np.take_along_axis(best, top, 1))


@dataclass(frozen=True)
class SearchPlan:
    """How :func:`search_poses` runs: box ``n`` (pixels), grid step (degrees), levels, candidates kept, the prune
    bound (standard deviations), the largest origin searched (pixels) and, for adaptive marginalisation, how many
    poses the last level keeps (None: 1)."""

    n: int
    coarse_step_deg: float
    levels: int
    candidates: int
    bound_sigma: float
    max_shift_px: float
    marginal_top: int | None = None

    @classmethod
    def of(cls, params: Any, n: int, max_shift_px: float, marginal_top: int | None = None) -> SearchPlan:
        """The plan of an engine's parameters ``params`` (anything with ``coarse_step_deg``, ``levels``,
        ``candidates`` and ``bound_sigma``: :class:`~cryolive.refinement.refine.RefineParams`,
        :class:`~cryolive.classification.classify.ClassifyParams`) on a box of ``n`` pixels."""
        return cls(n, params.coarse_step_deg, params.levels, params.candidates, params.bound_sigma, max_shift_px,
                   marginal_top)

    def first_level(self, local: bool) -> int:
        """The level a search starts at: 0 (the global grid), or ``max(L - 1, 1)`` for a local search."""
        return max(self.levels - 1, 1) if local else 0

    def rotation_offsets(self, level: int, extent_steps: float = 1.5) -> np.ndarray:
        """The local lattice ``(O, 3, 3)`` a level scores around each candidate: rotations on a grid of the level's
        step (``coarse_step_deg / 2**level``) out to ``extent_steps`` steps."""
        st = self.coarse_step_deg / 2**level
        return local_offsets(st, extent_steps * st, cover=False)

    def shift_step(self, radius_px: float) -> float:
        """Shift sampling (pixels) that keeps the phase error at Fourier radius ``radius_px`` below ~1 radian."""
        return float(np.clip(self.n / (3.0 * max(radius_px, 1.0)), 0.25, max(self.max_shift_px, 0.25)))

    def level_radii(self, r_align: float, first_level: int, particle_radius_A: float,
                    pixel_size: float) -> list[float]:
        """Fourier radius (pixels) of each level from ``first_level``: a coarse angular step scores only the
        resolution that a pose error of half a step does not blur away (``4 R sin(step / 2)`` Å for a particle of
        radius ``R`` Å), never beyond ``r_align``; the last level uses ``r_align``."""
        out = []
        for lv in range(first_level, self.levels + 1):
            step = np.deg2rad(self.coarse_step_deg / 2**lv)
            res = max(4.0 * particle_radius_A * np.sin(step / 2), 2.0 * pixel_size)
            out.append(float(min(max(self.n * pixel_size / res, 3.0), r_align)))
        out[-1] = r_align
        return out


def search_poses(plan: SearchPlan, proj: Projector, grid: GridProjections | None, y: Any, c2w: Any, scale: Any,
                 pix: PixelSet, radii: list[float], previous: tuple[np.ndarray, np.ndarray] | None = None,
                 free_scale: bool = False, rng: np.random.Generator | None = None,
                 mates: np.ndarray | None = None) -> tuple[Candidates, int]:
    """Coarse-to-fine search of images ``y, c2w (B, K)`` (whitened terms at the pixels ``pix``, see
    :mod:`cryolive.alignment.score`) against one projector; ``scale (B,)`` the particles' scales.

    Global (``previous`` None): level 0 scores ``grid`` x a shift grid, then levels 1..L refine locally.
    Local (``previous = (rotations (B, 3, 3), origins (B, 2) px)``): starts at level ``max(L - 1, 1)`` around
    the previous pose. ``radii`` holds the Fourier radius (pixels) of every level ``0 .. L``
    (:meth:`SearchPlan.level_radii` from level 0); a level scores the pixels of ``pix`` within its radius (a
    prefix of the set), the last level all of them. Returns the candidates (best first) and how many the bound
    pruned.

    Symmetry relaxation (``mates``: operators ``(G, 3, 3)`` of a pseudo-symmetry, acting on the right of RELION's
    ``A`` as the reconstruction's symmetry operators do): a local search starts from every mate ``A_prev S_g`` of
    the previous pose, not only ``A_prev``, and its first level keeps the best of them (maximisation over the mates,
    RELION's ``--relax_sym``); this costs ``G`` times the first local level.

    Stochastic global search (``rng`` given): level 0 draws one rotation per image from its posterior over the
    grid instead of taking the best, and the finer levels refine that one basin. While the map is wrong or blurred
    the posterior is broad and the draws spread the particles over the views the data allow (taking the best would
    pile them onto the few views the reference favours, and both half maps would reproduce those views'
    averages: a high but meaningless FSC); once the map is good the posterior is sharp and a draw is the best pose.
    """
    p = plan
    pruned = 0
    kx, ky = pix.kx, pix.ky
    radii = radii[p.first_level(previous is not None):]
    counts = [pix.count_within(r) for r in radii[:-1]] + [len(pix)]
    if previous is None:
        k0 = counts[0]
        sstep = p.shift_step(radii[0])
        cand, pruned = global_level(grid, y[:, :k0], c2w[:, :k0], scale, shift_grid(p.max_shift_px, sstep),
                                    kx[:k0], ky[:k0], p.candidates, p.bound_sigma, free_scale, rng=rng,
                                    min_separation_deg=3.0 * p.coarse_step_deg)
        levels = range(1, p.levels + 1)
        keeps = list(np.linspace(p.candidates, 1, p.levels + 1).round().astype(int)[1:])
        if rng is not None:
            keeps = [1] * p.levels
        elif p.marginal_top:  # marginalising: every basin kept at the coarse level is followed to the end
            keeps = [max(int(k), p.marginal_top) for k in keeps]
        counts, radii = counts[1:], radii[1:]
    else:
        rot, sh = previous
        ops = np.eye(3)[None] if mates is None else np.asarray(mates)
        cand = Candidates(rot[:, None] @ ops[None], np.repeat(sh[:, None], len(ops), axis=1),
                          np.zeros((len(rot), len(ops))))
        levels = range(p.first_level(local=True), p.levels + 1)
        keeps = [2] * (len(levels) - 1) + [1]
    for lv, k, radius, keep in zip(levels, counts, radii, keeps, strict=True):
        offsets = p.rotation_offsets(lv, 1.5 if previous is None or lv > levels.start else 2.0)
        ds = p.shift_step(radius) / 2
        soff = np.array([[dx, dy] for dy in (-ds, 0, ds) for dx in (-ds, 0, ds)])
        if p.marginal_top and lv == p.levels:
            keep = p.marginal_top
        cand = local_level(proj, y[:, :k], c2w[:, :k], scale, cand, offsets, soff, kx[:k], ky[:k], keep)
    return cand, pruned
