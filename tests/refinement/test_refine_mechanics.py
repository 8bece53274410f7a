"""Refinement mechanics on the bundled sample data: stopping, marginalisation, scale modes, streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryolive.io import read_map, read_particles
from cryolive.jobs import drain
from cryolive.jobs.refine import refine_job
from cryolive.refinement.refine import RefineIteration, RefineParams, refine
from cryolive.refinement.sgd import SGDStep
from cryolive.sample import sample_path

FAST = dict(max_iter=2, global_iters=1, coarse_step_deg=15.0, levels=2, minibatch_iters=0, batch_size=500)


def test_stop_mid_run_leaves_a_consistent_folder(tmp_path):
    gen = refine_job(str(sample_path("particles.star")), str(sample_path("reference.mrc")), str(tmp_path),
                     RefineParams(**{**FAST, "max_iter": 5}))
    first = next(gen)
    assert first.iteration == 1
    gen.close()  # the Stop button
    job = tmp_path / "job_refine_001"
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "stopped" and status["last_iteration"] == 1
    assert "STOPPED" in (job / "log.txt").read_text()
    assert (job / "iterations.csv").read_text().count("\n") == 2  # header + one iteration
    assert not list(job.glob(".*tmp*"))


def test_ab_initio_steps_stream_before_the_iterations_and_stop(tmp_path):
    """With ``sgd_steps`` the job yields one SGDStep per ab-initio step (numbered, at a coarsening-to-finer
    resolution) before iteration 1, writes the ab-initio map, and a stop during those steps leaves a folder that
    says how far it got."""
    args = (str(sample_path("particles.star")), str(sample_path("reference.mrc")))
    params = RefineParams(**{**FAST, "max_iter": 1, "sgd_steps": 4, "sgd_batch_size": 100})
    steps, result = drain(refine_job(*args, str(tmp_path), params))
    sgd = [s for s in steps if isinstance(s, SGDStep)]
    assert [s.step for s in sgd] == [1, 2, 3, 4] and all(s.n_steps == 4 for s in sgd)
    assert sgd[0].resolution_A > sgd[-1].resolution_A  # the resolution anneals upwards
    assert isinstance(steps[-1], RefineIteration) and steps[4:] == [steps[-1]] and result.final.iteration == 1
    job = tmp_path / "job_refine_001"
    ab, apix = read_map(job / "ab_initio.mrc")
    assert ab.shape == result.final.map.shape and np.isfinite(ab).all() and ab.max() > 0
    log = (job / "log.txt").read_text()
    assert "ab-initio step 4/4" in log and "wrote ab_initio.mrc" in log

    gen = refine_job(*args, str(tmp_path), params)
    assert next(gen).step == 1 and next(gen).step == 2
    gen.close()  # Stop during the ab-initio steps
    job = tmp_path / "job_refine_002"
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "stopped" and status["ab_initio_steps"] == 2 and status["last_iteration"] == 0
    assert "STOPPED" in (job / "log.txt").read_text() and not (job / "ab_initio.mrc").exists()


@pytest.mark.slow
def test_marginalisation_and_scale_reset_run_and_stay_sane(tmp_path):
    stack = read_particles(sample_path("particles.star"))
    ref, _ = read_map(sample_path("reference.mrc"))
    truth, _ = read_map(sample_path("truth_map.mrc"))
    gen = refine(stack.subset(np.arange(800)), ref,
                 RefineParams(**{**FAST, "marginalize": True, "marginal_top": 3, "scale_mode": "reset"}))
    its, result = drain(gen)
    assert len(its) == 2 and np.all(result.scales == 1.0)
    fin = result.final
    assert np.isfinite(fin.map).all() and fin.map.dtype == np.float32 and fin.map.shape == truth.shape
    # the map still looks like the truth at low resolution
    from cryolive.resolution.fsc import fsc

    assert fsc(fin.map, truth)[1:4].min() > 0.8
    assert fin.angular_distribution.sum() == 800


def test_working_box_follows_the_resolution_and_the_last_iteration_uses_the_whole_box():
    """Iterations before the final passes work in a box cut to the alignment radius (with its margin); the last
    uses the particle box, and the map is as good against the truth as with the whole box throughout."""
    stack = read_particles(sample_path("particles.star"))
    ref, _ = read_map(sample_path("reference.mrc"))
    truth, _ = read_map(sample_path("truth_map.mrc"))
    n = stack.box
    runs = {}
    for wb in (True, False):
        p = RefineParams(**{**FAST, "max_iter": 3, "working_box": wb, "working_margin_px": 2.0})
        its = [s for s in drain(refine(stack, ref, p))[0] if isinstance(s, RefineIteration)]
        runs[wb] = its
    boxes = [it.working_box for it in runs[True]]
    assert boxes[0] < n and boxes[-1] == n, boxes
    assert all(it.working_box == n for it in runs[False])
    # the first iteration's resolution is not claimed beyond what its box holds
    assert runs[True][0].resolution_A >= 2 * stack.pixel_size * n / boxes[0] * 0.99
    from cryolive.resolution.fsc import fsc, resolution_at

    res = {wb: resolution_at(fsc(its[-1].map, truth), n, stack.pixel_size, 0.5) for wb, its in runs.items()}
    assert res[True] <= 1.05 * res[False], res


def test_a_particle_diameter_scores_the_images_inside_relions_soft_circle():
    """--particle-diameter 80 at 3 Å/px, box 48: 1 out to 13.3 px, 0 from 18.3 px (RELION's 5 px edge); without
    it, cryoSPARC's window (85-99 % of the half box); a diameter wider than that window leaves the window."""
    from cryolive.alignment.pixels import scoring_window
    from cryolive.refinement.refine import _Refiner

    r = np.hypot(*np.meshgrid(np.arange(48) - 24, np.arange(48) - 24))
    w = np.asarray(scoring_window(48, 3.0, 80.0))
    assert (w[r <= 13.3] == 1).all() and (w[r >= 18.34] == 0).all() and 0 < w[24, 24 + 15] < 1
    default = np.asarray(scoring_window(48, 3.0, None))
    assert (default[r <= 0.85 * 24] == 1).all() and (default[r >= 0.99 * 24] < 1e-3).all()
    assert np.array_equal(np.asarray(scoring_window(48, 3.0, 200.0)), default)
    # the refinement scores with it
    stack = read_particles(sample_path("particles.star"))
    ref = read_map(sample_path("truth_map.mrc"))[0]
    d = 0.5 * stack.box * stack.pixel_size
    refiner = _Refiner(stack, ref, RefineParams(particle_diameter_A=d))
    assert np.array_equal(np.asarray(refiner.window), np.asarray(scoring_window(stack.box, stack.pixel_size, d)))
