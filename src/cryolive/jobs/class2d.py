"""2D classification as a job: the :func:`cryolive.class2d.classify2d` generator plus a job folder.

``class2d_job`` yields the core generator's :class:`Class2DIteration` objects (with ``job_dir`` set) and writes
``<out>/job_class2d_<nnn>/``:

    classes.mrcs        the K class averages (RELION's run_itNNN_classes.mrcs layout: one K-image stack, pixel size
                        set), rewritten every iteration
    class_sizes.csv     per class: class (1-based), particles, fraction, resolution_A (rewritten every iteration)
    iterations.csv      per iteration: changed fraction, mean max posterior, largest class, best resolution, time
    gallery.png         the averages sorted by size, with size and resolution under each (every iteration)
    particles.star      at the end: the input rows plus rlnClassNumber (1-based), rlnAnglePsi, rlnOriginXAngst/
                        YAngst and rlnMaxValueProbDistribution (any input rlnAngleRot/Tilt are dropped: 2D
                        classification replaces the poses by in-plane ones)
    params.json, log.txt, status.json
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np

from cryolive.backend import backend_name, device_label
from cryolive.class2d.classify2d import Class2DIteration, Class2DParams, Class2DResult, classify2d
from cryolive.io import InputError, ParticleStack, read_particles, write_stack, write_star
from cryolive.io.particles import check_image_statistics
from cryolive.io.preflight import check_output_parent
from cryolive.jobs.jobdir import JobFolder, run_in_job, write_csv
from cryolive.params import check_params


def _check_params(p: Class2DParams, n: int, source: str, out: str) -> None:
    """One clear line naming the flag for parameters out of range or that this particle set cannot take, and
    an output place that cannot be written."""
    check_params(p)
    if p.k > n:
        raise InputError(f"{source}: --k {p.k} is more classes than particles ({n})")
    check_output_parent(out)


def class2d_job(particles_path: str, out: str = "jobs", params: Class2DParams | None = None
                ) -> Generator[Class2DIteration, None, Class2DResult]:
    """Run 2D classification of ``particles_path`` (STAR or .cs) into a new job folder ``<out>/job_class2d_<nnn>``,
    yielding each iteration; returns the result. Inputs are checked before the folder is made (InputError)."""
    p = params or Class2DParams()
    t0 = time.perf_counter()
    stack = read_particles(particles_path)
    check_image_statistics(stack)
    _check_params(p, len(stack), particles_path, out)
    job = JobFolder.create(out, "class2d")
    job.write_params({"particles": particles_path, **dataclasses.asdict(p), "backend": backend_name(),
                      "n_particles": len(stack), "pixel_size_A": stack.pixel_size, "box": stack.box})
    job.set_status("running", iteration=0)
    diameter = p.diameter_A or 0.9 * stack.box * stack.pixel_size
    job.log(f"2D classification on {device_label()}: {len(stack)} particles, box {stack.box}, "
            f"{stack.pixel_size:.4g} Å/px, {p.k} classes, mask diameter {diameter:.0f} Å, psi step "
            f"{p.psi_step_deg:g}° (fine {p.psi_step_deg / p.psi_oversampling:g}°)")
    history: list[dict] = []

    def on_step(it: Class2DIteration) -> Class2DIteration:
        _log_iteration(job, it, len(stack))
        history.append(_summary(it))
        _write_iteration(job, it, stack.pixel_size, history)
        job.set_status("running", iteration=it.iteration)
        return dataclasses.replace(it, job_dir=str(job.path))

    result: Class2DResult = yield from run_in_job(
        job, classify2d(stack, p), on_step, lambda: {"last_iteration": len(history)},
        finish=lambda r: write_star(_classified(stack, r), job.file("particles.star")))
    job.log("wrote particles.star (rlnClassNumber, rlnAnglePsi, rlnOriginXAngst/YAngst, "
            "rlnMaxValueProbDistribution), classes.mrcs, class_sizes.csv, iterations.csv, gallery.png")
    job.log(f"finished in {time.perf_counter() - t0:.1f} s")
    job.set_status("finished", iteration=result.iterations, class_sizes=[int(s) for s in result.sizes])
    job.close()
    return result


def _classified(stack: ParticleStack, result: Class2DResult) -> ParticleStack:
    """The input particles with the classification's class, in-plane angle, origins and max posterior."""
    table = stack.table.drop(columns=[c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
                                      if c in stack.table.columns])
    plain = stack.replace(rotations=None, table=table)
    return plain.with_poses(None, result.shifts_A, class_number=result.assignments + 1,
                            extra_columns={"rlnAnglePsi": np.round(result.psi_deg, 3),
                                           "rlnMaxValueProbDistribution": np.round(result.max_prob, 5)})


def _summary(it: Class2DIteration) -> dict:
    n = max(int(it.sizes.sum()), 1)
    finite = it.resolution_A[np.isfinite(it.resolution_A) & (it.sizes > 0)]
    return {"iteration": it.iteration, "stage": it.stage, "n_particles": it.n_particles,
            "changed_fraction": round(it.changed_fraction, 5), "mean_max_prob": round(it.mean_max_prob, 4),
            "largest_class_fraction": round(float(it.sizes.max()) / n, 4),
            "best_resolution_A": round(float(finite.min()), 2) if finite.size else float("inf"),
            "limit_A": round(it.limit_A, 2), "reseeded": " ".join(str(k + 1) for k in it.reseeded),
            "seconds": round(it.seconds, 2)}


def _log_iteration(job: JobFolder, it: Class2DIteration, n_total: int) -> None:
    s = _summary(it)
    job.log(f"iteration {it.iteration} ({it.stage}, {it.n_particles} of {n_total} particles, shells to "
            f"{it.limit_A:.1f} Å): {100 * it.changed_fraction:.1f} % changed class, mean max posterior "
            f"{it.mean_max_prob:.3f}, largest class {100 * s['largest_class_fraction']:.1f} %, best resolution "
            f"{s['best_resolution_A']:.1f} Å" + (f"; re-seeded class(es) {s['reseeded']}" if it.reseeded else "")
            + f"; {it.seconds:.1f} s")


def _write_iteration(job: JobFolder, it: Class2DIteration, pixel_size: float, history: list[dict]) -> None:
    write_stack(job.file("classes.mrcs"), it.averages, pixel_size, overwrite=True)
    n = max(int(it.sizes.sum()), 1)
    write_csv(job.file("class_sizes.csv"),
              [{"class": k + 1, "particles": int(s), "fraction": round(float(s) / n, 5),
                "resolution_A": round(float(r), 2) if np.isfinite(r) else "inf"}
               for k, (s, r) in enumerate(zip(it.sizes, it.resolution_A, strict=True))])
    write_csv(job.file("iterations.csv"), history)
    plot_gallery(it.averages, it.sizes, it.resolution_A, job.file("gallery.png"))


def gallery_order(sizes: np.ndarray) -> np.ndarray:
    """Class indices (0-based) from the largest class to the smallest (ties: lower class first)."""
    return np.argsort(-np.asarray(sizes), kind="stable")


def plot_gallery(averages: np.ndarray, sizes: np.ndarray, resolution_A: np.ndarray, path: str | Path,
                 columns: int = 10) -> None:
    """A PNG grid of the averages ``(K, n, n)`` sorted by size, each titled with its class number, particle count
    and resolution; written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from cryolive.io._atomic import atomic_path

    order = gallery_order(sizes)
    k = len(order)
    cols = min(columns, k)
    rows = int(np.ceil(k / cols))
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    total = max(int(np.sum(sizes)), 1)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, c in zip(axes.ravel(), order, strict=False):
        img = averages[c]
        lo, hi = np.percentile(img, [1, 99.5]) if img.any() else (0.0, 1.0)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        res = f"{resolution_A[c]:.0f} Å" if np.isfinite(resolution_A[c]) else "- Å"
        ax.set_title(f"{c + 1}: {int(sizes[c])} ({100 * sizes[c] / total:.0f}%)\n{res}", fontsize=7)
    fig.tight_layout(pad=0.3)
    with atomic_path(Path(path), True) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
