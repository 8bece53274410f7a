"""A refinement killed mid-run (kill -9) can go on from its last completed iteration and ends as the
uninterrupted run would have (issue 17: status.json used to say "running" for ever and the only choice was to
start again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cryolive.cli import main
from cryolive.io import read_map, read_particles
from cryolive.jobs.jobdir import job_state
from cryolive.refinement.refine import RefineIteration, RefineParams, refine
from cryolive.simulator.dataset import SimulationParams, simulate_dataset


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("cont") / "sim"
    simulate_dataset(out, SimulationParams(n=400, box=32, pixel_size=4.0, snr=0.5, seed=2))
    return out


def _iterations(gen, upto=None):
    its = []
    try:
        while True:
            it = next(gen)
            if isinstance(it, RefineIteration):
                its.append(it)
                if upto is not None and it.iteration == upto:
                    gen.close()
                    return its, None
    except StopIteration as stop:
        return its, stop.value


def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(small_set) -> None:
    stack = read_particles(small_set / "particles.star")
    ref, _ = read_map(small_set / "reference.mrc")
    p = RefineParams(max_iter=5, minibatch_size=200, batch_size=128)
    _, full = _iterations(refine(stack, ref, p))
    first, _ = _iterations(refine(stack, ref, p), upto=2)
    ckpt = first[-1].checkpoint
    assert ckpt is not None and ckpt.iteration == 2
    rest, resumed = _iterations(refine(stack, ref, p, resume=ckpt))
    assert rest[0].iteration == 3
    assert resumed.final.iteration == full.final.iteration
    np.testing.assert_allclose(resumed.rotations, full.rotations, atol=1e-9)
    np.testing.assert_allclose(resumed.shifts_A, full.shifts_A, atol=1e-9)
    np.testing.assert_allclose(resumed.final.map, full.final.map, atol=1e-6)
    assert resumed.final.resolution_A == full.final.resolution_A


def test_a_killed_refinement_continues_in_its_folder(small_set, tmp_path, capsys) -> None:
    jobs = tmp_path / "jobs"
    cmd = [sys.executable, "-m", "cryolive.cli", "refine", str(small_set / "particles.star"), "--ref",
           str(small_set / "reference.mrc"), "--out", str(jobs), "--max-iter", "6", "--batch-size", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = jobs / "job_refine_001"
    deadline = time.time() + 240
    while time.time() < deadline and not (job / "checkpoint.npz").exists():
        time.sleep(0.2)
    assert (job / "checkpoint.npz").exists(), "no checkpoint was written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    status = job_state(job)
    assert status["state"] == "interrupted", status
    done_before = status["iteration"]
    assert main(["refine", "--continue", str(job)]) == 0
    assert f"job folder {job}" in capsys.readouterr().out
    status = job_state(job)
    assert status["state"] == "finished"
    assert status["iteration"] > done_before
    log = (job / "log.txt").read_text()
    assert f"continuing after iteration {done_before}" in log
    assert (job / "particles.star").exists() and (job / "map.mrc").exists()
    assert not (job / "checkpoint.npz").exists()
    rows = (job / "iterations.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, status["iteration"] + 1))
    # a finished job, or a folder that is not a job, is refused in one line
    assert main(["refine", "--continue", str(job)]) == 2
    assert "finished" in capsys.readouterr().err
    assert main(["refine", "--continue", str(tmp_path)]) == 2
    assert "not a refinement job folder" in capsys.readouterr().err


def test_sigterm_marks_the_job_stopped(small_set, tmp_path) -> None:
    jobs = tmp_path / "jobs"
    cmd = [sys.executable, "-m", "cryolive.cli", "refine", str(small_set / "particles.star"), "--ref",
           str(small_set / "reference.mrc"), "--out", str(jobs), "--max-iter", "6", "--batch-size", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    job = jobs / "job_refine_001"
    deadline = time.time() + 240
    while time.time() < deadline and not (job / "checkpoint.npz").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads((job / "status.json").read_text())["state"] == "stopped"
    assert "STOPPED" in (job / "log.txt").read_text()
