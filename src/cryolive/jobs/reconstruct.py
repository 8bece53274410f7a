"""Reconstruction with known poses as a streaming job, and the half-map pipeline it is built from.

:func:`backproject_halves` inserts particles (batch by batch from disk) into two half-set reconstructors;
:func:`finalize_halves` turns them into half maps and a full map: unregularised for a known-pose reconstruction
(as ``relion_reconstruct``), or with an FSC-derived Wiener prior (RELION's tau2) for the references of a
refinement: a first pass with a small constant gives the FSC, SSNR = FSC/(1-FSC) per half set, then the half maps
are remade with that prior and the full map with RELION's full-set SSNR. :func:`reconstruct_job` is the job the
CLI, napari and ``make demo`` run: it yields a :class:`ReconstructProgress` after every batch and returns a
:class:`ReconstructResult` after writing the job folder (half maps, map, sharpened map, mask, FSC CSV + plot).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryolive.backend import backend_name, device_label, to_numpy, xp
from cryolive.image.ctf import ctf_2d
from cryolive.image.fourier import rfft2c
from cryolive.io import InputError, ParticleStack, read_particles, write_map
from cryolive.io.particles import check_image_statistics
from cryolive.jobs.jobdir import JobFolder, check_memory, check_output_parent
from cryolive.masks import threshold_mask
from cryolive.projection import Reconstructor
from cryolive.resolution.filters import fsc_filter, lowpass
from cryolive.resolution.fsc import FSCResult, fsc, fsc_weight, gold_standard_fsc, resolution_at, ssnr_from_fsc
from cryolive.resolution.sharpen import guinier_bfactor, sharpen
from cryolive.rotations.symmetry import canonical_symmetry_name


@dataclass(frozen=True)
class ReconstructParams:
    """Parameters of a known-pose reconstruction job (lengths in Å)."""

    particles: str
    out: str = "jobs"
    symmetry: str = "C1"
    batch_size: int = 256
    mask_threshold: float = 0.1
    mask_lowpass_A: float = 15.0
    mask_dilate_A: float = 6.0
    mask_soft_A: float = 12.0
    mask: str | None = None
    bfactor: float | None = None
    seed: int = 0


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


def half_sets(stack: ParticleStack, seed: int = 0) -> np.ndarray:
    """Half-set labels (1/2) of the particles: the file's own, or a random split where any is missing.

    The random split keeps *neighbours* together (:func:`neighbour_groups`): the same image listed twice, and picks
    on one micrograph closer than a box, whose images share pixels and so share noise. In different half sets
    they would correlate the half maps at every resolution and inflate the gold-standard FSC. Groups are shuffled
    and cut where the cumulative count passes half the particles, so the halves stay balanced.
    """
    half = np.asarray(stack.half_set, dtype=int).copy()
    missing = ~np.isin(half, (1, 2))
    if missing.any():
        rng = np.random.default_rng(seed)
        idx = np.nonzero(missing)[0]
        groups = neighbour_groups(stack)[idx]
        uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        order = rng.permutation(len(uniq))
        ends = np.cumsum(sizes[order])
        first_half = np.empty(len(uniq), bool)
        first_half[order] = (ends - sizes[order] / 2.0) <= ends[-1] / 2.0
        half[idx] = np.where(first_half[inverse], 1, 2)
    return half


def neighbour_groups(stack: ParticleStack) -> np.ndarray:
    """Group label ``(N,)`` per particle: particles that share pixels get one label.

    Two particles share pixels when they are the same image (same stack and index) or when they were picked on the
    same micrograph (``rlnMicrographName``) less than one box apart (``rlnCoordinateX/Y``, taken in the particles'
    pixels). Without micrograph names or coordinates only identical images are grouped.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(stack)
    image_key = stack.stack_file_id.astype(np.int64) * (int(stack.stack_index.max(initial=0)) + 1) \
        + stack.stack_index
    _, same_image = np.unique(image_key, return_inverse=True)
    rows, cols = [np.arange(n)], [same_image + n]  # particle -> its image node
    table = stack.table
    if {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(table.columns) and stack.box > 0:
        xy = np.stack([pd.to_numeric(table["rlnCoordinateX"], errors="coerce").to_numpy(float),
                       pd.to_numeric(table["rlnCoordinateY"], errors="coerce").to_numpy(float)], axis=1)
        mics = table["rlnMicrographName"].astype(str).to_numpy()
        for mic in np.unique(mics):
            sel = np.nonzero((mics == mic) & np.isfinite(xy).all(axis=1))[0]
            if len(sel) < 2:
                continue
            pairs = cKDTree(xy[sel]).query_pairs(r=float(stack.box) - 1e-6, output_type="ndarray")
            if len(pairs):
                rows.append(sel[pairs[:, 0]])
                cols.append(sel[pairs[:, 1]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    size = n + int(same_image.max(initial=0)) + 1
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:n]


def backproject_halves(stack: ParticleStack, half: np.ndarray, symmetry: str = "C1",
                       batch_size: int = 256) -> Iterator[tuple[int, tuple[Reconstructor, Reconstructor]]]:
    """Insert every particle of ``stack`` into the reconstructor of its half set, batch by batch.

    Yields ``(n_done, (rec_A, rec_B))`` after each batch (the same two objects each time). Images are read
    from disk in batches, so memory is bounded by ``batch_size``. Poses must be present.
    """
    if stack.rotations is None:
        raise InputError(f"{stack.source}: the particles have no poses (rlnAngleRot/Tilt/Psi); "
                         "a known-pose reconstruction needs them")
    m = xp()
    recs = (Reconstructor(stack.box, symmetry=symmetry), Reconstructor(stack.box, symmetry=symmetry))
    shifts_px = (np.zeros((len(stack), 2)) if stack.shifts is None else stack.shifts / stack.pixel_size)
    done = 0
    for idx, imgs in stack.iter_batches(batch_size):
        idx = np.asarray(idx)
        f = rfft2c(m.asarray(imgs, dtype=m.float32))
        ctf = ctf_2d(stack.ctf.subset(idx), stack.box, stack.pixel_size)
        for h, rec in zip((1, 2), recs, strict=True):
            sel = np.nonzero(half[idx] == h)[0]
            if len(sel):
                gsel = m.asarray(sel)
                rec.insert(f[gsel], stack.rotations[idx[sel]], ctf=ctf[gsel], shifts=shifts_px[idx[sel]])
        done += len(idx)
        yield done, recs


def finalize_halves(rec_a: Reconstructor, rec_b: Reconstructor, passes: int = 2,
                    prior: bool = True) -> tuple[Any, Any, Any]:
    """Half maps and full map (backend arrays), with or without a Wiener prior from the half-map FSC.

    ``prior=False`` (known-pose reconstruction, like ``relion_reconstruct``): all three maps are the plain
    ratio ``num / den`` with a tiny constant. ``prior=True`` (references inside refinement, like RELION's
    auto-refine): pass 1 uses a small constant; each further pass remakes the half maps with
    ``SSNR_half = FSC / (1 - FSC)`` of the previous half maps, and the full map (the sum of both accumulators) is
    made with RELION's full-set conversion ``SSNR = F / (1 - F)``, ``F = sqrt(2 FSC / (1 + FSC))``.
    """
    half_a, half_b = rec_a.finalize(), rec_b.finalize()
    both = rec_a.copy()
    both.add(rec_b)
    if not prior:
        return half_a, half_b, both.finalize()
    for _ in range(max(passes - 1, 0)):
        half_a, half_b = regularised_halves(rec_a, rec_b, half_a, half_b)
    curve = fsc(half_a, half_b)
    full = both.finalize(ssnr=ssnr_from_fsc(fsc_weight(curve), full_set=False))
    return half_a, half_b, full


def regularised_halves(rec_a: Reconstructor, rec_b: Reconstructor, half_a: Any, half_b: Any) -> tuple[Any, Any]:
    """The half maps remade with the Wiener prior ``SSNR_half = FSC / (1 - FSC)`` of ``half_a``, ``half_b`` (RELION's
    tau2 from the FSC)."""
    ssnr_half = ssnr_from_fsc(fsc(half_a, half_b), full_set=False)
    return rec_a.finalize(ssnr=ssnr_half), rec_b.finalize(ssnr=ssnr_half)


def auto_bfactor(vol: Any, pixel_size: float, resolution_A: float) -> float | None:
    """Guinier B-factor (Å^2) fitted between 10 Å and the resolution (RELION's default range), or None when
    the resolution is coarser than 8 Å: too few shells beyond 10 Å for a meaningful fit."""
    res_high = max(resolution_A, 2.0 * pixel_size * 1.01)
    if res_high > 8.0:
        return None
    return guinier_bfactor(vol, pixel_size, res_high_A=res_high, res_low_A=10.0)


def check_reconstruct_run(params: ReconstructParams, stack: ParticleStack) -> None:
    """Refuse, before the job folder exists: a symmetry that does not exist, a batch below 1, particles without
    poses, an output place that cannot be written, and a box the memory cannot hold."""
    canonical_symmetry_name(params.symmetry)
    if params.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1 (got {params.batch_size})")
    if stack.rotations is None:
        raise InputError(f"{stack.source}: the particles have no poses (rlnAngleRot/Tilt/Psi); known-pose "
                         "reconstruction needs them (run a refinement first)")
    check_output_parent(params.out)
    check_memory(400.0 * stack.box**3, f"reconstruction at a box of {stack.box} px", "downsample the particles")


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
        recs = None
        for done, batch_recs in backproject_halves(stack, half, params.symmetry, params.batch_size):
            recs = batch_recs
            yield ReconstructProgress(done, len(stack), time.perf_counter() - t0)
        assert recs is not None
        t_insert = time.perf_counter() - t0
        job.log(f"inserted {len(stack)} particles in {t_insert:.1f} s ({len(stack) / t_insert:.0f} particles/s)")
        result = _finish(job, params, stack, *recs, t0=t0, t_insert=t_insert)
    except BaseException as exc:
        failed = isinstance(exc, Exception)
        job.log(f"FAILED: {exc}" if failed else "STOPPED by the user; no map was written")
        job.set_status("failed" if failed else "stopped", error=str(exc) if failed else "")
        job.close()
        raise
    job.set_status("finished", resolution_A=result.resolution, bfactor_A2=result.bfactor)
    job.close()
    return result


def _finish(job: JobFolder, params: ReconstructParams, stack: ParticleStack, rec_a: Reconstructor,
            rec_b: Reconstructor, t0: float, t_insert: float) -> ReconstructResult:
    apix = stack.pixel_size
    half_a, half_b, full = finalize_halves(rec_a, rec_b, prior=False)
    if params.mask:
        from cryolive.io import read_matching_mask

        mask = xp().asarray(read_matching_mask(params.mask, stack.box, apix, params.particles, "mask"))
    else:
        mask = threshold_mask(lowpass(full, params.mask_lowpass_A, apix), params.mask_threshold,
                              params.mask_dilate_A, params.mask_soft_A, apix)
    result_fsc = gold_standard_fsc(half_a, half_b, apix, mask=mask, seed=params.seed)
    res = float(result_fsc.res_0143)
    job.log(f"gold-standard FSC: {res:.2f} Å at 0.143, {result_fsc.res_05:.2f} Å at 0.5 (masked, corrected); "
            f"unmasked {resolution_at(result_fsc.fsc_unmasked, stack.box, apix, 0.143):.2f} Å")
    filtered = fsc_filter(full, result_fsc.fsc)
    bfac = params.bfactor
    if bfac is None:
        bfac = auto_bfactor(full, apix, res)
        if bfac is None:
            bfac = 0.0
            job.log(f"no Guinier fit: {res:.2f} Å is coarser than 8 Å (the fit needs shells beyond 10 Å); B = 0")
        else:
            job.log(f"Guinier B-factor {bfac:.1f} Å^2 (fit from 10 Å to {res:.2f} Å)")
    else:
        job.log(f"B-factor {bfac:.1f} Å^2 (given)")
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
