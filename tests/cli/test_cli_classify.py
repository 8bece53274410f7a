"""``cryolive classify`` and ``cryolive hetero`` on a tiny simulated two-state data set: help, a short run of each,
the job folder's outputs, the printed progress, one-line errors naming the file, and the user's files untouched."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cryolive.cli import build_parser, main
from cryolive.io import read_map, read_particles, write_map
from cryolive.masks import sphere_at

BOX, APIX = 24, 4.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """400 particles (box 24, 4 Å/px) of two states with their true poses; truth/state_0.mrc and state_1.mrc."""
    from cryolive.simulator.dataset import SimulationParams, simulate_dataset

    d = tmp_path_factory.mktemp("cls") / "d"
    simulate_dataset(d, SimulationParams(n=400, box=BOX, pixel_size=APIX, snr=0.2, n_states=2, seed=5))
    return d


def _hashes(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _inputs(d):
    return [d / "particles.star", d / "particles.mrcs", d / "truth" / "state_0.mrc", d / "truth" / "state_1.mrc"]


def _check_job(job, k, n):
    for name in ("particles.star", "class_sizes.csv", "class_sizes.png", "iterations.csv", "class_fsc.csv",
                 "params.json", "log.txt", "status.json", "solvent_mask.mrc"):
        assert (job / name).is_file(), name
    for c in range(1, k + 1):
        vol, apix = read_map(job / f"class_{c:03d}.mrc")
        assert vol.shape == (BOX,) * 3 and abs(apix - APIX) < 1e-3 and np.isfinite(vol).all()
    assert json.loads((job / "status.json").read_text())["state"] == "finished"
    stack = read_particles(job / "particles.star", require_images=False)
    assert len(stack) == n and set(np.unique(stack.class_number)) <= set(range(1, k + 1))
    per_class = [job / f"particles_class_{c:03d}.star" for c in range(1, k + 1)]
    total = sum(len(read_particles(p, require_images=False)) for p in per_class if p.exists())
    assert total == n
    assert len((job / "iterations.csv").read_text().splitlines()) == 1 + 2  # header + 2 iterations


@pytest.mark.parametrize("cmd", ["classify", "hetero"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: cryolive {cmd}" in out and "--out" in out and "--max-iter" in out
    assert ("--focus-mask" in out and "--solvent-mask" in out) if cmd == "classify" else "--class-box" in out
    assert cmd in build_parser().format_help()


def test_classify_runs_with_a_focus_mask_only(data, tmp_path, capsys):
    focus = tmp_path / "focus.mrc"
    write_map(focus, sphere_at(BOX, (12, 12, 16), 16.0, APIX, 8.0), APIX)
    before = _hashes(_inputs(data) + [focus])
    out = tmp_path / "jobs"
    assert main(["classify", str(data / "particles.star"), "--k", "2", "--max-iter", "2", "--focus-mask", str(focus),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    its = [ln for ln in lines if ln.startswith("iteration ")]
    assert len(its) == 2 and all("%" in ln and "changed" in ln and "FSC 0.5 at" in ln for ln in its)
    # each warning printed once, before the iterations
    assert sum(ln.startswith("WARNING: only a focus mask") for ln in lines) == 1
    assert lines[0].startswith("WARNING: ")
    job = out / "job_classify_001"
    assert f"job folder {job}" in printed and "class 2:" in printed
    _check_job(job, 2, 400)
    assert (job / "focus_mask.mrc").is_file() and (job / "consensus.mrc").is_file()
    assert json.loads((job / "params.json").read_text())["mode"] == "fixed"
    assert _hashes(_inputs(data) + [focus]) == before


def test_hetero_runs_from_two_maps_with_local_search(data, tmp_path, capsys):
    before = _hashes(_inputs(data))
    out = tmp_path / "jobs"
    assert main(["hetero", str(data / "particles.star"), "--ref", str(data / "truth" / "state_0.mrc"),
                 str(data / "truth" / "state_1.mrc"), "--max-iter", "2", "--local", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sum(ln.startswith("iteration ") for ln in printed.splitlines()) == 2
    assert "WARNING" not in printed  # class box = particle box: nothing to warn about
    job = out / "job_hetero_001"
    _check_job(job, 2, 400)
    params = json.loads((job / "params.json").read_text())
    assert params["mode"] == "hetero" and params["hetero_search"] == "local" and params["n_classes"] == 2
    # started from the two true states, the classes follow them
    from cryolive.classification import adjusted_rand_index

    truth = np.load(data / "truth" / "truth.npz")["states"]
    classes = read_particles(job / "particles.star", require_images=False).class_number
    assert adjusted_rand_index(truth, classes) > 0.6
    assert _hashes(_inputs(data)) == before


def test_bad_masks_and_maps_exit_2_naming_the_file(data, tmp_path, capsys):
    star = str(data / "particles.star")
    out = tmp_path / "jobs"
    bad = {
        "range.mrc": (2 * np.ones((BOX,) * 3, np.float32), APIX),  # values outside [0, 1]
        "zero.mrc": (np.zeros((BOX,) * 3, np.float32), APIX),  # selects nothing
    }
    for name, (vol, apix) in bad.items():
        write_map(tmp_path / name, vol, apix)
    write_map(tmp_path / "box16.mrc", np.ones((16, 16, 16), np.float32), APIX)  # padded: a constant map
    for name in bad:
        path = str(tmp_path / name)
        before = _hashes([tmp_path / name])
        assert main(["classify", star, "--k", "2", "--solvent-mask", path, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and path in err and err.startswith("cryolive classify: error:"), err
        assert main(["hetero", star, "--ref", str(data / "truth" / "state_0.mrc"), str(data / "truth" / "state_1.mrc"),
                     "--mask", path, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and path in err, err
        assert _hashes([tmp_path / name]) == before
    # a wrong-box starting map and a missing one
    assert main(["hetero", star, "--ref", str(tmp_path / "box16.mrc"), "--out", str(out)]) == 2
    assert "box16.mrc" in capsys.readouterr().err
    assert main(["hetero", star, "--ref", str(tmp_path / "missing.mrc"), "--out", str(out)]) == 2
    assert "missing.mrc" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "nope.star"), "--k", "2", "--out", str(out)]) == 2
    assert "nope.star" in capsys.readouterr().err
    assert not out.exists()  # inputs are checked before any job folder is made
