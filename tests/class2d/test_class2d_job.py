"""``class2d_job`` and ``cryolive class2d``: the job folder's files, particles.star read back, the printed
progress, refusals before any folder is made, and the device (CuPy) path."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cryolive.class2d import Class2DParams, classify2d
from cryolive.cli import main
from cryolive.io import InputError, MrcStack, read_star
from cryolive.jobs import drain
from cryolive.jobs.class2d import class2d_job, gallery_order

K = 3


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_job_folder_holds_every_output(small_views, tmp_path):
    star, truth = small_views
    n = len(truth.view)
    steps, result = drain(class2d_job(str(star), str(tmp_path / "jobs"), Class2DParams(k=K, max_iter=3)))
    job = tmp_path / "jobs" / "job_class2d_001"
    assert [s.job_dir for s in steps] == [str(job)] * 3
    for name in ("classes.mrcs", "particles.star", "class_sizes.csv", "iterations.csv", "gallery.png",
                 "params.json", "log.txt", "status.json"):
        assert (job / name).is_file(), name
    with MrcStack(job / "classes.mrcs") as st:
        assert len(st) == K and st.box == 32 and abs(st.pixel_size - 4.0) < 1e-3
        np.testing.assert_allclose(st.read(np.arange(K)), result.averages, atol=1e-6)
    parts = read_star(job / "particles.star")
    assert len(parts) == n
    assert parts.class_number.min() >= 1 and parts.class_number.max() <= K
    np.testing.assert_array_equal(parts.class_number, result.assignments + 1)
    np.testing.assert_allclose(parts.table["rlnAnglePsi"].to_numpy(float), result.psi_deg, atol=1e-3)
    np.testing.assert_allclose(parts.shifts, result.shifts_A, atol=1e-3)
    assert "rlnMaxValueProbDistribution" in parts.table.columns and "rlnAngleTilt" not in parts.table.columns
    # the same images, in the same order, as the input
    np.testing.assert_array_equal(parts.images(np.arange(5)), read_star(star).images(np.arange(5)))
    sizes = _rows(job / "class_sizes.csv")
    assert [int(r["class"]) for r in sizes] == [1, 2, 3]
    assert sum(int(r["particles"]) for r in sizes) == n
    assert len(_rows(job / "iterations.csv")) == 3
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "finished" and sum(status["class_sizes"]) == n
    assert json.loads((job / "params.json").read_text())["k"] == K
    assert (job / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gallery_order_is_by_size():
    assert gallery_order(np.array([5, 40, 5, 12])).tolist() == [1, 3, 0, 2]


def test_cli_prints_one_line_per_iteration(small_views, tmp_path, capsys):
    star, _ = small_views
    rc = main(["class2d", str(star), "--k", "2", "--out", str(tmp_path / "jobs"), "--max-iter", "2",
               "--diameter", "100", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("iteration ")]
    assert len(lines) == 2 and "changed" in lines[0] and "largest class" in lines[0] and "Å" in lines[0]
    assert "job_class2d_001" in out
    params = json.loads((tmp_path / "jobs" / "job_class2d_001" / "params.json").read_text())
    assert params["diameter_A"] == 100 and params["seed"] == 3 and params["k"] == 2


@pytest.mark.parametrize("kwargs, flag", [({"k": 1000}, "--k"), ({"k": 0}, "--k"), ({"max_iter": 0}, "--max-iter")])
def test_refusals_make_no_folder(small_views, tmp_path, kwargs, flag):
    star, _ = small_views
    params = Class2DParams(**{"k": K, **kwargs})
    with pytest.raises(InputError, match=flag):
        next(class2d_job(str(star), str(tmp_path / "jobs"), params))
    assert not (tmp_path / "jobs").exists()


def test_cli_refusal_is_one_line(small_views, tmp_path, capsys):
    star, _ = small_views
    rc = main(["class2d", str(star), "--k", "1000", "--out", str(tmp_path / "jobs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--k" in err[0]
    assert not (tmp_path / "jobs").exists()


@pytest.fixture(scope="module")
def numpy_result(small_views):
    """The classification of the small set on NumPy (the yardstick of the device path)."""
    from cryolive import backend

    old = backend.xp()
    backend.set_backend("numpy")
    try:
        return drain(classify2d(read_star(small_views[0]), Class2DParams(k=K, max_iter=3)))[1]
    finally:
        backend._XP = old


def test_device_path_gives_the_same_classes(small_views, numpy_result, xp_backend):
    """The CuPy path (a GPU, or the strict emulation of CuPy's host/device rules) gives NumPy's classes."""
    _, result = drain(classify2d(read_star(small_views[0]), Class2DParams(k=K, max_iter=3)))
    assert isinstance(result.averages, np.ndarray) and result.averages.dtype == np.float32
    assert np.mean(result.assignments == numpy_result.assignments) >= 0.95
    for a, b in zip(result.averages, numpy_result.averages, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
