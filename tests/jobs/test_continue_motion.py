"""Motion correction interrupted mid-run goes on from its last checkpoint (a search step, a dose micrograph or a
final micrograph) and ends as the unbroken run would have (issue 17, item 2; the refinement's version is
tests/jobs/test_continue.py). Tiny simulated movies: 3 micrographs of 4 particles (box 40), 6 frames."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from cryolive.cli import main
from cryolive.io import read_map, read_star
from cryolive.jobs import drain
from cryolive.jobs.jobdir import job_state, load_checkpoint, save_checkpoint
from cryolive.jobs.motion import continue_motion_job, motion_job
from cryolive.motion import MotionParams, motion
from cryolive.motion.polish import MotionCheckpoint
from cryolive.simulator.movies import MovieSimParams, simulate_movies

# a short search (3 rays, r up to 1), dose weights from 2 micrographs, then the 3 micrographs
P = MotionParams(thoroughness="fast", max_prior_strength=1.0, target_particles=4, dose_target_particles=8)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return simulate_movies(tmp_path_factory.mktemp("contmot") / "s",
                           MovieSimParams(n_micrographs=3, n_frames=6, particles_per_micrograph=4, mic_size=160,
                                          seed=2))


@pytest.fixture(scope="module")
def inputs(small):
    return (read_star(small / "particles.star"), small / "movies", read_map(small / "half_A.mrc")[0],
            read_map(small / "half_B.mrc")[0])


@pytest.fixture(scope="module")
def unbroken(inputs):
    stack, movies, ha, hb = inputs
    return drain(motion(stack, movies, ha, hb, params=P))


def _same(a, b) -> None:
    assert a.hyper == b.hyper
    assert a.search == b.search
    np.testing.assert_allclose(a.dose.bfactors, b.dose.bfactors, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.dose.scales, b.dose.scales, rtol=1e-9, atol=1e-12)
    assert list(a.trajectories) == list(b.trajectories)
    for name, (idx, t) in a.trajectories.items():
        np.testing.assert_array_equal(idx, b.trajectories[name][0])
        np.testing.assert_allclose(t, b.trajectories[name][1], atol=1e-9)


@pytest.mark.parametrize("where", ["hyper", "dose", "final"])
def test_resuming_from_a_checkpoint_repeats_the_unbroken_run(inputs, unbroken, tmp_path, where) -> None:
    stack, movies, ha, hb = inputs
    steps, full = unbroken
    stages = [s.stage for s in steps]
    assert stages.count("hyper") >= 2 and stages.count("dose") == 2 and stages.count("final") == 3
    assert all(s.checkpoint is not None for s in steps)
    # the first checkpoint of the stage (mid-search, after one dose micrograph, after one final micrograph)
    step = next(s for s in steps if s.stage == where)
    save_checkpoint(tmp_path / "c.npz", step.checkpoint)
    ckpt = load_checkpoint(tmp_path / "c.npz", MotionCheckpoint)
    assert (ckpt.stage, ckpt.done) == (where, 1)
    rest, resumed = drain(motion(stack, movies, ha, hb, params=P, resume=ckpt))
    k = steps.index(step)
    assert [(s.stage, s.done) for s in rest] == [(s.stage, s.done) for s in steps[k + 1:]]
    _same(resumed, full)
    np.testing.assert_allclose(resumed.images, full.images, atol=1e-5)  # final images done are recomputed


def _stack(path):
    with mrcfile.open(path) as m:
        return np.array(m.data), float(m.header.dmean), float(m.header.rms)


def _files(folder):
    t = np.load(folder / "trajectories.npz")
    return t["trajectories"], _stack(folder / "particles.mrcs"), json.loads(
        (folder / "hyperparameters.json").read_text())


def test_a_stopped_motion_job_continues_in_its_folder(small, tmp_path, capsys) -> None:
    args = (str(small / "particles.star"), str(small / "movies"), str(small / "half_A.mrc"),
            str(small / "half_B.mrc"))
    drain(motion_job(*args, out=str(tmp_path / "a"), params=P))
    gen = motion_job(*args, out=str(tmp_path / "b"), params=P)
    for step in gen:  # stop after the first final micrograph (what the dock's Stop does)
        if step.stage == "final":
            gen.close()
            break
    job = tmp_path / "b" / "job_motion_001"
    assert job_state(job)["state"] == "stopped"
    assert (job / "checkpoint.npz").exists() and (job / ".particles.mrcs.partial").exists()
    assert not (job / "particles.mrcs").exists()
    assert main(["motion", "--continue", str(job)]) == 0
    assert f"job folder {job}" in capsys.readouterr().out
    assert job_state(job)["state"] == "finished"
    assert "continuing after final 1" in (job / "log.txt").read_text()
    assert not (job / "checkpoint.npz").exists() and not (job / ".particles.mrcs.partial").exists()
    full, resumed = _files(tmp_path / "a" / "job_motion_001"), _files(job)
    np.testing.assert_allclose(resumed[0], full[0], atol=1e-9)
    for a, b in zip(resumed[1], full[1], strict=True):  # images and the header statistics
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)
    assert resumed[2] == full[2]
    assert len(read_star(job / "particles.star")) == 12
    # a finished job, a folder that is not a motion job, and a missing option are refused in one line
    assert main(["motion", "--continue", str(job)]) == 2
    err = capsys.readouterr().err
    assert "finished" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "params.json").write_text(json.dumps({"particles": "p.star", "reference": "r.mrc"}))
    assert main(["motion", "--continue", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "not a motion correction job folder" in err and len(err.strip().splitlines()) == 1
    assert main(["motion", str(small / "particles.star"), "--out", str(tmp_path / "c")]) == 2
    assert "--movies, --half-a, --half-b required (or --continue JOBDIR)" in capsys.readouterr().err


def test_a_partial_stack_that_is_gone_is_computed_again(small, tmp_path) -> None:
    args = (str(small / "particles.star"), str(small / "movies"), str(small / "half_A.mrc"),
            str(small / "half_B.mrc"))
    p = MotionParams(override_r=1.0, override_theta=1.0, override_z_A=100.0, dose_target_particles=8)
    drain(motion_job(*args, out=str(tmp_path / "a"), params=p))
    gen = motion_job(*args, out=str(tmp_path / "b"), params=p)
    for step in gen:  # stop after two of the three micrographs
        if step.stage == "final" and step.done == 2:
            gen.close()
            break
    job = tmp_path / "b" / "job_motion_001"
    (job / ".particles.mrcs.partial").unlink()
    drain(continue_motion_job(str(job)))
    for a, b in zip(_stack(job / "particles.mrcs"), _stack(tmp_path / "a" / "job_motion_001" / "particles.mrcs"),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)
