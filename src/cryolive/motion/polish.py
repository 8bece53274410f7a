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
trajectories are always in particle pixels. With ``recenter`` the coordinates first move by ``-round(origin)``
and the origins keep the remainder.
Every step yields a frozen :class:`MotionStep`; the generator returns a :class:`MotionResult`.
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
from cryolive.motion.trajectories import UPSAMPLE, Hyper, cc_maps, fit_trajectories, global_track
from cryolive.params import param

STAGES = ("hyper", "dose", "final")


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
        patches, total = movie_patches(lambda f: apply_gain(movie.frame(f), gain), self.n_frames,
                                       self.movie_xy[idx], self.movies.patch)
        t0 = self.tick("read_s", t0)
        ref_own = self.refs.project(self.stack, idx, self.origins[idx])
        ref_opp = self.refs.project(self.stack, idx, self.origins[idx], opposite=True)
        t0 = self.tick("references_s", t0)
        fx = patch_transforms(patches)
        if self.movies.patch != self.stack.box:  # movie pixels finer than the particles': crop to the particle box
            fx = fourier_crop(fx, self.movies.patch, self.stack.box)
        noise = noise_power(fx)
        t0 = self.tick("patches_s", t0)
        band = (self.radius <= self.cut) / noise
        wg = self.p.global_window_px
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
        return _Mic(name, idx, pos, pos * self.movies.pixel.movie_A, fx, ref_own, ref_opp, noise, rigid,
                    binned.astype(np.float32), b, amplitude=amp)

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
          dose: DoseModel | None, search: list, message: str) -> MotionStep:
    name = mic.name if mic else ""
    return MotionStep(stage=stage, micrograph=ctx.mic_list.index(name) if mic else -1, micrograph_name=name,
                      n_micrographs=len(ctx.mic_list), done=done, total=total,
                      positions=mic.positions.astype(float) if mic else np.zeros((0, 2)), trajectories=traj,
                      frame_sum=mic.frame_sum if (mic and traj is not None) else None,
                      bin_factor=mic.bin_factor if mic else 1,
                      dose_weights=None if dose is None else dose.weights(ctx.stack.box, ctx.stack.pixel_size),
                      search=tuple(search), timings=dict(ctx.timings), message=message)


def _search(ctx: _Context, search: list, keep: dict) -> Generator[MotionStep, None, Hyper]:
    """The hyper-parameter search (see :mod:`.hyper`); returns the best hyper-parameters."""
    p = ctx.p
    names = ctx.draw(p.target_particles, p.seed)
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
    rays = rays_for(p.thoroughness)
    n_steps = int(np.floor(np.log(p.max_prior_strength / p.r_start) / np.log(p.r_growth))) + 1
    total = len(rays) * n_steps
    done = 0
    for ray, (theta, z) in enumerate(rays):
        best_ray, since, trajs = np.inf, 0, None
        for step in range(n_steps):
            t0 = time.perf_counter()
            hyper = Hyper(p.r_start * p.r_growth**step, theta, z)
            score, act, trajs = search_step(mics, hyper, p.window_px, UPSAMPLE, init=trajs)
            ctx.tick("hyper_s", t0)
            search.append(SearchPoint(ray, step, hyper, score, act))
            if p.keep_search_trajectories:
                keep[(ray, step)] = {m.name: (m.idx, t + m.rigid[None]) for m, t in zip(mics, trajs, strict=True)}
            done += 1
            mic = mics[0]
            yield _step(ctx, "hyper", mic, done, total, None, None, search,
                        f"ray {ray} (theta {theta:.2f}, z {z:g} Å) step {step}: r {hyper.r:.3g}, score {score:.5f}, "
                        f"activity {act:.2f} px")
            if score < best_ray:
                best_ray, since = score, 0
            else:
                since += 1
            if act < p.retire_px or since >= p.patience:
                break
    return min(search, key=lambda s: s.score).hyper


def _dose(ctx: _Context, hyper: Hyper) -> Generator[MotionStep, None, DoseModel]:
    """Empirical dose weights from the FCC of micrographs drawn until ``dose_target_particles``."""
    p = ctx.p
    names = ctx.draw(p.dose_target_particles, p.seed + 1)
    acc = FCCAccumulator(ctx.n_frames, ctx.stack.box)
    model = None
    for k, name in enumerate(names):
        mic = ctx.prepare(name)
        traj = ctx.fit(mic, hyper, True, None)
        t0 = time.perf_counter()
        acc.add(align_frames(mic.fx, traj - mic.rigid[None]), mic.ref_opp)
        model = fit_dose_model(acc.fcc(), ctx.stack.box, ctx.stack.pixel_size)
        ctx.tick("dose_s", t0)
        yield _step(ctx, "dose", mic, k + 1, len(names), traj, model, [],
                    f"dose weights from {acc.count} particles")
    if model is not None and ctx.movies.dose_per_frame is not None:
        model = replace(model, dose_per_frame=ctx.movies.dose_per_frame, pre_exposure=ctx.movies.pre_exposure)
    return model


def motion(stack: ParticleStack, movies: str | os.PathLike | MovieSet, half_a: np.ndarray, half_b: np.ndarray,
           mask: np.ndarray | None = None, params: MotionParams | None = None, hyper: Hyper | None = None,
           dose: DoseModel | None = None, out_stack: str | os.PathLike | None = None
           ) -> Generator[MotionStep, None, MotionResult]:
    """Reference-based motion correction of ``stack`` (see the module docstring); yields steps, returns the result.

    ``movies``: a folder or a STAR listing the movies, or the :class:`~cryolive.motion.movies.MovieSet` of
    :func:`~cryolive.motion.movies.open_movie_set` (already checked; ``params``' movie fields are then not used
    again); ``half_a/b``, ``mask``: ``[z, y, x]`` maps of the particles'
    box and pixel size; ``hyper``/``dose``: reuse a previous job's (skips that stage); ``out_stack``: the ``.mrcs``
    to write (else the images are returned in memory).
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

    def result(particles: ParticleStack | None = None, images: np.ndarray | None = None,
               trajs: dict | None = None) -> MotionResult:
        ctx.timings["total_s"] = time.perf_counter() - t_start
        return MotionResult(hyper, dose, tuple(search), trajs or {}, particles, images, ctx.kept, ctx.skipped,
                            ctx.n_frames, dict(ctx.timings), keep)

    if hyper is None:
        hyper = yield from _search(ctx, search, keep)
    if p.final_stage == "hyper":
        return result()
    if dose is None:
        dose = yield from _dose(ctx, hyper)
    if p.final_stage == "dose":
        return result()
    return (yield from _final(ctx, hyper, dose, out_stack, result))


def _final(ctx: _Context, hyper: Hyper, dose: DoseModel, out_stack: str | os.PathLike | None,
           result: object) -> Generator[MotionStep, None, MotionResult]:
    """Correct every micrograph's particles and write them (input order, skipped movies left out)."""
    p, stack = ctx.p, ctx.stack
    m = p.crop_box or stack.box
    apix_out = stack.pixel_size * stack.box / m
    pos_in_out = np.full(len(stack), -1)
    pos_in_out[ctx.kept] = np.arange(len(ctx.kept))
    weights = weight_image(dose.weights(stack.box, stack.pixel_size), stack.box)
    writer = (StackWriter(out_stack, len(ctx.kept), m, apix_out, float16=p.float16) if out_stack is not None
              else None)
    images = None if writer is not None else np.zeros((len(ctx.kept), m, m), np.float32)
    trajs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for k, name in enumerate(ctx.mic_list):
            mic = ctx.prepare(name)
            traj = ctx.fit(mic, hyper, p.use_all_fcs, dose)
            t0 = time.perf_counter()
            imgs = corrected_particles(mic.fx, traj - mic.rigid[None], weights, p.crop_box)
            imgs *= np.float32(np.sign(mic.amplitude))  # the references' contrast (movies may be inverted)
            rows = pos_in_out[mic.idx]
            if writer is not None:
                writer[rows] = imgs
            else:
                images[rows] = imgs
            ctx.tick("final_write_s", t0)
            trajs[name] = (mic.idx, traj)
            yield _step(ctx, "final", mic, k + 1, len(ctx.mic_list), traj, dose, [],
                        f"corrected {len(mic.idx)} particles")
    except BaseException:
        if writer is not None:
            writer.abort()
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
