"""Reconstruction with known poses as a streaming job that writes a job folder.

The maths is :mod:`cryolive.reconstruction` (half sets, back-projection of the halves, half maps);
:func:`reconstruct_job` is the job the CLI, napari and ``make demo`` run: it yields a :class:`ReconstructProgress`
after every batch and returns a :class:`ReconstructResult` after writing the job folder (half maps, map, sharpened
map, mask, FSC CSV + plot).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryolive.backend import backend_name, device_label, to_numpy, xp
from cryolive.io import InputError, ParticleStack, read_particles, write_map
from cryolive.io.particles import check_half_sets, check_image_statistics
from cryolive.io.preflight import check_memory, check_output_parent
from cryolive.jobs.jobdir import JobFolder
from cryolive.masks import solvent_mask_from_map
from cryolive.params import check_params, param
from cryolive.reconstruction.halves import backproject_halves, describe_half_sets, finalize_halves, half_sets
from cryolive.reconstruction.solvent import solvent_fsc
from cryolive.resolution.filters import fsc_filter
from cryolive.resolution.fsc import FSCResult, gold_standard_fsc, resolution_at
from cryolive.resolution.sharpen import choose_bfactor, sharpen
from cryolive.rotations.symmetry import check_symmetry


@dataclass(frozen=True)
class ReconstructParams:
    """Parameters of a known-pose reconstruction job (lengths in Å)."""

    particles: str
    out: str = "jobs"
    symmetry: str = "C1"
    batch_size: int = param(256, ge=1, flag="--batch-size", label="Batch size")
    mask_threshold: float = 0.1
    mask_lowpass_A: float = 15.0
    mask_dilate_A: float = 6.0
    mask_soft_A: float = 12.0
    mask: str | None = None
    bfactor: float | None = None
    seed: int = 0
    workers: int | None = param(None, ge=1, flag="--workers", label="Dask workers",
                                help="back-project on a local Dask cluster of this many processes")
    scheduler: str | None = None  # or on an existing Dask cluster (tcp://host:8786)


@dataclass(frozen=True)
class ReconstructProgress:
    """One batch inserted: particles done, total, seconds since the start."""

    n_done: int
    n_total: int
    elapsed_s: float


@dataclass(frozen=True)
class ReconstructResult:
    """Everything the job wrote, as NumPy float32 maps (``[z, y, x]``) plus numbers (Å, Å^2, seconds)."""

    job_dir: Path
    pixel_size: float
    half_a: np.ndarray
    half_b: np.ndarray
    map: np.ndarray
    map_sharp: np.ndarray
    mask: np.ndarray
    fsc: FSCResult
    resolution: float
    bfactor: float
    timings: dict[str, float] = field(default_factory=dict)


def check_reconstruct_run(params: ReconstructParams, stack: ParticleStack) -> None:
    """Refuse, before the job folder exists: a symmetry that does not exist, parameters out of range (a batch
    below 1), particles without poses, an image in both half sets, an output place that cannot be written, and a
    box the memory cannot hold."""
    check_symmetry(params.symmetry)
    check_params(params)
    if stack.rotations is None:
        raise InputError(f"{stack.source}: the particles have no poses (rlnAngleRot/Tilt/Psi); known-pose "
                         "reconstruction needs them (run a refinement first)")
    check_half_sets(stack)
    check_output_parent(params.out)
    # two half-set accumulators (48 bytes per voxel of the box each) and finalize's column chunks: 2.9 GB measured
    # at box 256, 176 bytes per voxel
    check_memory(220.0 * stack.box**3, f"reconstruction at a box of {stack.box} px", "downsample the particles")


def reconstruct_job(params: ReconstructParams) -> Generator[ReconstructProgress, None, ReconstructResult]:
    """Run a known-pose reconstruction, yielding progress per batch; returns the result after writing it.

    The job folder ``<out>/job_reconstruct_<nnn>/`` receives ``half_A.mrc``, ``half_B.mrc``, ``map.mrc``
    (FSC-weighted), ``map_sharp.mrc`` (Guinier B-factor, FSC-weighted, low-passed at the resolution, masked
    like RELION's postprocess_masked.mrc),
    ``mask_fsc.mrc``, ``fsc.csv``, ``fsc.png``, ``params.json``, ``log.txt`` and ``status.json``.
    """
    t0 = time.perf_counter()
    stack = read_particles(params.particles)
    check_image_statistics(stack)
    check_reconstruct_run(params, stack)
    job = JobFolder.create(params.out, "reconstruct")
    job.write_params({**asdict(params), "backend": backend_name(), "n_particles": len(stack),
                      "pixel_size_A": stack.pixel_size, "box": stack.box})
    job.set_status("running", step="backprojection")
    job.log(f"cryolive reconstruct on {device_label()}: {len(stack)} particles, box {stack.box}, "
            f"{stack.pixel_size:.4g} Å/px, symmetry {params.symmetry}")
    try:
        half = half_sets(stack, params.seed)
        job.log(describe_half_sets(stack, half))
        recs = None
        if params.workers or params.scheduler:
            from cryolive.reconstruction.distributed import backproject_halves_dask, describe_client

            source = backproject_halves_dask(stack, half, params.symmetry, params.batch_size, workers=params.workers,
                                             scheduler=params.scheduler,
                                             on_client=lambda client: job.log(describe_client(client)))
        else:
            source = backproject_halves(stack, half, params.symmetry, params.batch_size)
        for done, batch_recs in source:
            recs = batch_recs
            yield ReconstructProgress(done, len(stack), time.perf_counter() - t0)
        assert recs is not None
        t_insert = time.perf_counter() - t0
        job.log(f"inserted {len(stack)} particles in {t_insert:.1f} s ({len(stack) / t_insert:.0f} particles/s)")
        maps = finalize_halves(*recs, prior=False)
        del recs, batch_recs, source  # the accumulators (the bulk of the memory) are not needed any more
        result = _finish(job, params, stack, *maps, t0=t0, t_insert=t_insert)
    except BaseException as exc:
        failed = isinstance(exc, Exception)
        job.log(f"FAILED: {exc}" if failed else "STOPPED by the user; no map was written")
        job.set_status("failed" if failed else "stopped", error=str(exc) if failed else "")
        job.close()
        raise
    job.set_status("finished", resolution_A=result.resolution, bfactor_A2=result.bfactor)
    job.close()
    return result


def _finish(job: JobFolder, params: ReconstructParams, stack: ParticleStack, half_a: Any, half_b: Any, full: Any,
            t0: float, t_insert: float) -> ReconstructResult:
    """Mask, gold-standard FSC, sharpening and the files of a known-pose reconstruction from its unregularised
    half maps and full map ``(n, n, n)`` (backend arrays)."""
    apix = stack.pixel_size
    if params.mask:
        from cryolive.io import read_matching_mask

        mask = xp().asarray(read_matching_mask(params.mask, stack.box, apix, params.particles, "mask"))
    else:
        mask = solvent_mask_from_map(full, apix, params.mask_threshold, params.mask_dilate_A, params.mask_soft_A,
                                     params.mask_lowpass_A)
    result_fsc = gold_standard_fsc(half_a, half_b, apix, mask=mask, seed=params.seed)
    res = float(result_fsc.res_0143)
    job.log(f"gold-standard FSC: {res:.2f} Å at 0.143, {result_fsc.res_05:.2f} Å at 0.5 (masked, corrected); "
            f"unmasked {resolution_at(result_fsc.fsc_unmasked, stack.box, apix, 0.143):.2f} Å")
    job.log(solvent_fsc(half_a, half_b, apix).describe())
    filtered = fsc_filter(full, result_fsc.fsc)
    bfac, line = choose_bfactor(full, apix, res, params.bfactor)
    job.log(line)
    sharp = sharpen(full, apix, bfac, res, fsc_curve=result_fsc.fsc) * mask
    job.log(f"sharpened map: exp(+B s^2/4), FSC-weighted, low-passed at {res:.2f} Å, masked")
    out = {name: to_numpy(v).astype(np.float32) for name, v in
           (("half_A", half_a), ("half_B", half_b), ("map", filtered), ("map_sharp", sharp), ("mask_fsc", mask))}
    for name, arr in out.items():
        write_map(job.file(f"{name}.mrc"), arr, apix)
    result_fsc.to_csv(job.file("fsc.csv"))
    from cryolive.jobs.plots import plot_fsc

    plot_fsc(result_fsc, job.file("fsc.png"), title=f"{stack.source.name}: {res:.2f} Å")
    timings = {"insert_s": t_insert, "total_s": time.perf_counter() - t0}
    job.log(f"wrote {', '.join(sorted(out))} .mrc, fsc.csv, fsc.png in {timings['total_s']:.1f} s")
    return ReconstructResult(job.path, apix, out["half_A"], out["half_B"], out["map"], out["map_sharp"],
                             out["mask_fsc"], result_fsc, res, float(bfac), timings)
