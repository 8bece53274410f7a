"""3D classification and heterogeneous refinement killed mid-run (kill -9) go on from their last completed
iteration and end as the uninterrupted run would have (issue 17, item 2; the refinement's version is
tests/jobs/test_continue.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cryolive.classification.classify import ClassifyCheckpoint, ClassifyParams, classify
from cryolive.cli import main
from cryolive.io import InputError, read_map, read_particles
from cryolive.jobs import drain
from cryolive.jobs.jobdir import job_state, load_checkpoint, save_checkpoint
from cryolive.simulator.dataset import SimulationParams, simulate_dataset

BOX, APIX, N = 32, 4.0, 300


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    """300 particles (box 32, 4 Å/px) of two states with their true poses; truth/state_0.mrc and state_1.mrc."""
    out = tmp_path_factory.mktemp("contcls") / "sim"
    simulate_dataset(out, SimulationParams(n=N, box=BOX, pixel_size=APIX, snr=0.3, n_states=2, seed=5))
    return out


def _until(gen, upto):
    """The iterations of ``gen`` up to ``upto``; the generator is closed there (the run is interrupted)."""
    its = []
    for it in gen:
        its.append(it)
        if it.iteration == upto:
            gen.close()
            break
    return its


# three online-EM iterations of 200 of the 300 particles: the iteration-2 checkpoint must carry the
# reconstructors' accumulators, which iteration 3 blends into
ONLINE = dict(n_classes=2, online_em_iters=3, minibatch_size=200, batch_size=128)


@pytest.mark.parametrize("mode", ["fixed", "hetero"])
def test_resuming_from_iteration_2_repeats_the_uninterrupted_run(two_states, tmp_path, mode) -> None:
    stack = read_particles(two_states / "particles.star")
    if mode == "hetero":  # global pose search per class (coarse, to stay quick)
        p = ClassifyParams(mode="hetero", max_iter=4, coarse_step_deg=15.0, levels=2, **ONLINE)
        kw = {"starts": [read_map(two_states / "truth" / f"state_{i}.mrc")[0] for i in (0, 1)]}
    else:
        p = ClassifyParams(max_iter=6, **ONLINE)
        kw = {}
    full_its, full = drain(classify(stack, p, **kw))
    assert full_its[-1].checkpoint is not None and full_its[-1].checkpoint.finished
    first = _until(classify(stack, p, **kw), 2)
    ckpt = first[-1].checkpoint
    assert ckpt is not None and ckpt.iteration == 2 and not ckpt.finished
    assert ckpt.numerators.size and ckpt.numerators.shape[:2] == (2, 2)  # iteration 3 blends into them
    assert (ckpt.rotations.shape == (N, 2, 3, 3)) if mode == "hetero" else ckpt.rotations.size == 0
    # through the file the job writes
    save_checkpoint(tmp_path / "checkpoint.npz", ckpt)
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz", ClassifyCheckpoint)
    rest, resumed = drain(classify(stack, p, resume=ckpt, **kw))
    assert rest[0].iteration == 3
    assert [it.iteration for it in rest] == [it.iteration for it in full_its[2:]]
    np.testing.assert_array_equal(resumed.classes, full.classes)
    np.testing.assert_allclose(resumed.posteriors, full.posteriors, atol=1e-9)
    np.testing.assert_allclose(resumed.final.class_maps, full.final.class_maps, atol=1e-6)
    np.testing.assert_allclose(resumed.final.class_sizes, full.final.class_sizes, atol=1e-12)
    if mode == "hetero":
        np.testing.assert_allclose(resumed.particles.rotations, full.particles.rotations, atol=1e-9)
    # a run that has ended has nothing to continue
    with pytest.raises(InputError, match="nothing to continue"):
        next(classify(stack, p, resume=full_its[-1].checkpoint, **kw))


def test_a_killed_classification_continues_in_its_folder(two_states, tmp_path, capsys) -> None:
    args = [str(two_states / "particles.star"), "--k", "2", "--max-iter", "8", "--online-iters", "3",
            "--minibatch", "200", "--batch-size", "64"]
    jobs = tmp_path / "jobs"
    proc = subprocess.Popen([sys.executable, "-m", "cryolive.cli", "classify", *args, "--out", str(jobs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = jobs / "job_classify_001"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and job_state(job).get("iteration", 0) < 1:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # in iteration 2 (iteration 1 has just been reported)
    proc.wait()
    assert (job / "checkpoint.npz").exists(), "no checkpoint was written before the run ended"
    status = job_state(job)
    assert status["state"] == "interrupted", status
    # the checkpoint is written just before the status: it may be one iteration ahead of it
    done_before = load_checkpoint(job / "checkpoint.npz", ClassifyCheckpoint).iteration
    assert status["iteration"] in (done_before, done_before - 1)
    # the uninterrupted run, for comparison
    assert main(["classify", *args, "--out", str(tmp_path / "unbroken")]) == 0
    unbroken = tmp_path / "unbroken" / "job_classify_001"
    final = job_state(unbroken)["iteration"]
    assert done_before < final
    capsys.readouterr()
    # the wrong command, or a folder that is not a job, is refused in one line before anything is done
    assert main(["hetero", "--continue", str(job)]) == 2
    assert f"cryolive classify --continue {job}" in capsys.readouterr().err
    assert main(["classify", "--continue", str(tmp_path)]) == 2
    assert "not a 3D classification job folder" in capsys.readouterr().err
    assert job_state(job)["state"] == "interrupted"

    assert main(["classify", "--continue", str(job)]) == 0
    assert f"job folder {job}" in capsys.readouterr().out
    status = job_state(job)
    assert status["state"] == "finished" and status["iteration"] == final
    assert f"continuing after iteration {done_before}" in (job / "log.txt").read_text()
    assert not (job / "checkpoint.npz").exists()
    for c in (1, 2):
        got, _ = read_map(job / f"class_{c:03d}.mrc")
        want, _ = read_map(unbroken / f"class_{c:03d}.mrc")
        np.testing.assert_allclose(got, want, atol=1e-6)
    got = read_particles(job / "particles.star", require_images=False).class_number
    want = read_particles(unbroken / "particles.star", require_images=False).class_number
    np.testing.assert_array_equal(got, want)
    rows = (job / "iterations.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, final + 1))
    assert len((job / "class_sizes.csv").read_text().splitlines()) == 1 + final
    # finished: nothing left to continue
    assert main(["classify", "--continue", str(job)]) == 2
    assert "finished" in capsys.readouterr().err


def test_classify_without_inputs_names_what_is_missing(capsys) -> None:
    assert main(["classify", "--k", "2"]) == 2
    assert "STAR, --out required (or --continue JOBDIR)" in capsys.readouterr().err
    assert main(["hetero", "particles.star", "--out", "jobs"]) == 2
    assert "--ref required (or --continue JOBDIR)" in capsys.readouterr().err
