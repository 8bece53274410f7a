"""Homogeneous refinement as a job: the :func:`cryolive.refinement.refine.refine` generator plus a job folder.

``refine_job`` yields the same objects as the core generator (an :class:`SGDStep` per ab-initio step when asked
for, then a :class:`RefineIteration` per iteration; the CLI, tests and napari consume one stream) and writes
``<out>/job_refine_<nnn>/``:

    particles.star          poses (RELION Euler angles), origins in Å, half sets, per-particle scale folded into
                            rlnCtfScalefactor (RELION applies it with the CTF); RELION reads it
    map.mrc                 full map filtered by the GSFSC weight sqrt(2 FSC / (1 + FSC))
    map_sharp.mrc           Guinier B-factor sharpened, FSC-weighted, low-passed at the resolution, masked
    half_A.mrc, half_B.mrc  the independent half maps
    mask_refine.mrc         the mask used in the last iteration (static, or dynamic from the half maps)
    mask_fsc.mrc            the mask the FSC was computed with (phase-randomisation corrected)
    fsc.csv, fsc.png        FSC curves of the last iteration
    iterations.csv          resolution, timings and pose statistics per iteration
    iter_<nnn>_map.mrc      per-iteration maps (with ``save_iterations``)
    ab_initio.mrc           the map the ab-initio steps ended with, the refinement's start (with ``sgd_steps``)
    checkpoint.npz          the state after the last completed iteration (removed when the job finishes):
                            ``cryolive refine --continue JOBDIR`` goes on from it after a kill
    input_reference.mrc     the reference, when given as a map in memory (a napari layer, a MapInput); likewise
    input_mask.mrc          the mask: the job's own copies, named in params.json (``--continue`` reads them)
    params.json, log.txt, status.json
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

from cryolive.backend import backend_name, device_label, to_numpy
from cryolive.io import (
    MapSource,
    ParticleStack,
    read_matching_map,
    read_matching_mask,
    read_particles,
    write_map,
    write_star,
)
from cryolive.io.particles import check_half_sets, check_image_statistics
from cryolive.io.preflight import check_memory, check_output_parent
from cryolive.jobs import jobdir
from cryolive.jobs.plots import plot_fsc
from cryolive.reconstruction.distributed import describe_client, optional_dask_client
from cryolive.reconstruction.halves import describe_half_sets, half_sets
from cryolive.reconstruction.solvent import solvent_fsc
from cryolive.refinement.refine import (
    RefineCheckpoint,
    RefineIteration,
    RefineParams,
    RefineResult,
    RefineStep,
    check_inputs,
    refine,
)
from cryolive.refinement.sgd import SGDStep
from cryolive.resolution.sharpen import choose_bfactor, sharpen


def check_reference(particles_path: str, reference_path: MapSource, box: int, pixel_size: float) -> np.ndarray:
    """Read the reference (a file or a :class:`~cryolive.io.MapInput`) and check it against the particles (box,
    pixel size within 1 %, not zero or constant)."""
    return read_matching_map(reference_path, box, pixel_size, particles_path, "reference map")


def _read_inputs(particles_path: str, reference_path: MapSource, mask_path: MapSource | None,
                 p: RefineParams) -> tuple[ParticleStack, np.ndarray, np.ndarray | None, list[str]]:
    """The particles (statistics checked), the reference and the optional mask brought to them, and the notes
    reading them produced (e.g. a resampled reference); the parameters checked against the particles. Raises
    before any job folder exists."""
    stack = read_particles(particles_path)
    check_image_statistics(stack)
    check_half_sets(stack)
    with jobdir.captured_notes() as notes:
        ref = check_reference(particles_path, reference_path, stack.box, stack.pixel_size)
        mask = None
        if mask_path is not None and mask_path != "":
            mask = read_matching_mask(mask_path, stack.box, stack.pixel_size, particles_path, "mask")
    check_inputs(stack, p)
    return stack, ref, mask, notes


def refine_job(particles_path: str, reference_path: MapSource, out: str = "jobs", params: RefineParams | None = None,
               mask_path: MapSource | None = None, save_iterations: bool = False,
               on_client: Callable[[Any], None] | None = None) -> Generator[RefineStep, None, RefineResult]:
    """Run homogeneous refinement into a new job folder, yielding each ab-initio step and iteration; returns the
    result. The reference and the mask are MRC files or maps in memory (:class:`~cryolive.io.MapInput`, checked
    as a file is; the job writes them into its folder as ``input_reference.mrc`` / ``input_mask.mrc``).

    With ``params.workers`` / ``params.scheduler`` the iterations' E + M steps run on a Dask cluster opened before
    the job folder (a scheduler that cannot be reached is refused first) and closed when the job ends or is
    stopped (the generator closed); the log names the workers and the dashboard, and ``on_client(client)`` is
    called once connected (the CLI prints the dashboard)."""
    p = params or RefineParams()
    t0 = time.perf_counter()
    stack, ref, mask, notes = _read_inputs(particles_path, reference_path, mask_path, p)
    check_output_parent(out)
    # two half-map accumulators (Hermitian half grids, padded 2x: 48 bytes per voxel of the box each), two
    # projectors (32 each) and the finalize and FSC temporaries: 4.8 GB measured at box 256, 288 bytes per voxel
    check_memory(350.0 * stack.box**3, f"refinement at a box of {stack.box} px", "downsample the particles")
    with optional_dask_client(p.workers, p.scheduler) as client:
        job = jobdir.JobFolder.create(out, "refine")
        maps = jobdir.write_input_maps(job, {"reference": reference_path, "mask": mask_path or None})
        job.write_params({"particles": particles_path, "reference": maps["reference"], "mask": maps["mask"],
                          **dataclasses.asdict(p), "backend": backend_name(), "n_particles": len(stack),
                          "pixel_size_A": stack.pixel_size, "box": stack.box})
        job.set_status("running", iteration=0)
        job.log(f"homogeneous refinement on {device_label()}: {len(stack)} particles, box {stack.box}, "
                f"{stack.pixel_size:.4g} Å/px, symmetry {p.symmetry}, reference {reference_path} "
                f"low-passed to {p.initial_lowpass_A} Å")
        _log_client(job, client, on_client)
        job.log(describe_half_sets(stack, half_sets(stack, p.seed)))  # the split refine() makes (same seed)
        for note in notes:
            job.log(f"NOTE: {note}")
        if p.use_input_poses:
            job.log(f"starting from the particles' own poses ({particles_path}): local searches from iteration 1")
        if p.relax_symmetry:
            job.log(f"symmetry {p.relax_symmetry} relaxed: local searches try every {p.relax_symmetry} mate of each "
                    f"pose and keep the best; the map is reconstructed in {p.symmetry}")
        if p.sgd_steps > 0:
            job.log(f"first {p.sgd_steps} ab-initio minibatch steps of {p.sgd_batch_size} particles from the "
                    f"reference (to {p.sgd_resolution_A} Å): the map may end turned or mirrored (check the hand)")
        return (yield from _run(job, stack, ref, mask, p, t0, save_iterations, client=client))


def continue_refine_job(job_dir: str, save_iterations: bool = False, workers: int | None = None,
                        scheduler: str | None = None, on_client: Callable[[Any], None] | None = None,
                        ) -> Generator[RefineStep, None, RefineResult]:
    """Go on with a refinement that was killed or stopped, in its own folder, from the checkpoint its last
    completed iteration wrote (``checkpoint.npz``): the same particles, reference, mask and parameters
    (``params.json``); the run continues exactly as it would have without the interruption. Refused, naming the
    folder, when it is still running, finished, or has no checkpoint.

    ``workers`` / ``scheduler``: run on this Dask cluster instead of the one ``params.json`` names (either given
    replaces both; the result does not depend on it)."""
    folder = Path(job_dir)
    prm = _continuable(folder)
    p = RefineParams(**{f.name: prm[f.name] for f in dataclasses.fields(RefineParams) if f.name in prm})
    if workers is not None or scheduler is not None:
        p = dataclasses.replace(p, workers=workers, scheduler=scheduler)
    ckpt = jobdir.load_checkpoint(folder / jobdir.CHECKPOINT, RefineCheckpoint)
    t0 = time.perf_counter()
    stack, ref, mask, notes = _read_inputs(prm["particles"], jobdir.input_in_folder(folder, prm["reference"]),
                                           jobdir.input_in_folder(folder, prm.get("mask")), p)
    with optional_dask_client(p.workers, p.scheduler) as client:
        job = jobdir.JobFolder(folder)
        job.log(f"continuing after iteration {ckpt.iteration} (checkpoint.npz) on {device_label()}")
        _log_client(job, client, on_client)
        for note in notes:
            job.log(f"NOTE: {note}")
        job.set_status("running", iteration=ckpt.iteration)
        history = jobdir.read_history(job.file("iterations.csv"))[:ckpt.iteration]
        return (yield from _run(job, stack, ref, mask, p, t0, save_iterations, resume=ckpt, history=history,
                                client=client))


def _log_client(job: jobdir.JobFolder, client: Any, on_client: Callable[[Any], None] | None) -> None:
    """Log the Dask workers and dashboard (nothing without a client) and tell ``on_client``."""
    if client is None:
        return
    job.log(describe_client(client))
    if on_client is not None:
        on_client(client)


def _continuable(folder: Path) -> dict:
    """``params.json`` of a refinement job folder that can be continued (InputError naming it otherwise)."""
    return jobdir.continuable_params(folder, "refinement", ("particles", "reference"),
                                     "start a new refinement from its particles.star to go further")


def _run(job: jobdir.JobFolder, stack: ParticleStack, ref: np.ndarray, mask: np.ndarray | None, p: RefineParams,
         t0: float, save_iterations: bool, resume: RefineCheckpoint | None = None,
         history: list[dict] | None = None, client: Any = None) -> Generator[RefineStep, None, RefineResult]:
    """Drive :func:`refine` in ``job`` (on the Dask ``client``'s workers when given): per-iteration log,
    ``iterations.csv``, status and checkpoint; the outputs at the end."""
    history = [] if history is None else history
    sgd_done = [0]

    def on_step(it: RefineStep) -> RefineStep:
        if isinstance(it, SGDStep):
            sgd_done[0] = it.step
            _on_sgd_step(job, it, stack.box, stack.pixel_size)
            return it
        _log_iteration(job, it)
        history.append(_summary(it))
        jobdir.write_csv(job.file("iterations.csv"), history)
        if save_iterations:
            write_map(job.file(f"iter_{it.iteration:03d}_map.mrc"), it.map, stack.pixel_size)
        if it.checkpoint is not None:
            jobdir.save_checkpoint(job.file(jobdir.CHECKPOINT), it.checkpoint)
        job.set_status("running", iteration=it.iteration, resolution_A=it.resolution_A)
        return it

    core = refine(stack, ref, p, mask=mask, resume=resume, client=client)
    result: RefineResult = yield from jobdir.run_in_job(job, core, on_step,
                                                        lambda: {"last_iteration": len(history),
                                                                 "ab_initio_steps": sgd_done[0]},
                                                        finish=lambda r: _write_outputs(job, r, stack.pixel_size))
    warnings = [w for w in (shared_band_warning(result.final, p),) if w]
    for warning in warnings:
        job.log(f"WARNING: {warning}")
    solvent = solvent_fsc(result.final.half_a, result.final.half_b, stack.pixel_size)
    line = solvent.describe()
    job.log(line)
    if solvent.shared:
        warnings.append(line.removeprefix("WARNING: "))
    job.file(jobdir.CHECKPOINT).unlink(missing_ok=True)
    job.log(f"finished in {time.perf_counter() - t0:.1f} s: {result.final.resolution_A:.2f} Å (GSFSC 0.143)")
    job.set_status("finished", iteration=result.final.iteration, resolution_A=result.final.resolution_A,
                   warnings=warnings)
    job.close()
    return dataclasses.replace(result, history=history)


def shared_band_warning(it: RefineIteration, p: RefineParams) -> str | None:
    """A warning when the unmasked GSFSC is no finer than 0.8x the resolution below which the half maps share
    the starting reference (``min(split_resolution_A, initial_lowpass_A)``): there the FSC measures the shared
    reference, not the data; particles of pure noise aligned to the reference report the same."""
    shared = min(p.split_resolution_A, p.initial_lowpass_A)
    if it.resolution_unmasked_A < 0.8 * shared:
        return None
    return (f"the GSFSC ({it.resolution_unmasked_A:.1f} Å unmasked) is at the resolution below which the half maps "
            f"share their starting reference ({shared:g} Å): it does not measure the data (particles of pure "
            "noise give the same); check the particles (2D classes) and start from a reference low-passed "
            "further (--lowpass)")


def _on_sgd_step(job: jobdir.JobFolder, step: SGDStep, box: int, apix: float) -> None:
    """Log every 10th ab-initio step and the last; after the last, write ``ab_initio.mrc`` (particle box)."""
    job.set_status("running", iteration=0, ab_initio_step=step.step, ab_initio_steps=step.n_steps)
    if step.milestone:
        job.log(f"ab-initio step {step.step}/{step.n_steps} at {step.resolution_A:.1f} Å (posterior beta "
                f"{step.beta:.2f}, working box {step.box}): {step.seconds:.2f} s")
    if step.step == step.n_steps:
        write_map(job.file("ab_initio.mrc"), step.map_in_box(box), apix)
        job.log("wrote ab_initio.mrc: the refinement starts from it (low-passed); check its hand")


def _summary(it: RefineIteration) -> dict:
    return {"iteration": it.iteration, "search": it.search, "n_particles": it.n_particles,
            "align_resolution_A": round(it.align_resolution_A, 3), "resolution_A": round(it.resolution_A, 3),
            "resolution_unmasked_A": round(it.resolution_unmasked_A, 3), "working_box_px": it.working_box,
            **{k: round(v, 4) for k, v in it.pose_summary.items()},
            **{k: round(v, 2) for k, v in it.timings.items()}}


def _log_iteration(job: jobdir.JobFolder, it: RefineIteration) -> None:
    t = it.timings
    job.log(f"iteration {it.iteration} ({it.search}, {it.n_particles} particles, aligned to "
            f"{it.align_resolution_A:.1f} Å, working box {it.working_box} px): GSFSC {it.resolution_A:.2f} Å "
            f"(unmasked {it.resolution_unmasked_A:.2f} Å); "
            f"median pose change {it.pose_summary['median_pose_change_deg']:.2f}°; "
            f"search {t['search_s']:.1f} s, insertion {t['insert_s']:.1f} s, total {t['total_s']:.1f} s")


def _write_outputs(job: jobdir.JobFolder, result: RefineResult, apix: float) -> None:
    it = result.final
    stack = result.particles
    ctf = dataclasses.replace(stack.ctf, scale=stack.ctf.scale * result.scales)
    write_star(stack.replace(ctf=ctf), job.file("particles.star"))
    write_map(job.file("map.mrc"), it.map, apix)
    write_map(job.file("half_A.mrc"), it.half_a, apix)
    write_map(job.file("half_B.mrc"), it.half_b, apix)
    write_map(job.file("mask_refine.mrc"), it.mask, apix)
    write_map(job.file("mask_fsc.mrc"), it.fsc_mask if it.fsc_mask is not None else it.mask, apix)
    full = 0.5 * (it.half_a + it.half_b)
    bfac, line = choose_bfactor(full, apix, it.resolution_A)
    job.log(line)
    sharp = to_numpy(sharpen(full, apix, bfac, it.resolution_A, fsc_curve=it.fsc.fsc)) * it.mask
    write_map(job.file("map_sharp.mrc"), sharp.astype(np.float32), apix)
    it.fsc.to_csv(job.file("fsc.csv"))
    plot_fsc(it.fsc, job.file("fsc.png"), title=f"refinement iteration {it.iteration}: {it.resolution_A:.2f} Å")
    job.log("wrote particles.star, map.mrc, map_sharp.mrc, half_A.mrc, half_B.mrc, mask_refine.mrc, "
            "mask_fsc.mrc, fsc.csv, fsc.png, iterations.csv")
