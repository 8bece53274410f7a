"""3D classification and heterogeneous refinement as jobs: the :func:`cryolive.classification.classify` generator
plus a job folder.

``classify_job`` yields the core generator's :class:`ClassIteration` objects (with ``job_dir`` set) and writes
``<out>/job_classify_<nnn>/`` (``job_hetero_<nnn>`` for heterogeneous refinement):

    class_001.mrc ...           each class's map (FSC-filtered, solvent-masked), rewritten every iteration
    particles.star              every particle with rlnClassNumber (1-based) and rlnMaxValueProbDistribution
                                (hetero / local search: the new poses too)
    particles_class_001.star    the particles of each class (most probable class)
    class_sizes.csv, .png       class sizes (fractions) per iteration
    class_fsc.csv               each class's FSC (plain half-map comparison of the composed volumes)
    iterations.csv              per-iteration numbers (with the working box, ``working_box_px``) and timings
    consensus.mrc               the consensus map (classification)
    solvent_mask.mrc, focus_mask.mrc
    checkpoint.npz              the state after the last completed iteration (removed when the job finishes):
                                ``cryolive classify --continue JOBDIR`` (``hetero --continue``) goes on from it
                                after a kill, in the same folder (:func:`continue_classify_job`)
    input_starts_001.mrc …      inputs given as maps in memory (a napari layer, a MapInput): the job's own copies
    input_solvent_mask.mrc      (starting maps, solvent and focus masks, consensus), named in params.json
    input_focus_mask.mrc        (``--continue`` reads them)
    input_consensus.mrc
    params.json, log.txt, status.json
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from cryolive.backend import backend_name, device_label
from cryolive.classification.classify import (
    ClassifyCheckpoint,
    ClassifyParams,
    ClassifyResult,
    ClassIteration,
    classify,
)
from cryolive.io import (
    InputError,
    MapSource,
    ParticleStack,
    read_matching_map,
    read_matching_mask,
    read_particles,
    read_star,
    write_map,
    write_star,
)
from cryolive.io.particles import check_half_sets, check_image_statistics
from cryolive.io.preflight import check_memory, check_output_parent
from cryolive.jobs.jobdir import (
    CHECKPOINT,
    JobFolder,
    captured_notes,
    continuable_params,
    input_in_folder,
    load_checkpoint,
    read_history,
    run_in_job,
    save_checkpoint,
    write_csv,
    write_input_maps,
)
from cryolive.params import check_params
from cryolive.rotations.symmetry import check_symmetry


def _read_mask(path: MapSource | None, box: int, pixel_size: float, particles: str, what: str) -> np.ndarray | None:
    return None if not path else read_matching_mask(path, box, pixel_size, particles, what)


def check_classify_run(p: ClassifyParams, n_particles: int, box: int) -> None:
    """Refuse, before any work, parameters out of range, more classes than particles and a run the memory
    cannot hold (each class keeps two padded half-map accumulators and a projector at the class box)."""
    check_params(p)
    check_symmetry(p.symmetry)
    if p.n_classes > n_particles:
        raise InputError(f"--k {p.n_classes}: more classes than particles ({n_particles})")
    cb = p.class_box or (min(box, 128) if p.mode == "hetero" else box)
    # per class: two half-set accumulators and a projector on half grids (~130 bytes per voxel of the class box)
    check_memory(p.n_classes * 160.0 * cb**3 + 250.0 * cb**3, f"{p.n_classes} classes at a box of {cb} px",
                 "use fewer classes (--k) or a smaller --class-box")


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What a classification job reads before its folder exists: the particles, the starting maps (hetero), the
    masks and consensus (``(n, n, n)`` at the particles' pixel size, None where not given), the parameters
    (``n_classes`` set by the starting maps) and the notes reading them produced."""

    stack: ParticleStack
    starts: list[np.ndarray] | None
    solvent: np.ndarray | None
    focus: np.ndarray | None
    consensus: np.ndarray | None
    params: ClassifyParams
    notes: list[str]


#: the job kinds (folder ``job_<kind>_<nnn>``, the CLI command) and what they are called in messages
_WHAT = {"classify": "3D classification", "hetero": "heterogeneous refinement"}


def _kind(p: ClassifyParams) -> str:
    return "hetero" if p.mode == "hetero" else "classify"


def _read_inputs(particles_path: str, p: ClassifyParams, starts: Sequence[MapSource] | None,
                 solvent_mask: MapSource | None, focus_mask: MapSource | None, consensus: MapSource | None) -> _Inputs:
    """Read and check everything the run needs (InputError naming the file otherwise), before any job folder
    exists."""
    stack = read_particles(particles_path)
    check_image_statistics(stack)
    check_half_sets(stack)
    box, apix = stack.box, stack.pixel_size
    start_maps = None
    with captured_notes() as notes:
        if starts:
            start_maps = [read_matching_map(s, box, apix, particles_path, "starting map") for s in starts]
            p = dataclasses.replace(p, n_classes=len(start_maps))
        solvent = _read_mask(solvent_mask, box, apix, particles_path, "solvent mask")
        focus = _read_mask(focus_mask, box, apix, particles_path, "focus mask")
        cons = None if not consensus else read_matching_map(consensus, box, apix, particles_path, "consensus map")
    if p.mode != "hetero" and stack.rotations is None:
        raise InputError(f"{particles_path}: 3D classification with fixed poses needs poses (rlnAngleRot/Tilt/Psi); "
                         "run a refinement first, or use heterogeneous refinement")
    check_classify_run(p, len(stack), box)
    return _Inputs(stack, start_maps, solvent, focus, cons, p, notes)


def classify_job(particles_path: str, out: str = "jobs", params: ClassifyParams | None = None, *,
                 starts: Sequence[MapSource] | None = None, solvent_mask: MapSource | None = None,
                 focus_mask: MapSource | None = None,
                 consensus: MapSource | None = None) -> Generator[ClassIteration, None, ClassifyResult]:
    """Run classification (``params.mode`` fixed/local) or heterogeneous refinement (``hetero``, with ``starts``)
    into a new job folder, yielding each iteration; returns the result. Inputs are checked before the folder is
    made; nothing the user had is modified. Each map input is an MRC file or a map in memory
    (:class:`~cryolive.io.MapInput`, checked as a file is), which the job writes into its folder
    (``input_consensus.mrc``, ``input_starts_001.mrc``, …) and names in ``params.json``. The iterations yielded
    carry no checkpoint (it is in the folder's ``checkpoint.npz``, and a consumer that keeps every iteration would
    otherwise keep every checkpoint)."""
    t0 = time.perf_counter()
    inp = _read_inputs(particles_path, params or ClassifyParams(), starts, solvent_mask, focus_mask, consensus)
    p, stack = inp.params, inp.stack
    box, apix = stack.box, stack.pixel_size
    check_output_parent(out)
    kind = _kind(p)
    job = JobFolder.create(out, kind)
    maps = write_input_maps(job, {"starts": list(starts or []), "solvent_mask": solvent_mask or None,
                                  "focus_mask": focus_mask or None, "consensus": consensus or None})
    job.write_params({"particles": particles_path, **maps, **dataclasses.asdict(p),
                      "backend": backend_name(), "n_particles": len(stack), "pixel_size_A": apix, "box": box})
    job.set_status("running", iteration=0)
    what = _WHAT[kind] if kind == "hetero" else f"3D classification ({p.mode} poses)"
    job.log(f"{what} on {device_label()}: {len(stack)} particles, box {box}, {apix:.4g} Å/px, "
            f"{p.n_classes} classes; solvent mask {solvent_mask or 'automatic (from the consensus map)'}, "
            f"focus mask {focus_mask or 'none'}")
    for note in inp.notes:
        job.log(f"NOTE: {note}")
    if kind == "hetero":
        job.log("class FSC: a plain half-map comparison (both halves are aligned to one class map, so they are "
                "not independent), read at 0.5")
    return (yield from _run(job, inp, t0))


def continue_classify_job(job_dir: str, kind: str | None = None) -> Generator[ClassIteration, None, ClassifyResult]:
    """Go on with a 3D classification or heterogeneous refinement that was killed, stopped or failed, in its own
    folder, from the checkpoint its last completed iteration wrote (``checkpoint.npz``): the same particles, maps
    and parameters (``params.json``); the run continues exactly as it would have without the interruption and
    the folder ends ``finished`` with the usual outputs. ``kind`` ("classify" / "hetero", None: either): the
    command asking, which must match the job's. Refused in one InputError line naming the folder when it is not
    such a job, is of the other kind, is still running, has finished, or has no checkpoint."""
    folder = Path(job_dir)
    what = _WHAT.get(kind or "", "3D classification or heterogeneous refinement")
    prm = continuable_params(folder, what, ("particles", "mode", "n_classes"),
                             "start a new job from its particles.star to go further")
    names = {f.name for f in dataclasses.fields(ClassifyParams)}
    try:
        p = ClassifyParams(**{k: v for k, v in prm.items() if k in names})
    except TypeError as exc:
        raise InputError(f"{folder}/params.json: not a classification's parameters ({exc})") from None
    if kind is not None and _kind(p) != kind:
        raise InputError(f"{folder}: a {_WHAT[_kind(p)]} job, not a {_WHAT[kind]} one; continue it with "
                         f"cryolive {_kind(p)} --continue {folder}")
    ckpt = load_checkpoint(folder / CHECKPOINT, ClassifyCheckpoint)
    t0 = time.perf_counter()
    inp = _read_inputs(prm["particles"], p, input_in_folder(folder, prm.get("starts")) or None,
                       *(input_in_folder(folder, prm.get(k)) for k in ("solvent_mask", "focus_mask", "consensus")))
    job = JobFolder(folder)
    job.log(f"continuing after iteration {ckpt.iteration} ({CHECKPOINT}) on {device_label()}")
    for note in inp.notes:
        job.log(f"NOTE: {note}")
    job.set_status("running", iteration=ckpt.iteration)
    history = read_history(job.file("iterations.csv"))[:ckpt.iteration]
    return (yield from _run(job, inp, t0, resume=ckpt, history=history))


def _run(job: JobFolder, inp: _Inputs, t0: float, resume: ClassifyCheckpoint | None = None,
         history: list[dict] | None = None) -> Generator[ClassIteration, None, ClassifyResult]:
    """Drive :func:`classify` in ``job``: per-iteration log, maps, tables, status and ``checkpoint.npz``; the
    particle files at the end (the checkpoint is removed then)."""
    history = [] if history is None else history
    warned: set[str] = set()

    def on_step(it: ClassIteration) -> ClassIteration:
        for w in it.warnings:
            if w not in warned:
                warned.add(w)
                job.log(f"WARNING: {w}")
        if it.iteration == 1:
            write_map(job.file("solvent_mask.mrc"), it.solvent_mask, it.pixel_size)
            if it.focus_mask is not None:
                write_map(job.file("focus_mask.mrc"), it.focus_mask, it.pixel_size)
        _log_iteration(job, it)
        history.append(_summary(it))
        _write_iteration(job, it, history)
        if it.checkpoint is not None:
            save_checkpoint(job.file(CHECKPOINT), it.checkpoint)
        job.set_status("running", iteration=it.iteration)
        return dataclasses.replace(it, job_dir=str(job.path), checkpoint=None)

    gen = classify(inp.stack, inp.params, starts=inp.starts, solvent_mask=inp.solvent, focus_mask=inp.focus,
                   consensus=inp.consensus, resume=resume)
    result: ClassifyResult = yield from run_in_job(job, gen, on_step, lambda: {"last_iteration": len(history)},
                                                   finish=lambda r: _write_outputs(job, r))
    job.file(CHECKPOINT).unlink(missing_ok=True)
    sizes = ", ".join(f"{100 * s:.1f} %" for s in result.final.class_sizes)
    job.log(f"finished in {time.perf_counter() - t0:.1f} s: class sizes {sizes}")
    job.set_status("finished", iteration=result.final.iteration,
                   class_sizes=[float(s) for s in result.final.class_sizes])
    job.close()
    return dataclasses.replace(result, history=history)


def _summary(it: ClassIteration) -> dict:
    row = {"iteration": it.iteration, "stage": it.stage, "n_particles": it.n_particles,
           "changed_fraction": round(it.changed_fraction, 5), "mean_ess": round(it.mean_ess, 4),
           "similarity": round(it.similarity, 3), "working_box_px": it.working_box}
    row.update({f"class_{c + 1}_size": round(float(s), 5) for c, s in enumerate(it.class_sizes)})
    row.update({f"class_{c + 1}_res_A": round(float(r), 3) for c, r in enumerate(it.class_resolution_A)})
    row.update({k: round(v, 3) for k, v in it.timings.items()})
    return row


def _log_iteration(job: JobFolder, it: ClassIteration) -> None:
    sizes = ", ".join(f"{100 * s:.1f} %" for s in it.class_sizes)
    res = ", ".join(f"{r:.1f}" for r in it.class_resolution_A)
    t = it.timings
    job.log(f"iteration {it.iteration} ({it.stage}, {it.n_particles} particles, similarity {it.similarity:.2f}, "
            f"working box {it.working_box} px): "
            f"sizes {sizes}; class FSC 0.5 at {res} Å; {100 * it.changed_fraction:.1f} % changed class; "
            f"E step {t['e_step_s']:.1f} s, M step {t['m_step_s']:.1f} s, total {t['total_s']:.1f} s")


def _write_iteration(job: JobFolder, it: ClassIteration, history: list[dict]) -> None:
    for c, vol in enumerate(it.class_maps):
        path = job.file(f"class_{c + 1:03d}.mrc")
        if path.exists():
            path.unlink()  # our own output of the previous iteration
        write_map(path, vol, it.pixel_size)
    write_csv(job.file("iterations.csv"), history)
    sizes = [{"iteration": h["iteration"], **{k: v for k, v in h.items() if k.endswith("_size")}} for h in history]
    write_csv(job.file("class_sizes.csv"), sizes)
    from cryolive.jobs.plots import plot_class_sizes

    plot_class_sizes(np.array([[v for k, v in s.items() if k != "iteration"] for s in sizes]),
                     job.file("class_sizes.png"))
    shells = it.class_fsc.shape[1]
    freq = np.arange(shells) / (2 * (shells - 1) * it.pixel_size)
    rows = [{"shell": i, "frequency_1_per_A": round(float(freq[i]), 6),
             **{f"class_{c + 1}": round(float(it.class_fsc[c, i]), 5) for c in range(len(it.class_fsc))}}
            for i in range(shells)]
    write_csv(job.file("class_fsc.csv"), rows)


def _write_outputs(job: JobFolder, result: ClassifyResult) -> None:
    stack = result.particles
    write_star(stack, job.file("particles.star"))
    for c in range(len(result.final.class_sizes)):
        sel = np.nonzero(result.classes == c + 1)[0]
        if len(sel):
            write_star(stack.subset(sel), job.file(f"particles_class_{c + 1:03d}.star"))
    if result.consensus is not None:
        write_map(job.file("consensus.mrc"), result.consensus, result.final.pixel_size)
    job.log("wrote particles.star (rlnClassNumber, rlnMaxValueProbDistribution), particles_class_nnn.star, "
            "class_nnn.mrc, class_sizes.csv/.png, class_fsc.csv, iterations.csv")


def export_classes(particles_star: str | Path, classes: Sequence[int], dest: str | Path) -> int:
    """Write the particles of ``classes`` (1-based rlnClassNumber) from a classification's ``particles.star`` to
    the new file ``dest``; returns how many. Refuses to overwrite ``dest``."""
    stack = read_star(particles_star)
    if stack.class_number is None:
        raise InputError(f"{particles_star}: no rlnClassNumber column (not a classification result)")
    sel = np.nonzero(np.isin(stack.class_number, np.asarray(list(classes), dtype=int)))[0]
    if len(sel) == 0:
        raise InputError(f"{particles_star}: no particle is in class(es) {', '.join(map(str, classes))}")
    write_star(stack.subset(sel), dest)
    return int(len(sel))
