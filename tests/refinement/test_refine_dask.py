"""Refinement on a Dask cluster (``--workers N`` / ``--scheduler ADDRESS``) makes the refinement one process makes.

Every per-particle result of the E step (pose search, the pruning bound, the scale, the residual power) depends on
that particle alone, not on the batch or the part it is searched in: the workers' parts (100 particles, in batches
of 64) and one process's batches (64) have different boundaries, and the poses come out the same; the maps differ
only by the float rounding of the sums (the parts' reconstructors are added in another order), as they do in one
process with another ``batch_size``."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest

from cryolive.cli import main
from cryolive.io import InputError, read_map, read_particles
from cryolive.jobs import drain
from cryolive.jobs.refine import refine_job
from cryolive.refinement.refine import RefineIteration, RefineParams, refine
from cryolive.resolution.fsc import fsc
from cryolive.rotations.symmetry import symmetric_angular_distance
from cryolive.simulator.dataset import SimulationParams, simulate_dataset

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

FAST = dict(max_iter=3, global_iters=1, coarse_step_deg=15.0, levels=2, minibatch_iters=0, batch_size=64)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("dask_refine") / "sim"
    simulate_dataset(out, SimulationParams(n=400, box=32, pixel_size=4.0, snr=0.5, seed=2, max_shift_px=2.0))
    return out


def _recording(monkeypatch, module: str, name: str) -> list:
    """Wrap the context manager ``module.name`` that opens Dask clients; the list receives each client."""
    import importlib

    owner = importlib.import_module(module)
    original = getattr(owner, name)
    clients: list = []

    @contextmanager
    def wrapper(*args, **kwargs):
        with original(*args, **kwargs) as client:
            clients.append(client)
            yield client

    monkeypatch.setattr(owner, name, wrapper)
    return clients


def test_dask_workers_reproduce_the_single_process_refinement(sim) -> None:
    from distributed import get_task_stream

    from cryolive.reconstruction.distributed import dask_client

    stack = read_particles(sim / "particles.star")
    ref, _ = read_map(sim / "reference.mrc")
    p = RefineParams(**FAST)
    its_one, one = drain(refine(stack, ref, p))
    with dask_client(workers=2) as client, get_task_stream(client) as tasks:
        its_two, two = drain(refine(stack, ref, p, client=client))
    # every iteration ran on the workers: 2 workers x 2 parts
    parts = [t for t in tasks.data if str(t["key"]).startswith("_part_task")]
    assert len(its_two) == len(its_one) == 3 and len(parts) == 3 * 4
    assert [i.search for i in its_two] == ["global", "local", "local"]
    # the same poses and scales: here every pose is equal; float rounding may flip a near tie between neighbouring
    # poses of the finest search level (1 particle in 2000 at box 64, by that level's step), never more
    ang = np.degrees(symmetric_angular_distance(one.rotations, two.rotations, "C1"))
    assert np.mean(ang < 1e-3) >= 0.99 and ang.max() <= FAST["coarse_step_deg"] / 2 ** FAST["levels"] + 1e-3, (
        ang.max(), np.mean(ang > 1e-3))
    assert np.abs(one.shifts_A - two.shifts_A).max() < 0.05 * stack.pixel_size
    np.testing.assert_allclose(one.scales, two.scales, rtol=1e-3)
    # the same maps: FSC >= 0.99 at every shell below Nyquist, and equal to float rounding (a part added twice or
    # left out would show here)
    n = stack.box
    for name in ("map", "half_a", "half_b"):
        a, b = getattr(one.final, name), getattr(two.final, name)
        assert fsc(a, b)[1:n // 2].min() >= 0.99, name
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max(), name
    for i, j in zip(its_one, its_two, strict=True):
        assert abs(i.resolution_A - j.resolution_A) <= 0.01 * i.resolution_A
        assert i.pose_summary["pruned_candidates"] == j.pose_summary["pruned_candidates"]


def test_cli_workers_run_a_job_and_a_stop_closes_the_cluster(sim, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "jobs"
    args = [str(sim / "particles.star"), "--ref", str(sim / "reference.mrc"), "--out", str(out)]
    fast = ["--max-iter", "2", "--global-iters", "1", "--coarse-step", "15", "--batch-size", "64"]
    assert main(["refine", *args, *fast, "--workers", "2"]) == 0
    said = capsys.readouterr().out
    assert "Dask dashboard: http" in said and "iteration  2 local" in said
    job = out / "job_refine_001"
    for name in ("map.mrc", "half_A.mrc", "half_B.mrc", "particles.star", "iterations.csv"):
        assert (job / name).is_file(), name
    log = (job / "log.txt").read_text()
    assert "Dask: 2 workers, dashboard http" in log, log
    prm = json.loads((job / "params.json").read_text())
    assert prm["workers"] == 2 and prm["scheduler"] is None
    assert json.loads((job / "status.json").read_text())["state"] == "finished"

    # the napari docks stop a job by closing its generator: the cluster the job opened is closed too
    clients = _recording(monkeypatch, "cryolive.jobs.refine", "optional_dask_client")
    gen = refine_job(str(sim / "particles.star"), str(sim / "reference.mrc"), str(out),
                     RefineParams(**{**FAST, "workers": 1}))
    assert isinstance(next(gen), RefineIteration)
    assert len(clients) == 1 and clients[0].status == "running"
    gen.close()
    assert clients[0].status == "closed"
    stopped = out / "job_refine_002"
    assert json.loads((stopped / "status.json").read_text())["state"] == "stopped"
    # --continue goes on on the cluster params.json names (workers 1), or on the one given
    assert json.loads((stopped / "params.json").read_text())["workers"] == 1
    capsys.readouterr()
    assert main(["refine", "--continue", str(stopped), "--workers", "2"]) == 0
    assert "Dask dashboard: http" in capsys.readouterr().out and len(clients) == 2
    log = (stopped / "log.txt").read_text()
    assert log.index("continuing after iteration 1") < log.index("Dask: 2 workers, dashboard http")
    assert json.loads((stopped / "status.json").read_text())["state"] == "finished"


def test_workers_and_scheduler_are_checked_before_any_work(sim, tmp_path) -> None:
    stack = read_particles(sim / "particles.star")
    ref, _ = read_map(sim / "reference.mrc")
    for bad, says in ((dict(workers=0), "--workers must be at least 1"),
                      (dict(workers=2, scheduler="tcp://host:8786"), "not both"),
                      (dict(scheduler=" "), "not a scheduler address")):
        with pytest.raises(InputError, match=says):
            next(refine(stack, ref, RefineParams(**FAST, **bad)))
        with pytest.raises(InputError, match=says):
            next(refine_job(str(sim / "particles.star"), str(sim / "reference.mrc"), str(tmp_path / "jobs"),
                            RefineParams(**FAST, **bad)))
    assert not (tmp_path / "jobs").exists()
