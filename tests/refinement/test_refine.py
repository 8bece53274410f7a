"""Homogeneous refinement against ground truth (small, CI-sized versions of the benchmark).

The benchmark (benchmarks/bench_refine.py, docs/benchmarks.md) runs the full-size data set; these tests keep the
same checks on data small enough for two CPU cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryolive.image.align3d import align_maps, apply_alignment
from cryolive.io import read_map, read_particles
from cryolive.jobs import drain
from cryolive.jobs.refine import refine_job
from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
from cryolive.refinement.refine import RefineIteration, RefineParams, refine
from cryolive.resolution.filters import lowpass
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.rotations.symmetry import symmetric_angular_distance
from cryolive.simulator.dataset import SimulationParams, phantom_volumes, simulate_dataset

pytestmark = pytest.mark.slow


def _ang_err(found, truth, symmetry="C1"):
    return np.degrees(symmetric_angular_distance(found, truth, symmetry))


def _true_pose_res(stack, truth, symmetry="C1"):
    recs = None
    for _done, batch in backproject_halves(stack, half_sets(stack), symmetry, 500):
        recs = batch
    a, b, _ = finalize_halves(*recs)
    return resolution_at(fsc(0.5 * (a + b), truth), truth.shape[0], stack.pixel_size, 0.5)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("refine") / "data"
    simulate_dataset(out, SimulationParams(n=1000, box=40, pixel_size=3.0, snr=0.15, seed=4, max_shift_px=3.0))
    return out


def test_refinement_recovers_poses_and_map(small_data, tmp_path):
    stack = read_particles(small_data / "particles.star")
    truth, apix = read_map(small_data / "truth" / "truth_map.mrc")
    t = np.load(small_data / "truth" / "truth.npz")
    gen = refine_job(str(small_data / "particles.star"), str(small_data / "reference.mrc"), str(tmp_path),
                     RefineParams(initial_lowpass_A=25.0, max_iter=4, global_iters=2, seed=1))
    its, result = drain(gen)
    assert all(isinstance(i, RefineIteration) for i in its) and [i.iteration for i in its] == list(
        range(1, len(its) + 1))
    fin = result.final
    n = truth.shape[0]
    res_truth = resolution_at(fsc(0.5 * (fin.half_a + fin.half_b), truth), n, apix, 0.5)
    # the same comparison inside the mask the masked GSFSC used
    res_truth_masked = resolution_at(fsc(0.5 * (fin.half_a + fin.half_b), truth, mask=fin.fsc_mask), n, apix, 0.5)
    res_true_pose = _true_pose_res(stack, truth)
    ang = _ang_err(result.rotations, t["rotations"])
    shift_err = np.linalg.norm(result.shifts_A - t["shifts_A"], axis=1) / apix
    print(f"true-pose {res_true_pose:.2f} Å, refined {res_truth:.2f} Å, GSFSC {fin.resolution_A:.2f} Å "
          f"(unmasked {fin.resolution_unmasked_A:.2f}), median angle {np.median(ang):.2f}°, "
          f"median shift {np.median(shift_err):.2f} px, >20°: {np.mean(ang > 20):.3f}; "
          f"in the FSC mask: vs truth {res_truth_masked:.2f} Å")
    assert res_truth <= 1.2 * res_true_pose
    assert np.median(ang) <= 5.0 and np.mean(ang > 20) < 0.03
    assert np.median(shift_err) <= 0.5
    # the gold-standard resolution does not lie: unmasked GSFSC-0.143 ~ FSC-0.5 against the truth
    assert abs(fin.resolution_unmasked_A - res_truth) / res_truth <= 0.10
    # the masked, phase-randomisation-corrected GSFSC ~ FSC-0.5 against the truth inside the same mask
    assert abs(fin.resolution_A - res_truth_masked) / res_truth_masked <= 0.10
    assert fin.resolution_A <= fin.resolution_unmasked_A + 1e-6
    # the job folder holds what RELION users expect, and particles.star carries the refined poses
    job = tmp_path / "job_refine_001"
    for name in ("particles.star", "map.mrc", "map_sharp.mrc", "half_A.mrc", "half_B.mrc", "mask_refine.mrc",
                 "mask_fsc.mrc", "fsc.csv", "fsc.png", "iterations.csv", "params.json", "log.txt"):
        assert (job / name).exists(), name
    assert json.loads((job / "status.json").read_text())["state"] == "finished"
    back = read_particles(job / "particles.star")
    np.testing.assert_allclose(back.rotations, result.rotations, atol=1e-6)
    np.testing.assert_allclose(back.shifts, result.shifts_A, atol=1e-6)
    assert set(np.unique(back.half_set)) == {1, 2}
    on_disk, _ = read_map(job / "map.mrc")
    np.testing.assert_array_equal(on_disk, fin.map)


def test_wrong_start_converges_with_sgd(small_data):
    """From another phantom low-passed to 30 Å the minibatch (ab-initio) start brings the refinement to the truth,
    up to the frame and hand projections cannot fix (compared after :func:`align_maps`)."""
    stack = read_particles(small_data / "particles.star")
    truth, apix = read_map(small_data / "truth" / "truth_map.mrc")
    n = truth.shape[0]
    wrong = np.asarray(lowpass(phantom_volumes(SimulationParams(box=n, pixel_size=apix, seed=12))[0], 30.0, apix))
    steps, result = drain(refine(stack, wrong, RefineParams(initial_lowpass_A=30.0, sgd_steps=100, max_iter=6,
                                                            global_iters=2, seed=1)))
    # the stream: the 100 ab-initio steps, then one result per iteration
    assert [s.step for s in steps[:100]] == list(range(1, 101))
    assert [it.iteration for it in steps[100:]] == list(range(1, len(steps) - 99))
    avg = 0.5 * (result.final.half_a + result.final.half_b)
    al = align_maps(avg, truth, apix, resolution_A=10.0, step_deg=20.0)
    res = resolution_at(fsc(apply_alignment(avg, al, apix), truth), n, apix, 0.5)
    start = resolution_at(fsc(apply_alignment(wrong, align_maps(wrong, truth, apix, 10.0, 20.0), apix), truth),
                          n, apix, 0.5)
    res_true_pose = _true_pose_res(stack, truth)
    print(f"wrong start (aligned) {start:.1f} Å; refined (aligned, mirrored={al.mirrored}) {res:.2f} Å; "
          f"true-pose {res_true_pose:.2f} Å; GSFSC unmasked {result.final.resolution_unmasked_A:.2f} Å")
    assert start > 2.5 * res_true_pose  # the start is not the molecule in any frame
    assert res <= 1.25 * res_true_pose
    assert abs(result.final.resolution_unmasked_A - res) / res <= 0.15


def test_symmetry_helps(tmp_path):
    data = tmp_path / "d2"
    simulate_dataset(data, SimulationParams(n=500, box=32, pixel_size=3.5, snr=0.15, seed=8, symmetry="D2",
                                            max_shift_px=2.0))
    stack = read_particles(data / "particles.star")
    truth, apix = read_map(data / "truth" / "truth_map.mrc")
    ref = np.asarray(lowpass(truth, 20.0, apix))
    res = {}
    for sym in ("D2", "C1"):
        _, result = drain(refine(stack, ref, RefineParams(symmetry=sym, max_iter=3, global_iters=3,
                                                           minibatch_iters=0, seed=2)))
        fin = result.final
        curve = fsc(0.5 * (fin.half_a + fin.half_b), truth)
        res[sym] = (resolution_at(curve, 32, apix, 0.5), float(curve[4:12].mean()))
    print(f"D2: {res['D2'][0]:.2f} Å, C1: {res['C1'][0]:.2f} Å (FSC vs truth at 0.5)")
    assert res["D2"][0] < res["C1"][0] or res["D2"][1] > res["C1"][1] + 0.02
    assert res["D2"][1] >= res["C1"][1]


def test_bad_reference_is_refused(small_data, tmp_path):
    from cryolive.io import InputError, write_map

    bad = tmp_path / "ref_wrong_apix.mrc"
    ref, _ = read_map(small_data / "reference.mrc")
    write_map(bad, ref, 2.0)
    with pytest.raises(InputError, match="ref_wrong_apix.mrc.*voxel size"):
        drain(refine_job(str(small_data / "particles.star"), str(bad), str(tmp_path / "jobs")))
    assert not (tmp_path / "jobs").exists()  # refused before any job folder was made
