"""Reference-based motion correction against simulated movies with known trajectories and damage.

Data: 4 micrographs of 256 px, 25 particles each (box 40, 2 Å/px), 24 frames of 1.5 e/Å^2, B_f = 4 Å^2 per e/Å^2,
local motion 1.5 px RMS plus a 4 px drift, frame-sum SNR 1.0 (higher than real data so that 100 particles are
enough: the tolerances below are set for this size, measured values in the comments). One full job (search, dose,
final) is shared by the tests; it takes about 40 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import spearmanr

from cryolive.io import InputError, StackWriter, read_map, read_star
from cryolive.jobs.motion import motion_job
from cryolive.motion import MotionParams, motion
from cryolive.motion.hyper import check_overrides
from cryolive.motion.trajectories import coarse_drift
from cryolive.reconstruction import backproject_halves, finalize_halves
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.simulator.movies import MovieSimParams, load_truth, simulate_movies


def _run(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def traj_error(truth, idx, traj):
    """RMS error (px) after removing each particle's mean offset over frames (absorbed by its origin)."""
    t = truth.trajectories[idx]
    e = (traj - traj.mean(axis=1, keepdims=True)) - (t - t.mean(axis=1, keepdims=True))
    return float(np.sqrt((e**2).mean()))


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_movies(tmp_path_factory.mktemp("mov") / "sim", MovieSimParams(n_micrographs=4, snr=1.0, seed=3))


@pytest.fixture(scope="module")
def job(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs")
    p = MotionParams(target_particles=50, keep_search_trajectories=True)
    steps, result = _run(motion_job(str(sim / "particles.star"), str(sim / "movies"), str(sim / "half_A.mrc"),
                                    str(sim / "half_B.mrc"), str(sim / "mask.mrc"), str(out), p))
    return steps, result, out / "job_motion_001"


def test_simulation_is_deterministic_and_sized(sim, tmp_path):
    again = simulate_movies(tmp_path / "again", MovieSimParams(n_micrographs=4, snr=1.0, seed=3))
    a, b = load_truth(sim), load_truth(again)
    assert np.array_equal(a.trajectories, b.trajectories)
    local = a.trajectories - a.global_drift[a.micrograph]
    assert 1.0 <= np.sqrt((local**2).mean()) <= 3.0  # trajectories of 1-3 px RMS besides the drift
    assert np.all(np.diff(a.bfactors) > 0)


def test_trajectories_match_truth(sim, job):
    _, result, _ = job
    truth = load_truth(sim)
    errs = [traj_error(truth, idx, t) for idx, t in result.trajectories.values()]
    truth_rms = np.sqrt((truth.trajectories - truth.trajectories.mean(1, keepdims=True)) ** 2).mean()
    assert max(errs) <= 0.3, errs  # measured 0.10-0.14 px
    assert max(errs) < 0.25 * truth_rms  # far below the motion itself (~2 px)


def test_dose_bfactors_rank_like_truth(sim, job):
    _, result, folder = job
    truth = load_truth(sim)
    rho = spearmanr(result.dose.bfactors, truth.bfactors).statistic
    assert rho >= 0.9, rho  # measured 0.95
    w = np.load(folder / "dose_weights.npz")["weights"]
    assert np.allclose(w.sum(axis=0), 1.0)
    assert w[0, -1] > w[-1, -1]  # early frames carry the high frequencies


def test_chosen_prior_strength_near_best(sim, job):
    steps, result, folder = job
    truth = load_truth(sim)
    assert any(s.stage == "hyper" for s in steps) and (folder / "hyperparameters.json").exists()
    err = {}
    for sp in result.search:
        trajs = result.search_trajectories[(sp.ray, sp.step)]
        err[(sp.ray, sp.step)] = np.mean([traj_error(truth, i, t) for i, t in trajs.values()])
    best = min(result.search, key=lambda s: s.score)
    assert best.hyper == result.hyper
    assert err[(best.ray, best.step)] <= 1.2 * min(err.values()), (err[(best.ray, best.step)], min(err.values()))
    assert max(err.values()) > 2 * min(err.values())  # the grid holds bad choices too: the test can fail


def _fsc05(star_path, truth_map, apix):
    stack = read_star(star_path)
    *_, (_, recs) = backproject_halves(stack, stack.half_set)
    _, _, full = finalize_halves(*recs)
    return resolution_at(fsc(full, truth_map), truth_map.shape[0], apix, 0.5)


def test_corrected_particles_reconstruct_better(sim, job):
    _, _, folder = job
    truth_map, apix = read_map(sim / "truth_map.mrc")
    corrected = _fsc05(folder / "particles.star", truth_map, apix)
    uncorrected = _fsc05(sim / "particles.star", truth_map, apix)
    assert corrected < uncorrected - 0.3, (corrected, uncorrected)  # Å at FSC 0.5 vs truth


def test_reuse_hyper_and_dose_skips_search(job, tmp_path):
    _, first, folder = job
    other = simulate_movies(tmp_path / "other", MovieSimParams(n_micrographs=2, snr=1.0, seed=11))
    steps, result = _run(motion_job(str(other / "particles.star"), str(other / "movies"), str(other / "half_A.mrc"),
                                    str(other / "half_B.mrc"), str(other / "mask.mrc"), str(tmp_path / "jobs"),
                                    hyper_path=str(folder / "hyperparameters.json"),
                                    dose_path=str(folder / "dose_weights.npz")))
    assert {s.stage for s in steps} == {"final"} and not result.search
    assert result.hyper == first.hyper
    truth = load_truth(other)
    errs = [traj_error(truth, idx, t) for idx, t in result.trajectories.values()]
    assert max(errs) <= 0.3, errs


def test_a_drift_beyond_the_rigid_window_is_followed(job, tmp_path):
    """A 40 px drift (±20 px about the frame sum) runs past the rigid track's ±10 px window: the patches are cut
    again where the particles went, and the trajectories stay within a third of a pixel (before, the rigid track
    stopped at the window's edge)."""
    _, _, folder = job
    other = simulate_movies(tmp_path / "drift", MovieSimParams(n_micrographs=2, snr=1.0, drift_px=40.0, seed=5))
    truth = load_truth(other)
    assert np.abs(truth.global_drift).max() > 15.0
    _, result = _run(motion_job(str(other / "particles.star"), str(other / "movies"), str(other / "half_A.mrc"),
                                str(other / "half_B.mrc"), str(other / "mask.mrc"), str(tmp_path / "jobs"),
                                hyper_path=str(folder / "hyperparameters.json"),
                                dose_path=str(folder / "dose_weights.npz")))
    errs = [traj_error(truth, idx, t) for idx, t in result.trajectories.values()]
    assert max(errs) <= 0.35, errs  # measured 0.22 / 0.26 px; without re-cutting 3.1 / 2.1 px


def test_coarse_drift_claims_nothing_from_noise():
    rng = np.random.default_rng(0)
    shape = (30, 24, 40, 21)
    fx = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    ref = (rng.normal(size=(30, 40, 21)) + 1j * rng.normal(size=(30, 40, 21))).astype(np.complex64)
    assert np.array_equal(coarse_drift(fx, ref, np.ones((40, 21))), np.zeros((24, 2)))


@pytest.fixture
def small(tmp_path):
    return simulate_movies(tmp_path / "s", MovieSimParams(n_micrographs=2, n_frames=6, particles_per_micrograph=4,
                                                           mic_size=160, seed=2))


def _maps(folder):
    return read_map(folder / "half_A.mrc")[0], read_map(folder / "half_B.mrc")[0]


def test_wrong_frame_count_is_named_or_skipped(small):
    bad = small / "movies" / "mic_001.mrcs"
    import mrcfile

    with mrcfile.open(bad) as m:
        data = m.data[:4].copy()
    bad.unlink()
    with StackWriter(bad, 4, data.shape[1], 2.0) as w:
        w[0:4] = data
    stack = read_star(small / "particles.star")
    ha, hb = _maps(small)
    with pytest.raises(InputError, match="mic_001.mrcs"):
        _run(motion(stack, small / "movies", ha, hb, params=MotionParams(override_r=1, override_theta=1,
                                                                          override_z_A=100)))
    p = MotionParams(override_r=1, override_theta=1, override_z_A=100, skip_wrong_frame_count=True)
    _, result = _run(motion(stack, small / "movies", ha, hb, params=p))
    assert result.skipped_movies == ["movies/mic_000.mrcs"] or result.skipped_movies == ["movies/mic_001.mrcs"]
    assert len(result.images) == 4 and result.n_frames == 6


def test_missing_movie_and_partial_overrides(small, tmp_path):
    stack = read_star(small / "particles.star")
    ha, hb = _maps(small)
    shutil.copytree(small / "movies", tmp_path / "some")
    (tmp_path / "some" / "mic_000.mrcs").unlink()
    with pytest.raises(InputError, match="mic_000.mrcs"):
        _run(motion(stack, tmp_path / "some", ha, hb))
    with pytest.raises(InputError, match="all three"):
        check_overrides(1.0, None, 100.0)
    with pytest.raises(InputError, match="nope.json"):
        _run(motion_job(str(small / "particles.star"), str(small / "movies"), str(small / "half_A.mrc"),
                        str(small / "half_B.mrc"), hyper_path=str(tmp_path / "nope.json"), out=str(tmp_path / "j")))


def test_stage_hyper_stops_early_and_crop(small, tmp_path):
    p = MotionParams(final_stage="hyper", thoroughness="fast", max_prior_strength=1.0)
    steps, result = _run(motion_job(str(small / "particles.star"), str(small / "movies"), str(small / "half_A.mrc"),
                                    str(small / "half_B.mrc"), out=str(tmp_path / "j"), params=p))
    assert result.dose is None and result.particles is None and result.hyper is not None
    assert {s.stage for s in steps} == {"hyper"}
    p = MotionParams(override_r=1, override_theta=1, override_z_A=100, crop_box=32, float16=True, recenter=True)
    _, result = _run(motion_job(str(small / "particles.star"), str(small / "movies"), str(small / "half_A.mrc"),
                                str(small / "half_B.mrc"), out=str(tmp_path / "j"), params=p))
    out = read_star(tmp_path / "j" / "job_motion_002" / "particles.star")
    assert out.box == 32 and abs(out.pixel_size - 2.0 * 40 / 32) < 1e-6 and len(out) == 8
    assert np.all(np.abs(out.shifts / 2.0) <= 0.5 + 1e-6)  # re-centred: only sub-pixel origins remain
    assert np.isfinite(out.images(np.arange(8))).all()


def test_stopping_leaves_a_folder_that_says_so(small, tmp_path):
    p = MotionParams(thoroughness="fast", max_prior_strength=1.0)
    gen = motion_job(str(small / "particles.star"), str(small / "movies"), str(small / "half_A.mrc"),
                     str(small / "half_B.mrc"), out=str(tmp_path / "j"), params=p)
    first = next(gen)
    gen.close()  # what the dock's Stop does
    job = tmp_path / "j" / "job_motion_001"
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "stopped" and status["stage"] == first.stage
    last = (job / "log.txt").read_text().rstrip().splitlines()[-2:]  # the stop, then the peak-memory line
    assert last[0].endswith("STOPPED by the user") and "peak memory" in last[1]
