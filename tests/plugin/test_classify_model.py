"""The Classification dock's run model without Qt: size history, warnings, counts, export, comparison, text."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from cryolive.classification.classify import ClassifyParams
from cryolive.io import read_star
from cryolive.jobs import drain
from cryolive.jobs.classify import classify_job
from cryolive.plugin.classify_model import (
    ClassifyRunModel,
    class_layer_name,
    diff_layer_name,
    difference_map,
    mode_text,
)

PARAMS = ClassifyParams(n_classes=2, max_iter=2, online_em_iters=0, anneal_iters=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-class job on a tiny simulated two-state set (300 particles, box 24), streamed into a model."""
    from cryolive.simulator.dataset import SimulationParams, simulate_dataset

    root = tmp_path_factory.mktemp("classify_model")
    simulate_dataset(root / "data", SimulationParams(n=300, box=24, pixel_size=4.0, snr=0.1, n_states=2, seed=3))
    star = root / "data" / "particles.star"
    model = ClassifyRunModel()
    model.start(star, PARAMS)
    steps, result = drain(classify_job(str(star), str(root / "jobs"), PARAMS), model.receive)
    model.finish(result)
    return model, steps, result


def test_model_follows_the_run(run):
    model, steps, result = run
    assert model.iterations == [s.iteration for s in steps] == [1, 2] and model.latest is steps[-1]
    assert len(model.size_history) == 2 and all(h.shape == (2,) for h in model.size_history)
    np.testing.assert_allclose(model.size_history[-1], steps[-1].class_sizes)
    assert model.job_dir is not None and model.job_dir.name == "job_classify_001"  # from the iterations
    assert model.finished and model.class_counts.sum() == 300
    np.testing.assert_array_equal(model.class_counts, np.bincount(result.classes, minlength=3)[1:])
    rows = model.class_rows()
    assert len(rows) == 2 and rows[0].startswith(f"class 1: {model.class_counts[0]} particles (")
    assert model.sizes_title() == "class sizes, iterations 1–2"
    it = steps[-1]
    assert model.fsc_title(it).startswith("class FSC, iteration 2 (at 0.5: 1: ")
    assert model.status(it, 12.0).startswith("iteration 2 of ≤ 2 (full): ") and "(12 s so far)" in model.status(it, 12)
    assert "mean ESS" in model.log_line(it) and "sizes " in model.log_line(it)
    log, status, notice = model.finished_text(30.0)
    assert "after 2 iterations" in log and str(model.job_dir) in log
    assert status.startswith("finished: 2 iterations") and notice.startswith("Classification finished: class sizes")


def test_export_writes_the_ticked_classes_only(run, tmp_path):
    model, _, result = run
    model.set_selected([])
    assert model.export_problem() == "Tick the classes to export"
    with pytest.raises(ValueError, match="Tick"):
        model.export()
    model.set_selected([2])
    path, n = model.export()
    assert path == model.job_dir / "particles_selected_classes_2.star" == model.last_export
    assert n == int(np.sum(result.classes == 2)) and set(read_star(path).class_number) == {2}
    assert model.default_export_path().name == "particles_selected_classes_2_2.star"  # never overwrites
    assert "exists" in model.export_problem(path)
    model.set_selected([2, 1, 2])
    assert model.selected == [1, 2]
    other = tmp_path / "both.star"
    assert model.export(other) == (other, 300)


def test_nothing_to_export_before_the_job_has_finished():
    model = ClassifyRunModel()
    model.start("p.star", PARAMS)
    model.set_selected([1])
    assert model.default_export_path() is None and "No finished classification" in model.export_problem()


def test_warnings_are_kept_once_and_a_new_run_forgets_them():
    model = ClassifyRunModel()
    model.start("p.star", PARAMS)
    assert model.new_warnings(("a", "b")) == ["a", "b"]
    assert model.new_warnings(("b", "c")) == ["c"] and model.warnings == ["a", "b", "c"]
    model.set_selected([1])
    model.start_compare(1, 2)
    model.start("p.star", ClassifyParams(n_classes=4, mode="hetero"))
    assert model.warnings == [] and model.selected == [] and model.compared is None and model.n_classes == 4
    assert model.start_log("CPU", {"focus_mask": "my focus"}) == ("heterogeneous refinement of p.star, 4 classes, "
                                                                  "on CPU; focus mask from layer 'my focus'")
    assert model.stopped_text(3)[1] == "stopped after iteration 3"


def test_comparison():
    model = ClassifyRunModel()
    assert model.start_compare(1, 3) and not model.start_compare(1, 3) and model.compared == (1, 3)
    assert model.start_compare(2, 3)
    model.end_compare()
    assert model.compared is None
    assert "two different classes" in model.compare_problem(1, 1, (4, 4, 4), (4, 4, 4))
    assert "two different classes" in model.compare_problem(1, 2, (4, 4, 4), None)
    assert "different boxes" in model.compare_problem(1, 2, (4, 4, 4), (6, 6, 6))
    assert model.compare_problem(1, 2, (4, 4, 4), (4, 4, 4)) == ""
    a, b = np.ones((4, 4, 4), np.float32), np.zeros((4, 4, 4), np.float32)
    diff, lim = difference_map(a, b)
    assert diff.dtype == np.float32 and lim == pytest.approx(1.0)
    assert difference_map(a, a)[1] == 1.0  # no difference: still a usable contrast range
    assert class_layer_name(2) == "class 2" and diff_layer_name(1, 3) == "class 1 − class 3"
    assert mode_text("local") == "3D classification (local pose search)"


def test_receive_takes_the_job_folder_from_an_iteration():
    model = ClassifyRunModel()
    model.start("p.star", PARAMS)
    it = SimpleNamespace(iteration=1, class_sizes=np.array([0.25, 0.75]), job_dir="/tmp/job_classify_009")
    model.receive(it)
    assert model.job_dir.name == "job_classify_009" and model.size_history[0].tolist() == [0.25, 0.75]


def test_model_imports_no_qt():
    code = ("import sys, cryolive.plugin.classify_model; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'napari', 'magicgui', 'superqt', 'psygnal', 'vispy')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_interrupted_classifications_are_listed_and_continue_from_their_folder(tmp_path):
    import dataclasses
    import json
    import socket

    from cryolive.plugin.classify_model import interrupted_classifications

    out = tmp_path / "jobs"
    prm = {"particles": "p.star", "starts": [], **dataclasses.asdict(dataclasses.replace(PARAMS, n_classes=3))}
    for name, state in (("job_classify_001", "running"), ("job_hetero_001", "finished"),
                        ("job_refine_001", "running")):
        job = out / name
        job.mkdir(parents=True)
        (job / "params.json").write_text(json.dumps(prm))
        (job / "status.json").write_text(json.dumps({"state": state, "pid": 999999, "host": socket.gethostname(),
                                                     "iteration": 1}))
        (job / "checkpoint.npz").write_bytes(b"")
    job = out / "job_classify_001"
    assert interrupted_classifications(out) == [(job, "job_classify_001 was interrupted after iteration 1")]
    model = ClassifyRunModel()
    model.start("other.star", PARAMS)
    assert model.continue_from(job) == "continued job_classify_001 after iteration 1…"
    assert model.job_dir == job and model.particles_path == "p.star" and model.n_classes == 3
