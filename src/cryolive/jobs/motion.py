"""Reference-based motion correction as a job: :func:`cryolive.motion.motion` plus a job folder.

``motion_job`` first checks the inputs and every movie (:func:`cryolive.motion.movies.open_movie_set`: formats,
frame counts, gain, pixel sizes, pick coordinates), so bad input is refused with one line naming the file before
any folder is made; it then yields the core generator's :class:`~cryolive.motion.MotionStep` objects and writes
``<out>/job_motion_<nnn>/``:

    hyperparameters.json    r (1/px^2), theta (rad), z_A (Å) (+ lambda_sp, lambda_acc); reusable with --hyper
    hyper_search.csv, .png  cross-validation score and activity per ray and step (when searched)
    dose_weights.npz, .png  per-frame B-factors (Å^2), scales and weights (frames x shells); reusable
    trajectories.npz        particle_index (N,), trajectories (N, F, 2) px (x, y), displacement of each particle
                            in each frame (NaN for particles of skipped movies), micrograph names
    particles.mrcs          motion-corrected dose-weighted particles (float16 with float16=True)
    particles.star          the input particles pointing at particles.mrcs (poses, CTFs kept; pixel size and box
                            changed by a Fourier crop; coordinates and origins changed by re-centring)
    checkpoint.npz          what the next unit of work starts from (after every search step and dose micrograph,
                            and every micrograph, or every n/100-th, of the final stage; removed when the job
                            finishes), with .particles.mrcs.partial, the corrected particles written so far:
                            ``cryolive motion --continue JOBDIR`` goes on from them after a kill or a stop
    params.json, log.txt, status.json  (params.json also records the movies' frame count, pixel sizes, patch
                            size and dose per frame; log.txt the movie format and gain)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np

from cryolive.backend import backend_name
from cryolive.io import InputError, read_map, read_particles, write_star
from cryolive.io._atomic import atomic_write_text
from cryolive.io.preflight import check_output_parent
from cryolive.jobs.jobdir import (
    CHECKPOINT,
    JobFolder,
    continuable_params,
    load_checkpoint,
    run_in_job,
    save_checkpoint,
)
from cryolive.jobs.plots import save_figure
from cryolive.motion import MotionParams, MotionResult, MotionStep, motion
from cryolive.motion.dose import DoseModel, load_dose
from cryolive.motion.hyper import Hyper, check_overrides, load_hyper, save_hyper
from cryolive.motion.movies import MovieSet, open_movie_set
from cryolive.motion.polish import MotionCheckpoint, partial_stack
from cryolive.params import check_params


def _read_like(path: str, box: int, apix: float, particles: str) -> np.ndarray:
    vol, vapix = read_map(path)
    if vol.shape[0] != box:
        raise InputError(f"{path}: box {vol.shape[0]} differs from the particles' box {box} ({particles})")
    if abs(vapix - apix) > 0.01 * apix:
        raise InputError(f"{path}: voxel size {vapix:.4f} Å differs from the particles' {apix:.4f} Å ({particles})")
    return vol


@dataclasses.dataclass
class _Inputs:
    stack: object
    half_a: np.ndarray
    half_b: np.ndarray
    mask: np.ndarray | None
    hyper: Hyper | None
    dose: DoseModel | None
    movie_set: MovieSet


def _read_inputs(particles_path: str, movies: str, half_a_path: str, half_b_path: str, mask_path: str | None,
                 p: MotionParams, hyper_path: str | None, dose_path: str | None) -> _Inputs:
    """Read and check every input and movie (InputError naming the file before any folder is made)."""
    check_params(p)
    check_overrides(p.override_r, p.override_theta, p.override_z_A)
    stack = read_particles(particles_path)
    if p.crop_box is not None and p.crop_box > stack.box:
        raise InputError(f"--crop-box must be at most {stack.box} px, the particles' box (got {p.crop_box})")
    half_a = _read_like(half_a_path, stack.box, stack.pixel_size, particles_path)
    half_b = _read_like(half_b_path, stack.box, stack.pixel_size, particles_path)
    mask = _read_like(mask_path, stack.box, stack.pixel_size, particles_path) if mask_path else None
    hyper = load_hyper(hyper_path) if hyper_path else None
    dose = load_dose(dose_path) if dose_path else None
    if dose is not None and p.final_stage != "hyper":
        _check_dose(dose, dose_path)
    movie_set = open_movie_set(stack, movies, p.skip_wrong_frame_count, p.gain, p.gain_rot, p.gain_flip,
                               p.dose_per_frame)  # every refusal before the job folder exists
    if dose is not None and p.final_stage != "hyper" and len(dose.bfactors) != movie_set.n_frames:
        raise InputError(f"{dose_path}: dose weights fitted to {len(dose.bfactors)} frames, but the movies have "
                         f"{movie_set.n_frames}; estimate new dose weights for these movies")
    return _Inputs(stack, half_a, half_b, mask, hyper, dose, movie_set)


def motion_job(particles_path: str, movies: str, half_a_path: str, half_b_path: str, mask_path: str | None = None,
               out: str = "jobs", params: MotionParams | None = None, hyper_path: str | None = None,
               dose_path: str | None = None) -> Generator[MotionStep, None, MotionResult]:
    """Run motion correction into a new job folder, yielding each step; returns the result."""
    p = params or MotionParams()
    t0 = time.perf_counter()
    check_params(p)
    check_overrides(p.override_r, p.override_theta, p.override_z_A)
    check_output_parent(out)
    inp = _read_inputs(particles_path, movies, half_a_path, half_b_path, mask_path, p, hyper_path, dose_path)
    stack, movie_set = inp.stack, inp.movie_set
    job = JobFolder.create(out, "motion")
    job.write_params({"particles": particles_path, "movies": movies, "half_a": half_a_path, "half_b": half_b_path,
                      "mask": mask_path, "hyper": hyper_path, "dose_weights": dose_path, **dataclasses.asdict(p),
                      "backend": backend_name(), "n_particles": len(stack), "pixel_size_A": stack.pixel_size,
                      "box": stack.box, **_movie_params(movie_set)})
    job.set_status("running", stage="start")
    job.log(f"motion correction: {len(stack)} particles, box {stack.box}, {stack.pixel_size:.4g} Å/px; movies "
            f"{movies}; hyper-parameters {'from ' + hyper_path if hyper_path else 'searched'}; dose weights "
            f"{'from ' + dose_path if dose_path else 'estimated'}")
    job.log(_describe_movies(movie_set, p))
    return (yield from _run(job, inp, p, t0))


def continuable_motion(job_dir: str | os.PathLike) -> dict:
    """``params.json`` of the motion job in ``job_dir`` if it can go on from its checkpoint; otherwise an
    InputError of one line naming the folder (not a motion job, still running, finished, no checkpoint)."""
    return continuable_params(job_dir, "motion correction", ("particles", "movies", "half_a", "half_b"),
                              "its outputs are complete (start a new motion job to run it again)")


def continue_motion_job(job_dir: str) -> Generator[MotionStep, None, MotionResult]:
    """Go on with a motion correction that was killed or stopped, in its own folder, from the checkpoint its last
    completed unit of work wrote (``checkpoint.npz``; a search step, a dose micrograph or a final micrograph):
    the same inputs and parameters (``params.json``); the run ends as it would have without the interruption.
    Refused in one line naming the folder when it is not a motion job, still running, finished, or has no
    checkpoint."""
    folder = Path(job_dir)
    prm = continuable_motion(folder)
    p = MotionParams(**{f.name: prm[f.name] for f in dataclasses.fields(MotionParams) if f.name in prm})
    ckpt = load_checkpoint(folder / CHECKPOINT, MotionCheckpoint)
    t0 = time.perf_counter()
    inp = _read_inputs(prm["particles"], prm["movies"], prm["half_a"], prm["half_b"], prm.get("mask"), p,
                       prm.get("hyper"), prm.get("dose_weights"))
    job = JobFolder(folder)
    job.log(f"continuing after {ckpt.stage} {ckpt.done} (checkpoint.npz)")
    job.set_status("running", stage=ckpt.stage, done=ckpt.done)
    return (yield from _run(job, inp, p, t0, resume=ckpt))


def _run(job: JobFolder, inp: _Inputs, p: MotionParams, t0: float,
         resume: MotionCheckpoint | None = None) -> Generator[MotionStep, None, MotionResult]:
    """Drive :func:`motion` in ``job``: log, status and checkpoint per step; the outputs at the end."""
    out_stack = job.file("particles.mrcs") if p.final_stage == "final" else None
    gen = motion(inp.stack, inp.movie_set, inp.half_a, inp.half_b, inp.mask, p, hyper=inp.hyper, dose=inp.dose,
                 out_stack=out_stack, resume=resume, keep_partial=True)
    stage = {"last": ""}

    def on_step(step: MotionStep) -> MotionStep:
        if step.stage != stage["last"]:
            job.log(f"stage {step.stage}")
            stage["last"] = step.stage
        job.log(f"{step.stage} {step.done}/{step.total} {step.micrograph_name}: {step.message}")
        if step.checkpoint is not None:
            save_checkpoint(job.file(CHECKPOINT), step.checkpoint)
        job.set_status("running", stage=step.stage, done=step.done, total=step.total)
        return step

    result: MotionResult = yield from run_in_job(job, gen, on_step, lambda: {"stage": stage["last"]},
                                                 finish=lambda r: _write_outputs(job, r, len(inp.stack)))
    job.file(CHECKPOINT).unlink(missing_ok=True)
    if out_stack is not None:
        partial_stack(out_stack).unlink(missing_ok=True)
    job.log(f"finished in {time.perf_counter() - t0:.1f} s; timings " +
            ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    job.set_status("finished", stage=p.final_stage, timings=result.timings)
    job.close()
    return result


def _movie_params(ms: MovieSet) -> dict:
    """What the movie checks found, for params.json."""
    return {"n_frames": ms.n_frames, "movie_pixel_size_A": ms.pixel.movie_A, "movie_pixel_size_from":
            ms.pixel.movie_label, "coordinate_pixel_size_A": ms.pixel.coords_A, "patch_px": ms.patch,
            "dose_per_frame_e_A2": ms.dose_per_frame, "pre_exposure_e_A2": ms.pre_exposure,
            "dose_from": ms.dose_source, "skipped_movies": ms.skipped}


def _describe_movies(ms: MovieSet, p: MotionParams) -> str:
    """One log line: movie count, format, frames, size, pixel sizes, gain and dose."""
    info = next(iter(ms.infos.values()))
    gain = f"gain {p.gain} (rot {p.gain_rot}, flip {p.gain_flip})" if p.gain else "no gain reference"
    dose = (f"{ms.dose_per_frame:g} e/Å² per frame ({ms.dose_source})" if ms.dose_per_frame is not None
            else "dose per frame unknown")
    return (f"movies: {len(ms.paths)} {info.kind.upper()} ({info.dtype}), {ms.n_frames} frames of {info.nx} x "
            f"{info.ny} px at {ms.pixel.movie_A:.4g} Å/px ({ms.pixel.movie_label}); coordinates at "
            f"{ms.pixel.coords_A:.4g} Å/px; patches of {ms.patch} px; {gain}; {dose}")


def _check_dose(dose: DoseModel, path: str) -> None:
    if not np.all(np.isfinite(dose.bfactors)) or len(dose.bfactors) < 1:
        raise InputError(f"{path}: the dose model holds no finite B-factors")


def _write_outputs(job: JobFolder, result: MotionResult, n_particles: int) -> None:
    if result.skipped_movies:
        job.log(f"skipped {len(result.skipped_movies)} movie(s) with a frame count other than {result.n_frames}: "
                + ", ".join(result.skipped_movies[:10]))
    if result.hyper is not None:
        save_hyper(job.file("hyperparameters.json"), result.hyper, {"n_frames": result.n_frames})
    if result.search:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["ray", "step", "r", "theta", "z_A", "score", "activity_px"])
        for s in result.search:
            w.writerow([s.ray, s.step, f"{s.hyper.r:.6g}", f"{s.hyper.theta:.4f}", f"{s.hyper.z_A:g}",
                        f"{s.score:.6g}", f"{s.activity:.4f}"])
        atomic_write_text(job.file("hyper_search.csv"), buf.getvalue())
        plot_search(result.search, job.file("hyper_search.png"))
    if result.dose is not None:
        result.dose.save(job.file("dose_weights.npz"))
        if (slope := result.dose.bfactor_per_dose()) is not None:
            job.log(f"empirical B-factors rise by {slope:.3g} Å² per e/Å² "
                    f"({result.dose.dose_per_frame:g} e/Å² per frame)")
        plot_dose(result.dose.weights(), job.file("dose_weights.png"))
    if result.trajectories:
        traj = np.full((n_particles, result.n_frames, 2), np.nan)
        names = np.full(n_particles, "", dtype=object)
        for name, (idx, t) in result.trajectories.items():
            traj[idx] = t
            names[idx] = name
        with open(job.file(".trajectories.tmp.npz"), "wb") as fh:
            np.savez(fh, particle_index=np.arange(n_particles), trajectories=traj, micrograph=names.astype(str))
        os.replace(job.file(".trajectories.tmp.npz"), job.file("trajectories.npz"))
    if result.particles is not None:
        write_star(result.particles, job.file("particles.star"))
        job.log(f"wrote {len(result.particles)} corrected particles (box {result.particles.box}, "
                f"{result.particles.pixel_size:.4g} Å/px) to particles.mrcs and particles.star")


def plot_search(search: tuple, path: str | os.PathLike) -> None:
    """Cross-validation score against total prior strength, one line per ray (lower is better)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for ray in sorted({s.ray for s in search}):
        pts = [s for s in search if s.ray == ray]
        ax.semilogx([s.hyper.r for s in pts], [s.score for s in pts], "o-",
                    label=f"θ {pts[0].hyper.theta:.2f}, z {pts[0].hyper.z_A:g} Å")
    best = min(search, key=lambda s: s.score)
    ax.plot([best.hyper.r], [best.score], "k*", ms=12)
    ax.set_xlabel("total prior strength r (1/px²)")
    ax.set_ylabel("cross-validation score (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_dose(weights: np.ndarray, path: str | os.PathLike) -> None:
    """The dose weights (frames x shells) as an image with a colour bar."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(weights, aspect="auto", origin="lower", cmap="magma")
    fig.colorbar(im, ax=ax, label="weight")
    ax.set_xlabel("frequency shell")
    ax.set_ylabel("frame")
    ax.set_title("empirical dose weights")
    fig.tight_layout()
    save_figure(fig, path)
