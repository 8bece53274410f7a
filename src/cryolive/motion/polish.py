"""Bayesian polishing, the :func:`motion` generator: hyper-parameter search, empirical dose weights, corrected
particles.

Stages (``final_stage`` stops after any of them):

1. ``hyper``: micrographs drawn at random until ``target_particles`` are reached; rays of :mod:`.hyper` are
   searched (skipped when hyper-parameters are given, from a previous job or all three overrides).
2. ``dose``: trajectories of micrographs drawn until ``dose_target_particles`` (all Fourier components, no
   damage model), FCC against the opposite half map, per-frame B-factor/scale fit (skipped when a dose model is
   given).
3. ``final``: every micrograph: trajectories (all Fourier components unless ``use_all_fcs`` is off, damage model
   in the likelihood), then ``F sum_f w(f, s) shift(X_f, -d_f)`` written to the output stack in input order.

Per micrograph the rigid track (the particle-summed correlation peak) is found first and the priors act on the
local trajectories relative to it. Patches are cut at the integer pick coordinates (``rlnCoordinateX/Y``, in
pixels of the coordinates, converted to movie pixels; see :mod:`.movies`), from frames times the gain, read one at
a time; when the movie pixel is finer than the particles' the patches are Fourier-cropped to the particle box, so
trajectories are always in particle pixels. A drift larger than half the rigid window (``global_window_px``,
measured over the whole patch by :func:`~.trajectories.coarse_drift`) makes the patches be cut again, frame by
frame, where the particles went (the movie read once more, up to :data:`MAX_DRIFT_ROUNDS` times); the rigid track
then includes those offsets. With ``recenter`` the coordinates first move by ``-round(origin)``
and the origins keep the remainder.
Every step yields a frozen :class:`MotionStep`; the generator returns a :class:`MotionResult`.

Resuming: each step carries a :class:`MotionCheckpoint` (every search step and dose micrograph; in ``final`` every
micrograph, or every ``n/100``-th of ``n`` micrographs and the last), what the next unit of work starts from;
``motion(..., resume=checkpoint)`` skips the work it records and ends as the unbroken run would have. The corrected
particles of the ``final`` micrographs done are taken from the partial output stack that ``keep_partial`` leaves
next to ``out_stack`` (``.<name>.partial``) when the run is interrupted, else recomputed from the checkpoint's
trajectories (without fitting them again).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cryolive.backend import to_numpy
from cryolive.image.fourier import rfft_freqs_2d
from cryolive.io import InputError, ParticleStack, StackWriter
from cryolive.motion.correct import align_frames, corrected_particles, fourier_crop
from cryolive.motion.dose import DoseModel, FCCAccumulator, fit_dose_model, weight_image
from cryolive.motion.gain import apply_gain
from cryolive.motion.hyper import THOROUGHNESS, SearchPoint, check_overrides, rays_for, search_step
from cryolive.motion.movie_io import open_movie
from cryolive.motion.movies import MovieSet, coordinates, micrograph_names, movie_positions, open_movie_set
from cryolive.motion.patches import movie_patches, noise_power, patch_transforms
from cryolive.motion.references import References
from cryolive.motion.trajectories import UPSAMPLE, Hyper, cc_maps, coarse_drift, fit_trajectories, global_track
from cryolive.params import param

STAGES = ("hyper", "dose", "final")
#: rounds of re-cutting the patches after a drift larger than half the rigid window (each reads the movie again)
MAX_DRIFT_ROUNDS = 3


@dataclass(frozen=True)
class MotionParams:
    """Job parameters. Pixels unless named ``_A``; ``r`` in 1/px^2, ``theta`` radians.

    Movie input (see :mod:`.movies` and :mod:`.gain`):

    * ``gain``: gain reference (MRC or TIFF, 2-D, the frames' size after orienting) multiplied into every frame
      before anything else; None: the frames are used as stored.
    * ``gain_rot``: rotate the gain by this many 90-degree steps counter-clockwise with y up (0..3, RELION's
      ``--gain_rot``, MotionCor2's ``-RotGain``), before ``gain_flip``.
    * ``gain_flip``: 0 none, 1 upside down, 2 left-right (RELION's ``--gain_flip``, MotionCor2's ``-FlipGain``).
    * ``dose_per_frame``: electron dose per frame (e/Å^2); None: ``rlnMicrographDoseRate`` of the STAR when it has
      one. Recorded with the empirical dose weights (B-factors per e/Å^2); the weights themselves are fitted.
    """

    thoroughness: str = param("fast", choices=tuple(THOROUGHNESS), flag="--thoroughness", label="Search thoroughness")
    max_prior_strength: float = param(1e4, gt=0, unit="1/px²", flag="--max-prior-strength",
                                      label="Largest prior strength", help="largest total prior strength r")
    r_start: float = 0.05
    r_growth: float = 4.0
    fit_fraction: float = param(0.5, gt=0, le=1, flag="--fit-fraction", label="Fitted fraction",
                                help="fraction of Fourier components to fit")
    target_particles: int = param(1000, ge=1, flag="--target-particles", label="Target particles",
                                  help="particles for the hyper-parameter search")
    dose_target_particles: int = 5000
    override_r: float | None = param(None, gt=0, unit="1/px²", flag="--override-r", label="Prior strength r",
                                     help="total prior strength r (give all three overrides)")
    override_theta: float | None = param(None, ge=0, le=np.pi / 2, unit="rad", flag="--override-theta",
                                         label="Balance theta", help="balance theta (0 spatial .. pi/2 acceleration)")
    override_z_A: float | None = param(None, gt=0, unit="Å", flag="--override-z", label="Correlation distance z",
                                       help="correlation distance z")
    use_all_fcs: bool = True
    window_px: int = 6
    global_window_px: int = 10
    retire_px: float = 0.5
    patience: int = 2
    final_stage: str = param("final", choices=STAGES, flag="--stage", label="Final stage",
                             help="final processing stage")
    crop_box: int | None = param(None, ge=2, unit="px", flag="--crop-box", label="Output box",
                                 help="Fourier-crop the output particles to this box")
    recenter: bool = False
    skip_wrong_frame_count: bool = False
    float16: bool = param(False, flag="--float16", label="save particles in float16",
                          help="write the corrected particles in half precision")
    seed: int = 0
    keep_search_trajectories: bool = False
    gain: str | None = None
    gain_rot: int = 0
    gain_flip: int = 0
    dose_per_frame: float | None = param(None, gt=0, unit="e/Å²", flag="--dose-per-frame", label="Dose per frame",
                                         help="dose per frame (default: rlnMicrographDoseRate of the STAR, if any); "
                                              "recorded with the dose weights")


@dataclass(frozen=True)
class MotionStep:
    """One step: the stage, the micrograph (index in the sorted list, name), its particles' positions ``(N, 2)``
    px and trajectories ``(N, F, 2)`` px (total, rigid + local; None during the search), its frame sum binned by
    ``bin_factor`` (None during the search), the current dose weights ``(F, n//2+1)`` (or None), the search so far
    and timings (s). ``done``/``total`` count steps of this stage."""

    stage: str
    micrograph: int
    micrograph_name: str
    n_micrographs: int
    done: int
    total: int
    positions: np.ndarray
    trajectories: np.ndarray | None
    frame_sum: np.ndarray | None
    bin_factor: int
    dose_weights: np.ndarray | None
    search: tuple[SearchPoint, ...]
    timings: dict[str, float]
    message: str = ""
    checkpoint: MotionCheckpoint | None = None


@dataclass(frozen=True)
class MotionCheckpoint:
    """What the unit of work after a step starts from (see :func:`cryolive.jobs.jobdir.save_checkpoint`).

    ``stage``/``done``: the stage of the last completed unit and how many of its units are done (search steps,
    dose micrographs, final micrographs); ``n_micrographs``/``n_frames``: the movies it was made for. ``search``:
    ``(K, 7)`` ray, step, r, theta, z_A, score, activity of the search points so far; ``ray``/``ray_step``: the
    search step to do next, with the ray's best score ``ray_best``, steps without improvement ``ray_since`` and the
    search micrographs' local trajectories ``ray_trajs`` ``(sum N, F, 2)`` (no rows: the ray starts afresh).
    ``hyper``: ``(3,)`` r, theta, z_A (empty until known); ``dose``: ``(2, F)`` B-factors and scales (empty until
    known) with ``dose_info`` pixel size, box, dose per frame (NaN: unknown), pre-exposure; ``fcc_*``: the dose
    stage's FCC sums; ``final_trajs``: ``(M, F, 2)`` total trajectories of the final micrographs done, in their
    order (each micrograph's particles in input order)."""

    stage: str
    done: int
    n_micrographs: int
    n_frames: int
    search: np.ndarray
    ray: int
    ray_step: int
    ray_best: float
    ray_since: int
    ray_trajs: np.ndarray
    hyper: np.ndarray
    dose: np.ndarray
    dose_info: np.ndarray
    fcc_num: np.ndarray
    fcc_xx: np.ndarray
    fcc_rr: np.ndarray
    fcc_count: int
    final_trajs: np.ndarray

    def search_points(self) -> list[SearchPoint]:
        return [SearchPoint(int(r[0]), int(r[1]), Hyper(float(r[2]), float(r[3]), float(r[4])), float(r[5]),
                            float(r[6])) for r in np.asarray(self.search, float).reshape(-1, 7)]

    def hyper_value(self) -> Hyper | None:
        h = np.asarray(self.hyper, float)
        return Hyper(float(h[0]), float(h[1]), float(h[2])) if h.size == 3 else None

    def dose_model(self) -> DoseModel | None:
        if np.asarray(self.dose).size == 0:
            return None
        apix, box, per_frame, pre = (float(v) for v in self.dose_info)
        return DoseModel(np.array(self.dose[0], float), np.array(self.dose[1], float), apix, int(box),
                         None if np.isnan(per_frame) else per_frame, pre)


@dataclass
class _Progress:
    """The state a checkpoint is made of (updated by the stages as they go)."""

    search: list
    hyper: Hyper | None = None
    dose: DoseModel | None = None
    ray: tuple = (0, 0, np.inf, 0, None)  # next ray, step, best score, steps since, local trajectories
    acc: FCCAccumulator | None = None
    final: list = field(default_factory=list)  # total trajectories per final micrograph done

    def checkpoint(self, ctx: _Context, stage: str, done: int) -> MotionCheckpoint:
        f = ctx.n_frames
        ray, step, best, since, trajs = self.ray
        pts = np.array([[s.ray, s.step, s.hyper.r, s.hyper.theta, s.hyper.z_A, s.score, s.activity]
                        for s in self.search], float).reshape(-1, 7)
        h = self.hyper
        d = self.dose
        acc = self.acc
        empty = np.zeros((0, f, 2))
        return MotionCheckpoint(
            stage=stage, done=int(done), n_micrographs=len(ctx.mic_list), n_frames=f, search=pts, ray=int(ray),
            ray_step=int(step), ray_best=float(best), ray_since=int(since),
            ray_trajs=np.concatenate(trajs) if trajs else empty,
            hyper=np.zeros(0) if h is None else np.array([h.r, h.theta, h.z_A], float),
            dose=np.zeros((0, f)) if d is None else np.stack([np.asarray(d.bfactors, float),
                                                              np.asarray(d.scales, float)]),
            dose_info=np.zeros(4) if d is None else np.array(
                [d.pixel_size, d.box, np.nan if d.dose_per_frame is None else d.dose_per_frame, d.pre_exposure]),
            fcc_num=np.zeros((0, 0)) if acc is None else acc.num.copy(),
            fcc_xx=np.zeros((0, 0)) if acc is None else acc.xx.copy(),
            fcc_rr=np.zeros(0) if acc is None else acc.rr.copy(), fcc_count=0 if acc is None else acc.count,
            final_trajs=np.concatenate(self.final) if self.final else empty)


@dataclass(frozen=True)
class MotionResult:
    """The outcome: hyper-parameters, dose model, search, trajectories per micrograph name ``(idx, (N, F, 2))``,
    the corrected particles (a ParticleStack on ``out_stack``, or images in memory) and timings per stage (s)."""

    hyper: Hyper | None
    dose: DoseModel | None
    search: tuple[SearchPoint, ...]
    trajectories: dict[str, tuple[np.ndarray, np.ndarray]]
    particles: ParticleStack | None
    images: np.ndarray | None
    kept: np.ndarray
    skipped_movies: list[str]
    n_frames: int
    timings: dict[str, float] = field(default_factory=dict)
    search_trajectories: dict = field(default_factory=dict)


@dataclass
class _Mic:
    name: str
    idx: np.ndarray
    positions: np.ndarray
    positions_A: np.ndarray
    fx: np.ndarray
    ref_own: np.ndarray
    ref_opp: np.ndarray
    noise: np.ndarray
    rigid: np.ndarray
    frame_sum: np.ndarray
    bin_factor: int
    fit_maps: np.ndarray | None = None
    cv_maps: np.ndarray | None = None
    cv_norm: float = 1.0
    amplitude: float = 1.0


class _Context:
    """Shared state: particles, movies, references, recentred coordinates/origins, timings."""

    def __init__(self, stack: ParticleStack, movies: MovieSet, refs: References, p: MotionParams) -> None:
        if stack.rotations is None:
            raise InputError(f"{stack.source}: the particles have no poses; motion correction needs a refinement")
        if refs.box != stack.box:
            raise InputError(f"{stack.source}: particle box {stack.box} differs from the half maps' box {refs.box}")
        self.stack, self.refs, self.p, self.movies = stack, refs, p, movies
        names = micrograph_names(stack)
        self.n_frames = movies.n_frames
        self.skipped = list(movies.skipped)
        self.paths = dict(movies.paths)
        self.names = names
        self.mic_list = sorted(self.paths)
        self.kept = np.nonzero(np.isin(names, self.mic_list))[0]
        origins = np.zeros((len(stack), 2)) if stack.shifts is None else stack.shifts.copy()
        xy = coordinates(stack)
        if p.recenter:
            coords_A = movies.pixel.coords_A
            move = np.rint(origins / coords_A).astype(np.int64)
            xy = xy - move
            origins = origins - move * coords_A
        self.xy, self.origins = xy, origins
        self.movie_xy = movie_positions(xy, movies.pixel)
        n = stack.box
        ky, kx = (to_numpy(g) for g in rfft_freqs_2d(n))  # motion computes on the host
        self.radius = np.sqrt(kx * kx + ky * ky)
        self.cut = 0.5 * np.sqrt(p.fit_fraction)
        self.timings: dict[str, float] = {}

    def tick(self, key: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + t - t0
        return t

    def prepare(self, name: str) -> _Mic:
        """Read the movie, cut patches, project references, find the rigid track (low-frequency band)."""
        t0 = time.perf_counter()
        idx = np.nonzero(self.names == name)[0]
        movie, gain = open_movie(self.paths[name]), self.movies.gain

        def frame_at(f: int) -> np.ndarray:
            return apply_gain(movie.frame(f), gain)

        patches, total = movie_patches(frame_at, self.n_frames, self.movie_xy[idx], self.movies.patch)
        t0 = self.tick("read_s", t0)
        ref_own = self.refs.project(self.stack, idx, self.origins[idx])
        ref_opp = self.refs.project(self.stack, idx, self.origins[idx], opposite=True)
        t0 = self.tick("references_s", t0)
        fx = self.transforms(patches)
        noise = noise_power(fx)
        t0 = self.tick("patches_s", t0)
        band = (self.radius <= self.cut) / noise
        wg = self.p.global_window_px
        # a drift beyond half the rigid window: cut the patches again where the particles went, frame by frame
        # (integer movie pixels), and shift out the rest of the smooth drift, so the rigid track only measures a
        # smooth remainder; the trajectories carry the drift
        base = np.zeros((self.n_frames, 2))  # the smooth drift taken out (particle px)
        to_particle_px = self.stack.box / self.movies.patch
        for _ in range(MAX_DRIFT_ROUNDS):
            drift = coarse_drift(fx, ref_own, band)
            if np.abs(drift).max() <= 0.5 * wg:
                break
            base = base + drift
            offsets = np.rint(base / to_particle_px).astype(np.int64)  # movie px
            patches, _ = movie_patches(frame_at, self.n_frames, self.movie_xy[idx], self.movies.patch, offsets)
            fx = self.transforms(patches)
            fx = align_frames(fx, np.broadcast_to((base - offsets * to_particle_px)[None], (len(idx),) + base.shape))
        del patches
        t0 = self.tick("drift_s", t0)
        maps = cc_maps(fx, ref_own, band, wg)
        sign = contrast_sign(maps)
        rigid = global_track(sign * maps, wg)
        fx = align_frames(fx, np.broadcast_to(rigid[None], (len(idx),) + rigid.shape))
        amp = reference_amplitude(fx, ref_own, np.where(self.radius > 0, band, 0.0), sign)
        ref_own, ref_opp = ref_own * np.float32(amp), ref_opp * np.float32(amp)
        self.tick("rigid_s", t0)
        b = max(1, int(np.ceil(max(total.shape) / 1024)))
        binned = total[: total.shape[0] // b * b, : total.shape[1] // b * b]
        binned = binned.reshape(binned.shape[0] // b, b, binned.shape[1] // b, b).mean(axis=(1, 3))
        pos = self.movie_xy[idx]
        return _Mic(name, idx, pos, pos * self.movies.pixel.movie_A, fx, ref_own, ref_opp, noise,
                    rigid + base, binned.astype(np.float32), b, amplitude=amp)

    def transforms(self, patches: np.ndarray) -> np.ndarray:
        """Frame transforms ``(N, F, n, n//2+1)`` of patches ``(N, F, patch, patch)`` at the particle box ``n``
        (Fourier-cropped when the movie's pixels are finer)."""
        fx = patch_transforms(patches)
        if self.movies.patch != self.stack.box:  # movie pixels finer than the particles': crop to the particle box
            fx = fourier_crop(fx, self.movies.patch, self.stack.box)
        return fx

    def fit_weight(self, mic: _Mic, all_fcs: bool, dose: DoseModel | None) -> np.ndarray:
        """Likelihood weights ``(F or 1, n, n//2+1)``: band x damage amplitude / noise power."""
        band = np.ones_like(self.radius) if all_fcs else (self.radius <= self.cut).astype(float)
        w = (band / mic.noise)[None]
        if dose is not None:
            w = w * weight_image(dose.amplitude(self.stack.box, self.stack.pixel_size), self.stack.box)
        return w

    def fit(self, mic: _Mic, hyper: Hyper, all_fcs: bool, dose: DoseModel | None) -> np.ndarray:
        """Total trajectories ``(N, F, 2)`` px (rigid + local)."""
        t0 = time.perf_counter()
        maps = cc_maps(mic.fx, mic.ref_own, self.fit_weight(mic, all_fcs, dose), self.p.window_px)
        loc = fit_trajectories(maps, mic.positions_A, hyper, self.p.window_px)
        self.tick("trajectories_s", t0)
        return loc + mic.rigid[None]

    def draw(self, target: int, seed: int) -> list[str]:
        """Micrographs in random order until they hold at least ``target`` particles (or all are used)."""
        order = np.random.default_rng(seed).permutation(len(self.mic_list))
        out, count = [], 0
        for k in order:
            name = self.mic_list[k]
            out.append(name)
            count += int((self.names == name).sum())
            if count >= target:
                break
        return out


def contrast_sign(maps: np.ndarray) -> float:
    """+1 when the particles in the frames have the references' contrast, -1 when inverted (e.g. raw counts
    against references of white particles): which extreme (summed over frames) of the particle-summed correlation
    maps ``(N, F, S, S)`` of each frame is larger, the peak or the trough."""
    per_frame = maps.sum(axis=0).reshape(maps.shape[1], -1)  # (F, S*S)
    per_frame = per_frame - np.median(per_frame, axis=1, keepdims=True)  # the offset of the DC term goes
    return 1.0 if float(per_frame.max(axis=1).sum()) >= -float(per_frame.min(axis=1).sum()) else -1.0


def reference_amplitude(fx: np.ndarray, ref: np.ndarray, weight: np.ndarray, sign: float) -> float:
    """Least-squares amplitude ``a`` (with its sign) of the references ``(N, n, n//2+1)`` in each aligned frame
    ``(N, F, n, n//2+1)`` under ``weight`` ``(n, n//2+1)`` (zero at DC): ``sum Re[X conj(R)] w / (F sum |R|^2 w)``.
    Scaling the references by ``a`` puts them on the movies' intensity scale (counts, gain, contrast), so the
    likelihood and the priors balance whatever units the movies are in. ``|a|`` is at least 1e-3 of the data's
    scale, with the sign ``sign`` of :func:`contrast_sign`."""
    num = float(((fx * np.conj(ref)[:, None]).real * weight).sum())
    den = float((np.abs(ref) ** 2 * weight).sum()) * fx.shape[1]
    if den <= 0:
        return sign
    a = num / den
    floor = 1e-3 * float(np.sqrt((np.abs(fx) ** 2 * weight).sum() / den))
    return a if a * sign >= floor else sign * max(floor, 1e-30)


def _step(ctx: _Context, stage: str, mic: _Mic | None, done: int, total: int, traj: np.ndarray | None,
          dose: DoseModel | None, search: list, message: str,
          checkpoint: MotionCheckpoint | None = None) -> MotionStep:
    name = mic.name if mic else ""
    return MotionStep(stage=stage, micrograph=ctx.mic_list.index(name) if mic else -1, micrograph_name=name,
                      n_micrographs=len(ctx.mic_list), done=done, total=total,
                      positions=mic.positions.astype(float) if mic else np.zeros((0, 2)), trajectories=traj,
                      frame_sum=mic.frame_sum if (mic and traj is not None) else None,
                      bin_factor=mic.bin_factor if mic else 1,
                      dose_weights=None if dose is None else dose.weights(ctx.stack.box, ctx.stack.pixel_size),
                      search=tuple(search), timings=dict(ctx.timings), message=message, checkpoint=checkpoint)


def _search(ctx: _Context, prog: _Progress, keep: dict,
            resume: MotionCheckpoint | None) -> Generator[MotionStep, None, Hyper]:
    """The hyper-parameter search (see :mod:`.hyper`); returns the best hyper-parameters. ``resume``: go on with
    the search step it names (the search points so far are in ``prog.search``)."""
    p = ctx.p
    search = prog.search
    rays = rays_for(p.thoroughness)
    names = ctx.draw(p.target_particles, p.seed)
    if resume is not None:
        counts = [int((ctx.names == name).sum()) for name in names]
        trajs = (None if len(resume.ray_trajs) == 0
                 else np.split(np.asarray(resume.ray_trajs), np.cumsum(counts)[:-1]))
        prog.ray = (resume.ray, resume.ray_step, resume.ray_best, resume.ray_since, trajs)
    if prog.ray[0] >= len(rays):  # every ray was searched before the interruption
        names = []
    mics = []
    for name in names:
        mic = ctx.prepare(name)
        t0 = time.perf_counter()
        mic.fit_maps = cc_maps(mic.fx, mic.ref_own, ctx.fit_weight(mic, False, None), p.window_px)
        high = ((ctx.radius > ctx.cut) & (ctx.radius <= 0.5)) / mic.noise
        mic.cv_maps = cc_maps(mic.fx, mic.ref_opp, high[None], p.window_px)
        xx = (np.abs(mic.fx) ** 2 * high).sum(axis=(-2, -1))
        rr = (np.abs(mic.ref_opp) ** 2 * high).sum(axis=(-2, -1))
        mic.cv_norm = float(np.sqrt(xx * rr[:, None]).sum()) * 2.0
        ctx.tick("hyper_s", t0)
        mics.append(mic)
    n_steps = int(np.floor(np.log(p.max_prior_strength / p.r_start) / np.log(p.r_growth))) + 1
    total = len(rays) * n_steps
    done = len(search)
    first_ray, first_step, best0, since0, trajs0 = prog.ray
    for ray in range(first_ray, len(rays)):
        theta, z = rays[ray]
        best_ray, since, trajs = (best0, since0, trajs0) if ray == first_ray else (np.inf, 0, None)
        for step in range(first_step if ray == first_ray else 0, n_steps):
            t0 = time.perf_counter()
            hyper = Hyper(p.r_start * p.r_growth**step, theta, z)
            score, act, trajs = search_step(mics, hyper, p.window_px, UPSAMPLE, init=trajs)
            ctx.tick("hyper_s", t0)
            search.append(SearchPoint(ray, step, hyper, score, act))
            if p.keep_search_trajectories:
                keep[(ray, step)] = {m.name: (m.idx, t + m.rigid[None]) for m, t in zip(mics, trajs, strict=True)}
            done += 1
            mic = mics[0]
            if score < best_ray:
                best_ray, since = score, 0
            else:
                since += 1
            retire = act < p.retire_px or since >= p.patience or step + 1 == n_steps
            prog.ray = (ray + 1, 0, np.inf, 0, None) if retire else (ray, step + 1, best_ray, since, trajs)
            yield _step(ctx, "hyper", mic, done, total, None, None, search,
                        f"ray {ray} (theta {theta:.2f}, z {z:g} Å) step {step}: r {hyper.r:.3g}, score {score:.5f}, "
                        f"activity {act:.2f} px", prog.checkpoint(ctx, "hyper", done))
            if retire:
                break
    return min(search, key=lambda s: s.score).hyper


def _dose(ctx: _Context, hyper: Hyper, prog: _Progress,
          resume: MotionCheckpoint | None) -> Generator[MotionStep, None, DoseModel]:
    """Empirical dose weights from the FCC of micrographs drawn until ``dose_target_particles``; ``resume``: go on
    after the micrographs it counts, from its FCC sums."""
    p = ctx.p
    names = ctx.draw(p.dose_target_particles, p.seed + 1)
    acc = prog.acc = FCCAccumulator(ctx.n_frames, ctx.stack.box)
    model, start = None, 0
    if resume is not None and resume.done > 0:
        start = resume.done
        acc.num[...], acc.xx[...], acc.rr[...] = resume.fcc_num, resume.fcc_xx, resume.fcc_rr
        acc.count = resume.fcc_count
        model = fit_dose_model(acc.fcc(), ctx.stack.box, ctx.stack.pixel_size)
    for k, name in enumerate(names[start:], start):
        mic = ctx.prepare(name)
        traj = ctx.fit(mic, hyper, True, None)
        t0 = time.perf_counter()
        acc.add(align_frames(mic.fx, traj - mic.rigid[None]), mic.ref_opp)
        model = fit_dose_model(acc.fcc(), ctx.stack.box, ctx.stack.pixel_size)
        ctx.tick("dose_s", t0)
        yield _step(ctx, "dose", mic, k + 1, len(names), traj, model, [],
                    f"dose weights from {acc.count} particles", prog.checkpoint(ctx, "dose", k + 1))
    prog.acc = None
    if model is not None and ctx.movies.dose_per_frame is not None:
        model = replace(model, dose_per_frame=ctx.movies.dose_per_frame, pre_exposure=ctx.movies.pre_exposure)
    return model


def motion(stack: ParticleStack, movies: str | os.PathLike | MovieSet, half_a: np.ndarray, half_b: np.ndarray,
           mask: np.ndarray | None = None, params: MotionParams | None = None, hyper: Hyper | None = None,
           dose: DoseModel | None = None, out_stack: str | os.PathLike | None = None,
           resume: MotionCheckpoint | None = None, keep_partial: bool = False
           ) -> Generator[MotionStep, None, MotionResult]:
    """Reference-based motion correction of ``stack`` (see the module docstring); yields steps, returns the result.

    ``movies``: a folder or a STAR listing the movies, or the :class:`~cryolive.motion.movies.MovieSet` of
    :func:`~cryolive.motion.movies.open_movie_set` (already checked; ``params``' movie fields are then not used
    again); ``half_a/b``, ``mask``: ``[z, y, x]`` maps of the particles'
    box and pixel size; ``hyper``/``dose``: reuse a previous job's (skips that stage); ``out_stack``: the ``.mrcs``
    to write (else the images are returned in memory); ``resume``: the checkpoint of a step of an interrupted run
    with the same inputs, to go on from (the rest ends as the unbroken run would have; the search trajectories of
    ``keep_search_trajectories`` only hold the steps after it); ``keep_partial``: write ``out_stack`` through
    ``.<name>.partial`` beside it and keep that file when the run is interrupted, for a resumed run to go on with.
    """
    p = params or MotionParams()
    if p.final_stage not in STAGES:
        raise ValueError(f"final_stage must be one of {STAGES}, not {p.final_stage!r}")
    if p.crop_box is not None and not (2 <= p.crop_box <= stack.box):
        raise ValueError(f"crop_box must lie in 2 .. {stack.box} (the particle box), not {p.crop_box}")
    override = check_overrides(p.override_r, p.override_theta, p.override_z_A)
    hyper = override or hyper
    if not isinstance(movies, MovieSet):
        movies = open_movie_set(stack, movies, p.skip_wrong_frame_count, p.gain, p.gain_rot, p.gain_flip,
                                p.dose_per_frame)
    ctx = _Context(stack, movies, References(half_a, half_b, mask), p)
    if dose is not None and len(dose.bfactors) != ctx.n_frames:
        raise InputError(f"{movies.source}: the movies have {ctx.n_frames} frames but the dose weights given were "
                         f"fitted to {len(dose.bfactors)} frames; estimate new dose weights for these movies")
    search: list[SearchPoint] = []
    keep: dict = {}
    t_start = time.perf_counter()
    if resume is not None:
        if (resume.n_micrographs, resume.n_frames) != (len(ctx.mic_list), ctx.n_frames):
            raise InputError(f"{movies.source}: the checkpoint was made for {resume.n_micrographs} micrographs of "
                             f"{resume.n_frames} frames, the movies are {len(ctx.mic_list)} of {ctx.n_frames}")
        if resume.stage not in STAGES:
            raise InputError(f"checkpoint of an unknown stage {resume.stage!r}")
        search = resume.search_points()
        hyper = resume.hyper_value() or hyper
        dose = resume.dose_model() or dose
    prog = _Progress(search, hyper, dose)

    def result(particles: ParticleStack | None = None, images: np.ndarray | None = None,
               trajs: dict | None = None) -> MotionResult:
        ctx.timings["total_s"] = time.perf_counter() - t_start
        return MotionResult(hyper, dose, tuple(search), trajs or {}, particles, images, ctx.kept, ctx.skipped,
                            ctx.n_frames, dict(ctx.timings), keep)

    def at(stage: str) -> MotionCheckpoint | None:
        return resume if resume is not None and resume.stage == stage else None

    if hyper is None:
        hyper = yield from _search(ctx, prog, keep, at("hyper"))
    prog.hyper = hyper
    if p.final_stage == "hyper":
        return result()
    if dose is None:
        dose = yield from _dose(ctx, hyper, prog, at("dose"))
    prog.dose = dose
    if p.final_stage == "dose":
        return result()
    return (yield from _final(ctx, hyper, dose, out_stack, result, prog, at("final"), keep_partial))


def partial_stack(out_stack: str | os.PathLike) -> Path:
    """The partial output stack that ``keep_partial`` keeps beside ``out_stack`` for a resumed run."""
    out = Path(out_stack)
    return out.with_name(f".{out.name}.partial")


def _final(ctx: _Context, hyper: Hyper, dose: DoseModel, out_stack: str | os.PathLike | None,
           result: object, prog: _Progress, resume: MotionCheckpoint | None,
           keep_partial: bool) -> Generator[MotionStep, None, MotionResult]:
    """Correct every micrograph's particles and write them (input order, skipped movies left out)."""
    p, stack = ctx.p, ctx.stack
    m = p.crop_box or stack.box
    apix_out = stack.pixel_size * stack.box / m
    pos_in_out = np.full(len(stack), -1)
    pos_in_out[ctx.kept] = np.arange(len(ctx.kept))
    weights = weight_image(dose.weights(stack.box, stack.pixel_size), stack.box)
    n_mics = len(ctx.mic_list)
    every = max(1, n_mics // 100)  # checkpoints: the trajectories done are written each time
    start = 0 if resume is None else resume.done
    trajs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if start:  # the trajectories of the micrographs done, in their order
        rows = 0
        for name in ctx.mic_list[:start]:
            idx = np.nonzero(ctx.names == name)[0]
            trajs[name] = (idx, np.asarray(resume.final_trajs[rows:rows + len(idx)], float))
            rows += len(idx)
        prog.final = [t for _, t in trajs.values()]
    tmp = partial_stack(out_stack) if (keep_partial and out_stack is not None) else None
    writer, redo = None, start > 0
    if out_stack is not None and start and tmp is not None:
        done_rows = np.zeros(len(ctx.kept), bool)
        for idx, _ in trajs.values():
            done_rows[pos_in_out[idx]] = True
        try:
            writer = StackWriter.reopen(out_stack, tmp, len(ctx.kept), m, apix_out, done_rows, float16=p.float16)
            redo = False
        except ValueError:  # no usable partial stack (e.g. removed): the images done are computed again
            writer = None
    if out_stack is not None and writer is None:
        writer = StackWriter(out_stack, len(ctx.kept), m, apix_out, float16=p.float16, tmp=tmp)
    images = None if writer is not None else np.zeros((len(ctx.kept), m, m), np.float32)
    try:
        for k, name in enumerate(ctx.mic_list):
            if k < start and not redo:
                continue
            mic = ctx.prepare(name)
            traj = trajs[name][1] if k < start else ctx.fit(mic, hyper, p.use_all_fcs, dose)
            t0 = time.perf_counter()
            imgs = corrected_particles(mic.fx, traj - mic.rigid[None], weights, p.crop_box)
            imgs *= np.float32(np.sign(mic.amplitude))  # the references' contrast (movies may be inverted)
            rows = pos_in_out[mic.idx]
            if writer is not None:
                writer[rows] = imgs
            else:
                images[rows] = imgs
            ctx.tick("final_write_s", t0)
            if k < start:  # recomputed from the checkpoint's trajectories: no step
                continue
            trajs[name] = (mic.idx, traj)
            prog.final.append(traj)
            ckpt = None
            if (k + 1) % every == 0 or k + 1 == n_mics:
                if writer is not None:
                    writer.flush()  # the images are in the file before a checkpoint says so
                ckpt = prog.checkpoint(ctx, "final", k + 1)
            yield _step(ctx, "final", mic, k + 1, n_mics, traj, dose, [], f"corrected {len(mic.idx)} particles",
                        ckpt)
    except BaseException:
        if writer is not None:
            writer.keep() if tmp is not None else writer.abort()
        raise
    particles = None
    if writer is not None:
        writer.close()
        sub = stack.subset(ctx.kept)
        table = sub.table.copy()
        table["rlnCoordinateX"] = ctx.xy[ctx.kept, 0].astype(float)
        table["rlnCoordinateY"] = ctx.xy[ctx.kept, 1].astype(float)
        table = table.drop(columns=[c for c in ("rlnImageName",) if c in table.columns])
        out = Path(out_stack)
        particles = sub.replace(pixel_size=apix_out, box=m, stack_paths=[out], stack_names=[out.name],
                                stack_file_id=np.zeros(len(ctx.kept), int), stack_index=np.arange(len(ctx.kept)),
                                shifts=ctx.origins[ctx.kept], table=table, optics=_optics(sub, apix_out, m))
    return result(particles, images, trajs)


def _optics(stack: ParticleStack, apix: float, box: int) -> object:
    """The optics table with the new pixel size and box (None when there is none)."""
    if stack.optics is None:
        return None
    opt = stack.optics.copy()
    if "rlnImagePixelSize" in opt.columns:
        opt["rlnImagePixelSize"] = apix
    if "rlnImageSize" in opt.columns:
        opt["rlnImageSize"] = box
    return opt
