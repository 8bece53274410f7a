"""The 2D classification dock's run model without Qt: decisions, gallery order, particles per class, export."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cryolive.class2d import Class2DParams
from cryolive.io import read_particles, read_star
from cryolive.jobs import drain
from cryolive.jobs.class2d import class2d_job
from cryolive.plugin.class2d_model import REJECTED, SELECTED, UNDECIDED, Class2DRunModel

K = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 3-class job on a tiny simulated set (box 32, 2 views x 40 + 20 junk), streamed into a model."""
    from cryolive.simulator.phantom import make_phantom, render
    from cryolive.simulator.views2d import simulate_views

    root = tmp_path_factory.mktemp("class2d_model")
    vol = render(make_phantom(32, 4.0, seed=1), 32, 4.0, 1.6)
    star, truth = simulate_views(root / "data", vol, 4.0, n_views=2, per_view=40, snr=0.1, seed=0)
    model = Class2DRunModel()
    events: list[str] = []
    model.changed.connect(events.append)
    model.start(star, K)
    gen = class2d_job(str(star), str(root / "jobs"), Class2DParams(k=K, max_iter=2))
    steps, result = drain(gen)
    for it in steps:
        model.update(it)
    model.finish(result)
    return model, result, star, events


def test_model_follows_the_run(run):
    model, result, _, events = run
    assert events == ["reset", "iteration", "iteration", "finished"]
    assert model.job_dir is not None and model.job_dir.name == "job_class2d_001"
    assert model.k == K and model.iteration == result.iterations and model.finished
    assert model.averages.shape == (K, 32, 32) and model.averages.dtype == np.float32
    assert model.n_particles == 100 and model.pixel_size == pytest.approx(4.0)
    order = model.gallery_order()
    assert sorted(order.tolist()) == list(range(K)) and (np.diff(model.sizes[order]) <= 0).all()
    for k in range(K):
        idx = model.particles_of_class(k)
        assert len(idx) == model.sizes[k] and (result.assignments[idx] == k).all()


def test_decisions():
    model = Class2DRunModel()
    model.start("p.star", 4)
    seen: list[str] = []
    model.changed.connect(seen.append)
    assert model.decisions.tolist() == [UNDECIDED] * 4
    assert model.toggle(1) == SELECTED and model.toggle(1) == REJECTED and model.toggle(1) == SELECTED
    model.reject([0, 3])
    assert model.decisions.tolist() == [REJECTED, SELECTED, UNDECIDED, REJECTED]
    model.invert()  # undecided counts as not selected
    assert model.decisions.tolist() == [SELECTED, REJECTED, SELECTED, SELECTED]
    assert model.selected_classes().tolist() == [0, 2, 3]
    model.reject_all()
    assert (model.decisions == REJECTED).all() and len(model.selected_classes()) == 0
    model.select_all()
    assert (model.decisions == SELECTED).all()
    assert seen == ["decisions"] * 7
    with pytest.raises(IndexError):
        model.toggle(4)
    with pytest.raises(RuntimeError, match="not finished"):
        model.selected_particle_indices()


def test_export_writes_the_selected_classes_only(run, tmp_path):
    model, result, star, _ = run
    model.reject_all()
    with pytest.raises(ValueError, match="no class"):
        model.export_star()
    keep = model.gallery_order()[:2]
    model.select(keep)
    want = np.flatnonzero(np.isin(result.assignments, keep))
    np.testing.assert_array_equal(model.selected_particle_indices(), want)

    path, n = model.export_star()
    assert path == model.job_dir / "particles_selected.star" and n == len(want)
    back = read_particles(path)  # what the refinement and 3D classification docks read
    assert len(back) == n and back.box == 32
    np.testing.assert_array_equal(back.class_number, result.assignments[want] + 1)
    np.testing.assert_allclose(back.ctf.defocus_u, read_star(star).ctf.defocus_u[want])
    np.testing.assert_array_equal(back.images(np.arange(3)), read_star(star).images(want[:3]))
    # the in-plane angle is not a 3D pose: no rotations for a refinement to take as its starting poses
    assert back.rotations is None and "rlnAnglePsi" not in back.table.columns
    np.testing.assert_allclose(back.shifts, result.shifts_A[want], atol=1e-3)

    # never overwrites: the default name moves on, an explicit existing path is refused unless asked
    before = path.read_bytes()
    assert model.default_export_path().name == "particles_selected_2.star"
    with pytest.raises(FileExistsError):
        model.export_star(path)
    assert path.read_bytes() == before
    model.reject([keep[1]])
    _, n1 = model.export_star(path, overwrite=True)
    assert n1 == len(model.particles_of_class(int(keep[0]))) and len(read_star(path)) == n1
    other = tmp_path / "mine.star"
    assert model.export_star(other)[0] == other and other.is_file()


def test_model_imports_no_qt():
    code = ("import sys, cryolive.plugin.class2d_model; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'napari', 'magicgui')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
