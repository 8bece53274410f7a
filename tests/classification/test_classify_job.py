"""The classification job (:func:`cryolive.jobs.classify.classify_job`) on a tiny two-state data set: the particle
files it writes, :func:`export_classes`, the mask warnings in ``log.txt``, the hetero class box, and stopping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryolive.classification import ClassifyParams
from cryolive.io import InputError, read_map, read_star, write_map
from cryolive.jobs import drain
from cryolive.jobs.classify import classify_job, export_classes
from cryolive.masks import sphere_at

BOX, APIX, N = 24, 4.0, 300


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cryolive.simulator.dataset import SimulationParams, simulate_dataset

    d = tmp_path_factory.mktemp("job") / "d"
    simulate_dataset(d, SimulationParams(n=N, box=BOX, pixel_size=APIX, snr=0.2, n_states=2, seed=5))
    return d


@pytest.fixture(scope="module")
def job(data, tmp_path_factory):
    """A finished fixed-pose classification, K = 2, two iterations; its job folder."""
    steps, result = drain(classify_job(str(data / "particles.star"), str(tmp_path_factory.mktemp("jobs")),
                                       ClassifyParams(n_classes=2, max_iter=2)))
    assert len(steps) == 2 and steps[-1].job_dir is not None
    assert len(result.classes) == N
    return steps[-1].job_dir


def _path(job_dir):
    return Path(job_dir)


def test_particles_star_has_class_and_probability_for_every_particle(job):
    job = _path(job)
    table = starfile.read(job / "particles.star", always_dict=True)["particles"]
    assert len(table) == N
    assert {"rlnClassNumber", "rlnMaxValueProbDistribution"} <= set(table.columns)
    cls = table["rlnClassNumber"].to_numpy().astype(int)
    prob = table["rlnMaxValueProbDistribution"].to_numpy().astype(float)
    assert set(np.unique(cls)) <= {1, 2}
    assert np.all((prob >= 0.5 - 1e-6) & (prob <= 1 + 1e-6))  # the largest of two posteriors
    # the same through cryolive's reader
    stack = read_star(job / "particles.star", require_images=False)
    np.testing.assert_array_equal(stack.class_number, cls)
    assert "rlnMaxValueProbDistribution" in stack.table.columns
    # per-class files: counts add up to N and match rlnClassNumber
    counts = np.bincount(cls, minlength=3)[1:]
    for c in (1, 2):
        path = job / f"particles_class_{c:03d}.star"
        if counts[c - 1] == 0:
            assert not path.exists()
            continue
        sub = read_star(path, require_images=False)
        assert len(sub) == counts[c - 1] and np.all(sub.class_number == c)
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "finished" and status["iteration"] == 2
    np.testing.assert_allclose(sum(status["class_sizes"]), 1.0, atol=1e-6)


def test_export_classes(job, tmp_path):
    job = _path(job)
    cls = read_star(job / "particles.star", require_images=False).class_number
    big = int(np.argmax(np.bincount(cls, minlength=3)[1:])) + 1
    dest = tmp_path / "export" / "chosen.star"
    dest.parent.mkdir()
    n = export_classes(job / "particles.star", [big], dest)
    assert n == int(np.sum(cls == big))
    back = read_star(dest)  # the images are found from the new folder too
    assert len(back) == n and np.all(back.class_number == big)
    before = dest.read_bytes()
    with pytest.raises(FileExistsError):
        export_classes(job / "particles.star", [big], dest)
    assert dest.read_bytes() == before
    assert export_classes(job / "particles.star", [1, 2], tmp_path / "all.star") == N
    with pytest.raises(InputError, match="3"):
        export_classes(job / "particles.star", [3], tmp_path / "none.star")
    assert not (tmp_path / "none.star").exists()


def _log(job_dir):
    return (_path(job_dir) / "log.txt").read_text()


def test_focus_mask_only_is_warned_about(data, tmp_path):
    focus = tmp_path / "focus.mrc"
    write_map(focus, sphere_at(BOX, (12, 12, 15), 16.0, APIX, 4.0), APIX)
    steps, _ = drain(classify_job(str(data / "particles.star"), str(tmp_path / "jobs"),
                                  ClassifyParams(n_classes=2, max_iter=1), focus_mask=str(focus)))
    log = _log(steps[-1].job_dir)
    assert log.count("WARNING: only a focus mask") == 1
    assert (_path(steps[-1].job_dir) / "focus_mask.mrc").is_file()


def test_focus_mask_half_outside_the_solvent_mask_is_warned_about(data, tmp_path):
    solvent = np.zeros((BOX,) * 3, np.float32)
    solvent[:12] = 1.0  # the slab z < 12
    focus = sphere_at(BOX, (11.5, 12, 12), 16.0, APIX, 0.0)  # a sphere cut in half by the slab's face
    write_map(tmp_path / "solvent.mrc", solvent, APIX)
    write_map(tmp_path / "focus.mrc", focus, APIX)
    steps, _ = drain(classify_job(str(data / "particles.star"), str(tmp_path / "jobs"),
                                  ClassifyParams(n_classes=2, max_iter=1), solvent_mask=str(tmp_path / "solvent.mrc"),
                                  focus_mask=str(tmp_path / "focus.mrc")))
    log = _log(steps[-1].job_dir)
    assert "only a focus mask" not in log
    found = re.findall(r"WARNING: the focus mask reaches outside the solvent mask: (\d+) %", log)
    assert len(found) == 1 and 40 <= int(found[0]) <= 60, log


def test_hetero_class_box_finer_than_the_particles(data, tmp_path):
    starts = [str(data / "truth" / f"state_{k}.mrc") for k in (0, 1)]
    steps, result = drain(classify_job(str(data / "particles.star"), str(tmp_path / "jobs"),
                                       ClassifyParams(mode="hetero", max_iter=1, class_box=32, hetero_search="local"),
                                       starts=starts))
    job = _path(steps[-1].job_dir)
    assert job.name.startswith("job_hetero_")
    assert "WARNING: the class box (32 px" in _log(job) and "finer than the particles' own sampling" in _log(job)
    for c in (1, 2):
        vol, apix = read_map(job / f"class_{c:03d}.mrc")
        assert vol.shape == (32, 32, 32) and abs(apix - APIX * BOX / 32) < 1e-3
    assert len(result.classes) == N and result.particles.rotations is not None


def test_closing_the_generator_stops_the_job(data, tmp_path):
    gen = classify_job(str(data / "particles.star"), str(tmp_path / "jobs"), ClassifyParams(n_classes=2, max_iter=3))
    first = next(gen)
    gen.close()
    job = _path(first.job_dir)
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "stopped" and status["last_iteration"] == 1
    assert "STOPPED" in _log(job)
    assert (job / "class_001.mrc").is_file() and not (job / "particles.star").exists()


def test_an_empty_class_reports_no_resolution(data, tmp_path):
    """A class that no particle chooses must not report a resolution (issue 17: an empty class read 6.0 Å)."""
    zz, yy, xx = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    blob = np.exp(-((xx - 6) ** 2 + (yy - 6) ** 2 + (zz - 6) ** 2) / 2.0).astype(np.float32) * 0.01
    write_map(tmp_path / "blob.mrc", blob, APIX)
    steps, result = drain(classify_job(str(data / "particles.star"), str(tmp_path / "jobs"),
                                       ClassifyParams(mode="hetero", max_iter=3, hetero_search="local"),
                                       starts=[str(data / "truth" / "state_0.mrc"), str(tmp_path / "blob.mrc")]))
    fin = steps[-1]
    assert fin.class_sizes[1] * N < 10, fin.class_sizes
    assert np.isinf(fin.class_resolution_A[1]) and np.isfinite(fin.class_resolution_A[0])
