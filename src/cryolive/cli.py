"""The ``cryolive`` command line: thin wrappers over the core and the job generators.

Every subcommand has ``--help``. Errors in the user's input (InputError, missing files) print one line naming
the file and the problem and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cryolive.jobs import drain


def _progress(done: int, total: int, elapsed: float, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    k = int(width * done / max(total, 1))
    rate = done / elapsed if elapsed > 0 else 0.0
    sys.stderr.write(f"\r{label} [{'#' * k}{'.' * (width - k)}] {done}/{total} ({rate:.0f}/s)")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _at_least(*checks: tuple[str, int | None, int]) -> None:
    """InputError naming the first option ``(flag, value, least)`` given below its least allowed value."""
    from cryolive.io import InputError

    for flag, value, least in checks:
        if value is not None and value < least:
            raise InputError(f"{flag} must be at least {least} (got {value})")


def cmd_simulate(a: argparse.Namespace) -> int:
    from cryolive.params import params_from_args
    from cryolive.rotations.symmetry import check_symmetry
    from cryolive.simulator.dataset import SimulationParams, simulate_dataset

    check_symmetry(a.sym)

    p = params_from_args(SimulationParams, a, seed=a.seed, symmetry=a.sym, float16=a.float16)
    out = simulate_dataset(a.out, p, progress=lambda d, t, e: _progress(d, t, e, "simulate"))
    print(f"wrote {p.n} particles (box {p.box}, {p.pixel_size} Å/px, SNR {p.snr}, {p.n_states} state(s)) to {out}")
    print("  particles.star + particles.mrcs, truth/ (maps, poses, states), reference.mrc (truth low-passed)")
    return 0


def cmd_project(a: argparse.Namespace) -> int:
    from cryolive.io import check_map_content, read_map, read_particles
    from cryolive.io.preflight import check_output_file
    from cryolive.simulator.dataset import project_to_stack

    _at_least(("--batch-size", a.batch_size, 1))
    check_output_file(a.out)
    vol, apix = read_map(a.map)
    check_map_content(vol, a.map)
    stack = read_particles(a.particles, require_images=False)
    if stack.rotations is None:
        from cryolive.io import InputError

        raise InputError(f"{a.particles}: no poses (rlnAngleRot/Tilt/Psi) to project at")
    star = project_to_stack(vol, apix, stack, a.out, apply_ctf=not a.no_ctf, batch_size=a.batch_size)
    print(f"wrote {len(stack)} projections to {a.out} and {star}")
    return 0


def cmd_reconstruct(a: argparse.Namespace) -> int:
    from cryolive.backend import to_numpy
    from cryolive.io import read_particles, write_map
    from cryolive.io.particles import check_half_sets, check_image_statistics
    from cryolive.io.preflight import check_output_file
    from cryolive.jobs.reconstruct import ReconstructParams
    from cryolive.params import check_params, params_from_args
    from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
    from cryolive.resolution.fsc import gold_standard_fsc
    from cryolive.rotations.symmetry import check_symmetry

    check_symmetry(a.sym)
    check_params(params_from_args(ReconstructParams, a, particles=a.star, out=a.out, symmetry=a.sym, seed=a.seed,
                                  scheduler=a.scheduler))
    out = check_output_file(a.out, overwrite=a.overwrite, overwrite_flag="--overwrite")
    stack = read_particles(a.star)
    check_image_statistics(stack)
    check_half_sets(stack)
    half = half_sets(stack, a.seed)
    recs = None
    if a.workers or a.scheduler:
        from cryolive.reconstruction.distributed import backproject_halves_dask

        source = backproject_halves_dask(stack, half, a.sym, a.batch_size, workers=a.workers, scheduler=a.scheduler,
                                         on_client=lambda c: print(f"Dask dashboard: {c.dashboard_link}", flush=True))
    else:
        source = backproject_halves(stack, half, a.sym, a.batch_size)
    for done, batch_recs in source:
        recs = batch_recs
        _progress(done, len(stack), 1.0, "reconstruct")
    half_a, half_b, full = finalize_halves(*recs, prior=False)
    del recs, batch_recs, source  # the accumulators (the bulk of the memory) are not needed for the FSC
    write_map(out, to_numpy(full), stack.pixel_size, overwrite=a.overwrite)
    if a.halves:
        for name, v in (("half_A", half_a), ("half_B", half_b)):
            write_map(out.with_name(f"{out.stem}_{name}.mrc"), to_numpy(v), stack.pixel_size, overwrite=a.overwrite)
    res = gold_standard_fsc(half_a, half_b, stack.pixel_size)
    print(f"{out}: {len(stack)} particles, symmetry {a.sym}; half-map FSC (unmasked): "
          f"{res.res_0143:.2f} Å at 0.143, {res.res_05:.2f} Å at 0.5")
    return 0


def cmd_refine(a: argparse.Namespace) -> int:
    from cryolive.io import InputError
    from cryolive.jobs.refine import refine_job
    from cryolive.params import params_from_args
    from cryolive.refinement.refine import RefineParams
    from cryolive.refinement.sgd import SGDStep

    p = params_from_args(RefineParams, a, symmetry=a.sym, seed=a.seed, marginalize=a.marginalize,
                         use_input_poses=a.use_poses, relax_symmetry=a.relax_sym, scheduler=a.scheduler)

    def dashboard(client) -> None:  # noqa: ANN001 - distributed.Client
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)

    def show(it) -> None:  # noqa: ANN001 - RefineStep
        if isinstance(it, SGDStep):
            if it.milestone:
                print(f"ab-initio step {it.step:3d}/{it.n_steps}  {it.resolution_A:5.1f} Å  {it.seconds:.2f} s",
                      flush=True)
            return
        print(f"iteration {it.iteration:2d} {it.search:6s} {it.n_particles:6d} particles  "
              f"GSFSC {it.resolution_A:6.2f} Å  (unmasked {it.resolution_unmasked_A:6.2f} Å)  "
              f"{it.timings['total_s']:.1f} s", flush=True)

    if a.continue_job:
        from cryolive.jobs.refine import continue_refine_job

        _, result = drain(continue_refine_job(a.continue_job, save_iterations=a.save_iterations, workers=a.workers,
                                              scheduler=a.scheduler, on_client=dashboard), show)
        print(f"final resolution {result.final.resolution_A:.2f} Å; job folder {a.continue_job}")
        return 0
    missing = [flag for flag, v in (("STAR", a.star), ("--ref", a.ref), ("--out", a.out)) if v is None]
    if missing:
        raise InputError(f"{', '.join(missing)} required (or --continue JOBDIR)")
    if a.relax_sym is not None:
        from cryolive.rotations.symmetry import check_symmetry

        check_symmetry(a.relax_sym, "--relax-sym")
    _, result = drain(refine_job(a.star, a.ref, a.out, p, mask_path=a.mask, save_iterations=a.save_iterations,
                                 on_client=dashboard), show)
    from cryolive.jobs.refine import shared_band_warning

    warning = shared_band_warning(result.final, p)
    if warning:
        print(f"WARNING: {warning}")
    print(f"final resolution {result.final.resolution_A:.2f} Å; job folder {Path(a.out)}")
    return 0


def cmd_motion(a: argparse.Namespace) -> int:
    from cryolive.jobs.motion import motion_job
    from cryolive.motion import MotionParams
    from cryolive.params import params_from_args

    p = params_from_args(MotionParams, a, recenter=a.recenter, skip_wrong_frame_count=a.skip_wrong_frames,
                         seed=a.seed, gain=a.gain, gain_rot=a.gain_rot, gain_flip=a.gain_flip)

    def show(step) -> None:  # noqa: ANN001 - MotionStep
        print(f"{step.stage:5s} {step.done:4d}/{step.total:<4d} {step.micrograph_name}  {step.message}", flush=True)

    if a.continue_job:
        from cryolive.jobs.motion import continue_motion_job

        _, result = drain(continue_motion_job(a.continue_job), show)
        where = f"job folder {a.continue_job}"
    else:
        _require(a, (("STAR", a.star), ("--movies", a.movies), ("--half-a", a.half_a), ("--half-b", a.half_b),
                     ("--out", a.out)))
        _, result = drain(motion_job(a.star, a.movies, a.half_a, a.half_b, a.mask, a.out, p, hyper_path=a.hyper,
                                     dose_path=a.dose_weights), show)
        where = f"job folder under {Path(a.out)}"
    if result.hyper is not None:
        h = result.hyper
        print(f"hyper-parameters: r {h.r:.4g} /px², theta {h.theta:.3f} rad, z {h.z_A:g} Å")
    print(f"done; {where}")
    return 0


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return v


def _classify_printer() -> Any:
    """``on_step`` for the classification jobs: one line per iteration, each new warning once ("WARNING: ")."""
    warned: set[str] = set()
    job_dir: list[str] = []

    def show(it) -> None:  # noqa: ANN001 - ClassIteration
        for w in it.warnings:
            if w not in warned:
                warned.add(w)
                print(f"WARNING: {w}", flush=True)
        if it.job_dir and not job_dir:
            job_dir.append(it.job_dir)
        sizes = " ".join(f"{100 * s:5.1f}%" for s in it.class_sizes)
        res = " ".join(f"{r:5.1f}" for r in it.class_resolution_A)
        print(f"iteration {it.iteration:2d} {it.stage:6s} {it.n_particles:6d} particles  sizes {sizes}  "
              f"changed {100 * it.changed_fraction:5.1f}%  FSC 0.5 at {res} Å  {it.timings['total_s']:.1f} s",
              flush=True)

    show.job_dir = job_dir  # type: ignore[attr-defined]
    return show


def _report_classes(show: Any, result: Any, out: str) -> None:  # noqa: ANN401 - printer, ClassifyResult
    import numpy as np

    counts = np.bincount(result.classes, minlength=len(result.final.class_sizes) + 1)[1:]
    where = show.job_dir[0] if show.job_dir else f"under {Path(out)}"
    print(f"job folder {where}")
    for c, (s, r) in enumerate(zip(result.final.class_sizes, result.final.class_resolution_A, strict=True)):
        print(f"  class {c + 1}: {100 * s:5.1f} % ({counts[c]} particles), FSC 0.5 at {r:.1f} Å")


def _continue_classes(a: argparse.Namespace, kind: str) -> int:
    """``cryolive classify|hetero --continue JOBDIR``: go on with the job in its folder (options from params.json)."""
    from cryolive.jobs.classify import continue_classify_job

    show = _classify_printer()
    _, result = drain(continue_classify_job(a.continue_job, kind=kind), show)
    _report_classes(show, result, a.continue_job)
    return 0


def _require(a: argparse.Namespace, options: Sequence[tuple[str, Any]]) -> None:
    """InputError naming the options (flag, value) left out, which only ``--continue JOBDIR`` makes optional."""
    from cryolive.io import InputError

    missing = [flag for flag, v in options if v is None]
    if missing:
        raise InputError(f"{', '.join(missing)} required (or --continue JOBDIR)")


def cmd_classify(a: argparse.Namespace) -> int:
    from cryolive.classification.classify import ClassifyParams
    from cryolive.jobs.classify import classify_job
    from cryolive.params import params_from_args

    if a.continue_job:
        return _continue_classes(a, "classify")
    _require(a, (("STAR", a.star), ("--k", a.k), ("--out", a.out)))
    if a.k < 1:
        raise ValueError(f"--k must be at least 1 (got {a.k})")
    p = params_from_args(ClassifyParams, a, mode="local" if a.local_search else "fixed", symmetry=a.sym,
                         seed=a.seed)
    show = _classify_printer()
    _, result = drain(classify_job(a.star, a.out, p, solvent_mask=a.solvent_mask, focus_mask=a.focus_mask,
                                   consensus=a.consensus), show)
    _report_classes(show, result, a.out)
    return 0


def cmd_hetero(a: argparse.Namespace) -> int:
    from cryolive.classification.classify import ClassifyParams
    from cryolive.jobs.classify import classify_job
    from cryolive.params import params_from_args

    if a.continue_job:
        return _continue_classes(a, "hetero")
    _require(a, (("STAR", a.star), ("--ref", a.ref), ("--out", a.out)))
    p = params_from_args(ClassifyParams, a, n_classes=len(a.ref), mode="hetero",
                         hetero_search="local" if a.local else "global", symmetry=a.sym, seed=a.seed)
    show = _classify_printer()
    _, result = drain(classify_job(a.star, a.out, p, starts=a.ref, solvent_mask=a.mask), show)
    _report_classes(show, result, a.out)
    return 0


def cmd_class2d(a: argparse.Namespace) -> int:
    import numpy as np

    from cryolive.class2d import Class2DParams
    from cryolive.jobs.class2d import class2d_job
    from cryolive.params import params_from_args

    p = params_from_args(Class2DParams, a, seed=a.seed)
    job_dir: list[str] = []

    def show(it) -> None:  # noqa: ANN001 - Class2DIteration
        if it.job_dir and not job_dir:
            job_dir.append(it.job_dir)
        n = max(int(it.sizes.sum()), 1)
        live = np.isfinite(it.resolution_A) & (it.sizes > 0)
        best = f"{it.resolution_A[live].min():.1f} Å" if live.any() else "-"
        print(f"iteration {it.iteration}: changed {100 * it.changed_fraction:.1f} %, largest class "
              f"{100 * it.sizes.max() / n:.0f} %, best resolution {best} ({it.seconds:.1f} s)", flush=True)

    _, result = drain(class2d_job(a.star, a.out, p), show)
    print(f"job folder {job_dir[0] if job_dir else Path(a.out)}")
    for c in np.argsort(-result.sizes, kind="stable"):
        r = result.resolution_A[c]
        print(f"  class {c + 1}: {result.sizes[c]} particles, {r:.1f} Å" if np.isfinite(r)
              else f"  class {c + 1}: {result.sizes[c]} particles")
    return 0


def cmd_fsc(a: argparse.Namespace) -> int:
    from cryolive.io import InputError, check_map_content, check_mask_values, read_map
    from cryolive.io.preflight import check_output_file
    from cryolive.resolution.fsc import gold_standard_fsc

    if a.csv is not None:
        check_output_file(a.csv, "--csv")
    va, pa = read_map(a.map_a)
    vb, pb = read_map(a.map_b)
    check_map_content(va, a.map_a)
    check_map_content(vb, a.map_b)
    if va.shape != vb.shape:
        raise InputError(f"{a.map_b}: box {vb.shape} differs from {a.map_a} {va.shape}")
    if abs(pa - pb) > 0.01 * pa:
        raise InputError(f"{a.map_b}: pixel size {pb:.4f} Å differs from {a.map_a} ({pa:.4f} Å)")
    mask = None
    if a.mask:
        mask, _ = read_map(a.mask)
        if mask.shape != va.shape:
            raise InputError(f"{a.mask}: mask box {mask.shape} differs from the maps' {va.shape}")
        check_mask_values(mask, a.mask)
    res = gold_standard_fsc(va, vb, pa, mask=mask)
    kind = "masked, phase-randomisation corrected" if mask is not None else "unmasked"
    print(f"FSC ({kind}): {res.res_0143:.2f} Å at 0.143, {res.res_05:.2f} Å at 0.5 (pixel {pa:.4g} Å)")
    if a.csv:
        if Path(a.csv).exists():
            raise FileExistsError(f"{a.csv} exists: choose another --csv path")
        res.to_csv(a.csv)
        print(f"wrote {a.csv}")
    return 0


def cmd_mask(a: argparse.Namespace) -> int:
    from cryolive.backend import to_numpy
    from cryolive.io import InputError, check_map_content, read_map, write_map
    from cryolive.io.preflight import check_output_file
    from cryolive.masks import mask_volume_fraction, solvent_mask_from_map

    check_output_file(a.out)
    if not 0 < a.threshold <= 1:
        raise InputError(f"--threshold must lie in (0, 1] (a fraction of the map's maximum), not {a.threshold:g}")
    if not (a.dilate >= 0 and a.soft >= 0):
        raise InputError(f"--dilate and --soft must be at least 0 Å (got {a.dilate:g}, {a.soft:g})")
    if a.lowpass is not None and not a.lowpass > 0:
        raise InputError(f"--lowpass must be more than 0 Å (got {a.lowpass:g})")
    vol, apix = read_map(a.map)
    check_map_content(vol, a.map)
    mask = to_numpy(solvent_mask_from_map(vol, apix, a.threshold, a.dilate, a.soft, a.lowpass))
    write_map(a.out, mask, apix)
    print(f"wrote {a.out}: volume fraction {mask_volume_fraction(mask):.3f} (threshold {a.threshold} of max, "
          f"dilate {a.dilate} Å, soft edge {a.soft} Å)")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Refine the bundled sample data from its 20 Å reference (``--reconstruct``: known-pose reconstruction)."""
    from cryolive.sample import sample_path

    if a.reconstruct:
        from cryolive.jobs.reconstruct import ReconstructParams, reconstruct_job

        params = ReconstructParams(particles=str(sample_path("particles.star")), out=a.out)
        _, result = drain(reconstruct_job(params),
                          lambda p: _progress(p.n_done, p.n_total, p.elapsed_s, "reconstruct"))
        _report_demo(result)
        return 0
    from cryolive.backend import device_label
    from cryolive.jobs.refine import refine_job
    from cryolive.refinement.refine import RefineParams

    out = Path(a.out)
    before = set(out.glob("job_refine_*")) if out.exists() else set()
    print(f"refining {sample_path('particles.star')} (poses in the file are ignored: global search) from "
          f"{sample_path('reference.mrc')} on {device_label()}", flush=True)
    gen = refine_job(str(sample_path("particles.star")), str(sample_path("reference.mrc")), str(out),
                     RefineParams(seed=a.seed, max_iter=a.max_iter))
    _, result = drain(gen, lambda it: print(
        f"  iteration {it.iteration} ({it.search}, {it.n_particles} particles, aligned to "
        f"{it.align_resolution_A:.1f} Å): GSFSC {it.resolution_A:.2f} Å masked, {it.resolution_unmasked_A:.2f} Å "
        f"unmasked; {it.timings['total_s']:.0f} s", flush=True))
    job_dir = sorted(set(out.glob("job_refine_*")) - before)[-1]
    _report_refine_demo(result, job_dir)
    return 0


def _report_refine_demo(result, job_dir: Path) -> None:  # noqa: ANN001 - RefineResult
    """Print what the demo refinement reached against the sample's truth, and where to look."""
    import numpy as np

    from cryolive.io import read_map, read_particles
    from cryolive.resolution.fsc import fsc, resolution_at
    from cryolive.rotations.euler import angular_distance
    from cryolive.sample import sample_path

    truth, apix = read_map(sample_path("truth_map.mrc"))
    true = read_particles(sample_path("particles.star"))
    fin = result.final
    n = truth.shape[0]
    avg = 0.5 * (fin.half_a + fin.half_b)
    ang = np.degrees(angular_distance(result.rotations, true.rotations))
    shift = np.linalg.norm(result.shifts_A - true.shifts, axis=1) / apix
    print(f"job folder: {job_dir}")
    in_mask = resolution_at(fsc(avg, truth, mask=fin.fsc_mask), n, apix, 0.5)
    whole = resolution_at(fsc(avg, truth), n, apix, 0.5)
    print(f"  gold-standard FSC 0.143: {fin.resolution_A:.2f} Å in the FSC mask (the true map gives {in_mask:.2f} Å "
          f"at 0.5 in that mask), {fin.resolution_unmasked_A:.2f} Å unmasked (true map: {whole:.2f} Å)")
    print(f"  poses against the true ones: median angular error {np.median(ang):.1f}°, "
          f"median origin error {np.median(shift):.2f} px, {100 * np.mean(ang > 20):.1f} % more than 20° off")
    print("  look at: map.mrc / map_sharp.mrc (B-factor in log.txt), half_A.mrc / half_B.mrc, mask_refine.mrc, "
          "mask_fsc.mrc, fsc.png, iterations.csv, particles.star, log.txt")
    print(f"  in napari: napari {job_dir}/map_sharp.mrc {job_dir}/mask_fsc.mrc; to watch the same refinement "
          "live: cryolive gui, then Start in the Refinement dock")


def _report_demo(result) -> None:  # noqa: ANN001 - ReconstructResult
    from cryolive.io import read_map
    from cryolive.resolution.fsc import fsc, resolution_at
    from cryolive.sample import sample_path

    truth, _ = read_map(sample_path("truth_map.mrc"))
    full = (result.half_a + result.half_b) / 2
    n = truth.shape[0]
    vs_truth = resolution_at(fsc(full, truth), n, result.pixel_size, 0.5)
    unmasked = resolution_at(result.fsc.fsc_unmasked, n, result.pixel_size, 0.143)
    print(f"job folder: {result.job_dir}")
    print(f"  gold-standard FSC 0.143: {result.resolution:.2f} Å masked and corrected, {unmasked:.2f} Å unmasked")
    print(f"  FSC of the map against the true map at 0.5 (unmasked): {vs_truth:.2f} Å "
          "(should agree with the unmasked gold-standard value)")
    print(f"  Guinier B-factor: {result.bfactor:.0f} Å^2; time {result.timings['total_s']:.1f} s")
    print("  look at: fsc.png (FSC curves), map.mrc / map_sharp.mrc / mask_fsc.mrc, log.txt")
    print(f"  in napari: napari {result.job_dir}/map_sharp.mrc {result.job_dir}/mask_fsc.mrc")


def cmd_gui(a: argparse.Namespace) -> int:
    """napari with the sample map (or the given maps) and cryolive's Masks and Refinement docks."""
    from cryolive.plugin import napari  # one line "install cryolive[gui]" when the GUI packages are missing
    from cryolive.sample import sample_path

    viewer = napari.Viewer()
    if a.maps:
        for path in a.maps:
            viewer.open(path, plugin="cryolive")
    elif not a.empty:
        viewer.open_sample("cryolive", "sample_map")
    viewer.window.add_plugin_dock_widget("cryolive", "Masks")
    _, refine = viewer.window.add_plugin_dock_widget("cryolive", "Refinement")
    particles = a.particles or (str(sample_path("particles.star")) if not (a.empty or a.maps) else "")
    if particles:
        refine.particles_edit.setText(particles)
    if a.out:
        refine.out_edit.setText(a.out)
    napari.run()
    return 0


def _add_run_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--sym", default="C1", help="symmetry (C1, Cn, Dn, T, O, I1, I2)")
    s.add_argument("--seed", type=int, default=0)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line (the subcommand, the option and the problem) instead of the whole
    usage text; ``--help`` still prints it all. Options from a parameter spec (:meth:`add_spec_options`) are
    added when the parser is first used, so that ``cryolive`` loads the params modules of its command only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[tuple[str, str, dict[str, Any]]] = []

    def add_spec_options(self, module: str, cls_name: str, **kwargs: Any) -> None:
        """The options :func:`cryolive.params.add_arguments` makes for ``module.cls_name`` (``kwargs``: its
        ``only``, ``exclude``, ``override``), added when this parser parses or shows its help."""
        self._pending.append((module, cls_name, kwargs))

    def _add_pending(self) -> None:
        import importlib

        from cryolive.params import add_arguments

        while self._pending:
            module, cls_name, kwargs = self._pending.pop(0)
            add_arguments(self, getattr(importlib.import_module(module), cls_name), **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # noqa: ANN401 - argparse's
        self._add_pending()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_pending()
        return super().format_help()

    def format_usage(self) -> str:
        self._add_pending()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cryolive", description="Cryo-EM single-particle analysis that streams into napari.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate particles from a phantom with known poses, CTFs and states")
    s.add_argument("--out", required=True, help="output folder (created; must not exist or be empty)")
    s.add_spec_options("cryolive.simulator.dataset", "SimulationParams")
    s.add_argument("--seed", type=int, default=0, help="random seed (the data are deterministic for a seed)")
    s.add_argument("--sym", default="C1", help="point-group symmetry of the phantom (C1, Cn, Dn, T, O, I1, I2)")
    s.add_argument("--float16", action="store_true", help="write the stack as float16 (half the size)")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("project", help="project a map at the poses, shifts and CTFs of a particle file")
    s.add_argument("map", help="MRC map")
    s.add_argument("--particles", required=True, help="RELION STAR or cryoSPARC .cs with poses")
    s.add_argument("--out", required=True, help="output stack .mrcs (a matching .star is written beside it)")
    s.add_argument("--no-ctf", action="store_true", help="do not apply the CTF")
    s.add_argument("--batch-size", type=int, default=256)
    s.set_defaults(func=cmd_project)

    s = sub.add_parser("reconstruct", help="reconstruct a map from particles with known poses")
    s.add_argument("star", help="RELION STAR (or cryoSPARC .cs) with poses")
    s.add_argument("--out", required=True, help="output map .mrc")
    s.add_argument("--sym", default="C1", help="symmetry applied on insertion (default C1)")
    s.add_argument("--halves", action="store_true", help="also write <out>_half_A.mrc and <out>_half_B.mrc")
    s.add_spec_options("cryolive.jobs.reconstruct", "ReconstructParams")
    s.add_argument("--seed", type=int, default=0, help="seed of the random half split when the file has none")
    s.add_argument("--overwrite", action="store_true", help="allow replacing existing output files")
    s.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="back-project on an existing Dask cluster (e.g. tcp://host:8786)")
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("refine", help="homogeneous refinement (gold-standard EM, global pose search)")
    s.add_argument("star", nargs="?", help="particles: RELION STAR or cryoSPARC .cs with CTFs (poses are ignored "
                                           "unless --use-poses)")
    s.add_argument("--ref", help="reference map (same box and pixel size as the particles)")
    s.add_argument("--out", help="parent folder of the new job folder job_refine_<nnn>")
    s.add_argument("--continue", dest="continue_job", metavar="JOBDIR",
                   help="go on with a killed or stopped refinement from its last completed iteration, in its folder "
                        "(the other options are taken from its params.json)")
    s.add_argument("--mask", help="static mask (else a sphere, then a dynamic mask from the half maps)")
    s.add_argument("--sym", default="C1", help="symmetry (C1, Cn, Dn, T, O, I1, I2)")
    s.add_spec_options("cryolive.refinement.refine", "RefineParams")
    s.add_argument("--use-poses", action="store_true",
                   help="start from the particles' own poses with local searches (a previous refinement's)")
    s.add_argument("--relax-sym", default=None, metavar="SYM",
                   help="pseudo-symmetry to relax (RELION's --relax_sym): local searches also try each mate of the "
                        "pose under SYM and keep the best; the map keeps --sym")
    s.add_argument("--marginalize", action="store_true", help="adaptive marginalisation over the best poses")
    s.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="search and insert on an existing Dask cluster (e.g. tcp://host:8786)")
    s.add_argument("--save-iterations", action="store_true", help="write the map of every iteration")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_refine)

    s = sub.add_parser("motion", help="reference-based motion correction (Bayesian polishing) of MRC/TIFF movies")
    s.add_argument("star", nargs="?", help="particles STAR with poses, CTFs, rlnMicrographName and rlnCoordinateX/Y")
    s.add_argument("--movies",
                   help="folder holding the movies (MRC stacks .mrc/.mrcs or multi-page TIFF .tif/.tiff; no EER), "
                        "or a STAR listing them")
    s.add_argument("--gain", help="gain reference (MRC or TIFF, frame-sized) multiplied into every frame")
    s.add_argument("--gain-rot", type=int, choices=(0, 1, 2, 3), default=0,
                   help="rotate the gain by N x 90 degrees counter-clockwise, y up (as RELION's --gain_rot)")
    s.add_argument("--gain-flip", type=int, choices=(0, 1, 2), default=0,
                   help="then flip the gain: 0 no, 1 upside down, 2 left-right (as RELION's --gain_flip)")
    s.add_argument("--half-a", help="half map A (particles with rlnRandomSubset 1)")
    s.add_argument("--half-b", help="half map B (rlnRandomSubset 2)")
    s.add_argument("--mask", help="mask applied to the half maps before projecting references")
    s.add_argument("--out", help="parent folder of the new job folder job_motion_<nnn>")
    s.add_argument("--continue", dest="continue_job", metavar="JOBDIR",
                   help="go on with a killed or stopped motion correction from its last completed search step or "
                        "micrograph, in its folder (the other options are taken from its params.json)")
    s.add_argument("--hyper", help="hyperparameters.json of a previous job (skips the search)")
    s.add_argument("--dose-weights", help="dose_weights.npz of a previous job (skips the dose estimation)")
    s.add_spec_options("cryolive.motion", "MotionParams")
    s.add_argument("--recenter", action="store_true", help="re-centre the picks on the refinement's origins")
    s.add_argument("--skip-wrong-frames", action="store_true", help="skip movies with an uncommon frame count")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_motion)

    s = sub.add_parser("classify", help="3D classification with fixed poses (or a local search), focus/solvent masks")
    s.add_argument("star", nargs="?",
                   help="particles with poses and CTFs (RELION STAR or cryoSPARC .cs), e.g. from a refinement")
    s.add_argument("--out", metavar="JOBDIR", help="parent folder of the new job folder job_classify_<nnn>")
    s.add_argument("--continue", dest="continue_job", metavar="JOBDIR",
                   help="go on with a killed or stopped classification from its last completed iteration, in its "
                        "folder (the other options are taken from its params.json)")
    s.add_argument("--solvent-mask", metavar="MRC",
                   help="solvent mask S (a single mask goes here; default: made from the consensus map)")
    s.add_argument("--focus-mask", metavar="MRC",
                   help="focus mask F: classes differ only inside it, S·(F·V_k + (1−F)·V̄)")
    s.add_argument("--consensus", metavar="MRC",
                   help="consensus map V̄ (default: reconstructed from all particles at their poses)")
    s.add_argument("--local-search", action="store_true", help="local pose search per class around the input poses")
    s.add_spec_options("cryolive.classification.classify", "ClassifyParams", exclude=("class_box", "coarse_step_deg"),
                       override={"n_classes": {"default": None}, "class_similarity": {"type": _fraction}})
    _add_run_options(s)
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("hetero", help="heterogeneous refinement: K classes from K starting maps, pose search per class")
    s.add_argument("star", nargs="?",
                   help="particles with CTFs (RELION STAR or cryoSPARC .cs); poses only needed for --local")
    s.add_argument("--ref", nargs="+", metavar="MAP",
                   help="starting maps, one per class (the particles' box and pixel size)")
    s.add_argument("--out", metavar="JOBDIR", help="parent folder of the new job folder job_hetero_<nnn>")
    s.add_argument("--continue", dest="continue_job", metavar="JOBDIR",
                   help="go on with a killed or stopped heterogeneous refinement from its last completed iteration, "
                        "in its folder (the other options are taken from its params.json)")
    s.add_argument("--mask", metavar="MRC", help="solvent mask (default: made from the mean starting map)")
    s.add_argument("--local", action="store_true", help="local pose search around the input poses (not global)")
    s.add_spec_options("cryolive.classification.classify", "ClassifyParams", exclude=("n_classes",),
                       override={"class_similarity": {"type": _fraction}})
    _add_run_options(s)
    s.set_defaults(func=cmd_hetero)

    s = sub.add_parser("class2d", help="reference-free 2D classification (maximum likelihood, RELION-like)")
    s.add_argument("star", help="particles with CTFs (RELION STAR or cryoSPARC .cs); poses are not needed")
    s.add_argument("--out", required=True, metavar="JOBDIR",
                   help="parent folder of the new job folder job_class2d_<nnn>")
    s.add_spec_options("cryolive.class2d", "Class2DParams", override={"k": {"required": True, "default": None}})
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_class2d)

    s = sub.add_parser("fsc", help="FSC between two maps; prints the 0.143 and 0.5 resolutions in Å")
    s.add_argument("map_a")
    s.add_argument("map_b")
    s.add_argument("--mask", help="mask (FSC corrected by phase randomisation)")
    s.add_argument("--csv", help="write the curves to this CSV file")
    s.set_defaults(func=cmd_fsc)

    s = sub.add_parser("mask", help="threshold a map into a soft mask")
    s.add_argument("map")
    s.add_argument("--threshold", type=float, required=True, help="fraction of the map maximum (0-1]")
    s.add_argument("--dilate", type=float, default=3.0, help="dilation in Å (3)")
    s.add_argument("--soft", type=float, default=6.0, help="raised-cosine soft edge width in Å (6)")
    s.add_argument("--lowpass", type=float, default=None, help="low-pass the map to this resolution (Å) first")
    s.add_argument("--out", required=True, help="output mask .mrc")
    s.set_defaults(func=cmd_mask)

    s = sub.add_parser("demo", help="refine the bundled sample data from its 20 Å reference (a few minutes on CPU)")
    s.add_argument("--out", default="demo_output", help="parent folder of the job folder (demo_output)")
    s.add_argument("--seed", type=int, default=0, help="random seed (half sets, minibatches)")
    s.add_argument("--max-iter", type=int, default=12, help="maximum refinement iterations (12)")
    s.add_argument("--reconstruct", action="store_true",
                   help="instead: known-pose reconstruction of the sample (half maps, FSC, mask, sharpening)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("gui", help="open napari with the cryolive sample map and the Masks and Refinement docks")
    s.add_argument("maps", nargs="*", help="maps to open instead of the sample map (MRC)")
    s.add_argument("--empty", action="store_true", help="do not open the sample map")
    s.add_argument("--particles", help="particle file for the Refinement dock (default: the sample particles)")
    s.add_argument("--out", help="output folder for the Refinement dock's jobs (default ./jobs)")
    s.set_defaults(func=cmd_gui)
    return p


def _stop_on_sigterm() -> None:
    """Make SIGTERM (``kill PID``, a cluster's time limit) stop a job as Ctrl-C does: the job folder says
    ``stopped`` and keeps the last completed iteration's checkpoint (main thread only)."""
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


class _CurrentStderrHandler(logging.Handler):
    """A logging handler that writes to whatever ``sys.stderr`` is when a record is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cryolive`` command."""
    from cryolive.io import InputError

    args = build_parser().parse_args(argv)
    _stop_on_sigterm()
    # notes such as a reference resampled to the particles, one line each on the stderr of the moment (main can
    # run several times in one process, e.g. in tests, each with its own stream and command)
    logger = logging.getLogger("cryolive")
    handler = next((h for h in logger.handlers if isinstance(h, _CurrentStderrHandler)), None)
    if handler is None:
        handler = _CurrentStderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(f"cryolive {args.command}: warning: %(message)s"))
    if isinstance(getattr(args, "out", None), str) and not args.out.strip():
        print(f"cryolive {args.command}: error: --out is empty: name the output", file=sys.stderr)
        return 2
    import warnings

    def one_line(message: object) -> str:
        return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())

    def show_warning(message: Warning | str, *_: object, **__: object) -> None:  # one line, no source excerpt
        print(f"cryolive {args.command}: warning: {one_line(message)}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.func(args) or 0)
    except (InputError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"cryolive {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryolive {args.command}: stopped (the job folder keeps what was completed)", file=sys.stderr)
        return 130
    except MemoryError as exc:
        print(f"cryolive {args.command}: error: out of memory ({exc or 'allocation failed'}); choose a smaller "
              "box, class box or --batch-size", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a folder where a file was expected, a full disk...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cryolive {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
