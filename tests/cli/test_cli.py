"""The ``cryolive`` command line: every subcommand on small data, outputs checked against the truth."""

from __future__ import annotations

import hashlib
import json

import mrcfile
import numpy as np
import pytest

from cryolive.cli import build_parser, main
from cryolive.io import read_map, read_particles
from cryolive.resolution.fsc import fsc
from cryolive.sample import sample_path

SUBCOMMANDS = ["simulate", "project", "reconstruct", "fsc", "mask", "demo", "gui"]


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cryolive" in capsys.readouterr().out


def test_parser_lists_all_subcommands():
    text = build_parser().format_help()
    assert all(c in text for c in SUBCOMMANDS)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_simulate_is_deterministic_and_consistent(tmp_path):
    args = ["simulate", "--n", "120", "--box", "24", "--apix", "3", "--snr", "0.2", "--seed", "3", "--states", "3"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    # same data for the same seed (MRC headers carry a creation time stamp, so compare the data)
    assert _sha(tmp_path / "a" / "particles.star") == _sha(tmp_path / "b" / "particles.star")
    for name in ("particles.mrcs", "truth/truth_map.mrc", "truth/state_2.mrc"):
        with mrcfile.open(tmp_path / "a" / name) as fa, mrcfile.open(tmp_path / "b" / name) as fb:
            np.testing.assert_array_equal(fa.data, fb.data, err_msg=name)
    stack = read_particles(tmp_path / "a" / "particles.star")
    truth = np.load(tmp_path / "a" / "truth" / "truth.npz")
    assert len(stack) == 120 and stack.box == 24 and abs(stack.pixel_size - 3.0) < 1e-6
    np.testing.assert_allclose(stack.rotations, truth["rotations"], atol=1e-6)
    np.testing.assert_allclose(stack.shifts, truth["shifts_A"], atol=1e-6)
    assert set(np.unique(truth["states"])) == {0, 1, 2}
    # the states differ (domain absent / moved) but share the rest
    s0, _ = read_map(tmp_path / "a" / "truth" / "state_0.mrc")
    s1, _ = read_map(tmp_path / "a" / "truth" / "state_1.mrc")
    assert 0.05 < np.linalg.norm(s0 - s1) / np.linalg.norm(s0) < 0.9
    params = json.loads((tmp_path / "a" / "params.json").read_text())
    assert params["snr"] == 0.2 and params["noise_sd"] > 0


def test_simulate_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user data")
    assert main(["simulate", "--n", "10", "--box", "16", "--out", str(tmp_path / "x")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x" / "keep.txt").read_text() == "user data"


def test_reconstruct_fsc_and_mask_on_sample_data(tmp_path, capsys):
    out = tmp_path / "map.mrc"
    assert main(["reconstruct", str(sample_path("particles.star")), "--out", str(out), "--halves"]) == 0
    printed = capsys.readouterr().out
    assert "at 0.143" in printed
    vol, apix = read_map(out)
    truth, sample_apix = read_map(sample_path("truth_map.mrc"))
    assert abs(apix - sample_apix) < 1e-4
    assert fsc(vol, truth)[1:8].min() > 0.9
    # FSC of the half maps, with a CSV
    a, b = tmp_path / "map_half_A.mrc", tmp_path / "map_half_B.mrc"
    assert main(["fsc", str(a), str(b), "--csv", str(tmp_path / "fsc.csv")]) == 0
    line = capsys.readouterr().out
    assert "Å at 0.143" in line and "Å at 0.5" in line
    rows = (tmp_path / "fsc.csv").read_text().splitlines()
    assert rows[0].startswith("shell,freq_1_per_A") and len(rows) == 1 + truth.shape[0] // 2 + 1
    # a mask from the map
    assert main(["mask", str(out), "--threshold", "0.2", "--dilate", "3", "--soft", "6", "--lowpass", "15",
                 "--out", str(tmp_path / "mask.mrc")]) == 0
    mask, mapix = read_map(tmp_path / "mask.mrc")
    assert abs(mapix - sample_apix) < 1e-4 and mask.min() >= 0 and mask.max() <= 1 and 0.01 < mask.mean() < 0.5
    # never overwrite
    assert main(["reconstruct", str(sample_path("particles.star")), "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err


def test_project_without_ctf_writes_plain_projections(tmp_path):
    from cryolive.backend import to_numpy
    from cryolive.projection import Projector

    truth_path = sample_path("truth_map.mrc")
    out = tmp_path / "proj.mrcs"
    assert main(["project", str(truth_path), "--particles", str(sample_path("particles.star")),
                 "--out", str(out), "--no-ctf"]) == 0
    stack = read_particles(tmp_path / "proj.star")
    src = read_particles(sample_path("particles.star"))
    assert len(stack) == 2000
    np.testing.assert_allclose(stack.rotations, src.rotations, atol=1e-9)
    np.testing.assert_allclose(stack.shifts, src.shifts, atol=1e-9)
    truth, apix = read_map(truth_path)
    want = to_numpy(Projector(truth).project_real(src.rotations[:5], src.shifts[:5] / apix))
    np.testing.assert_allclose(stack.images(np.arange(5)), want, atol=1e-4 * np.abs(want).max())


def test_project_with_ctf_is_consistent_with_reconstruction(tmp_path):
    truth_path = sample_path("truth_map.mrc")
    out = tmp_path / "proj.mrcs"
    assert main(["project", str(truth_path), "--particles", str(sample_path("particles.star")),
                 "--out", str(out)]) == 0
    assert main(["reconstruct", str(tmp_path / "proj.star"), "--out", str(tmp_path / "rec.mrc")]) == 0
    rec, _ = read_map(tmp_path / "rec.mrc")
    truth, _ = read_map(truth_path)
    assert fsc(rec, truth)[1:15].min() > 0.95  # noiseless: near-perfect out to 0.9 Nyquist


def test_missing_input_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.star"
    assert main(["reconstruct", str(missing), "--out", str(tmp_path / "m.mrc")]) == 2
    assert "nope.star" in capsys.readouterr().err
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]) == 2
    assert "a.mrc" in capsys.readouterr().err


def test_demo_refines_the_sample_and_reports_against_the_truth(tmp_path, capsys):
    # one iteration here (the last iteration always uses every particle, never a minibatch); `make demo` runs the
    # full default refinement
    assert main(["demo", "--out", str(tmp_path), "--max-iter", "1"]) == 0
    printed = capsys.readouterr().out
    assert "iteration 1 (global, 2000 particles" in printed
    assert "the true map gives" in printed and "median angular error" in printed
    job = tmp_path / "job_refine_001"
    for name in ("map.mrc", "map_sharp.mrc", "half_A.mrc", "half_B.mrc", "fsc.png", "particles.star", "log.txt"):
        assert (job / name).exists(), name
    assert main(["demo", "--out", str(tmp_path), "--reconstruct"]) == 0
    assert (tmp_path / "job_reconstruct_001" / "map_sharp.mrc").exists()


def test_refine_passes_sgd_steps_to_the_job(tmp_path, capsys):
    args = ["refine", str(sample_path("particles.star")), "--ref", str(sample_path("reference.mrc")),
            "--out", str(tmp_path), "--max-iter", "1", "--sgd-steps", "3", "--coarse-step", "15"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ab-initio step   3/3" in printed and "iteration  1" in printed
    job = tmp_path / "job_refine_001"
    assert json.loads((job / "params.json").read_text())["sgd_steps"] == 3
    assert (job / "ab_initio.mrc").exists()
    assert "first 3 ab-initio minibatch steps" in (job / "log.txt").read_text()
    assert main(args[:-4] + ["--coarse-step", "15"]) == 0  # the default: no ab-initio steps
    assert json.loads((tmp_path / "job_refine_002" / "params.json").read_text())["sgd_steps"] == 0


def test_refine_from_input_poses_with_relaxed_symmetry(tmp_path, capsys):
    """--use-poses starts local searches at the file's poses; --relax-sym reaches the job; a relaxed group no
    larger than --sym is refused before any job folder is made."""
    base = ["refine", str(sample_path("particles.star")), "--ref", str(sample_path("reference.mrc")),
            "--out", str(tmp_path), "--max-iter", "1", "--coarse-step", "15"]
    assert main(base + ["--use-poses", "--relax-sym", "C2"]) == 0
    assert "iteration  1 local" in capsys.readouterr().out
    job = tmp_path / "job_refine_001"
    params = json.loads((job / "params.json").read_text())
    assert params["use_input_poses"] is True and params["relax_symmetry"] == "C2"
    log = (job / "log.txt").read_text()
    assert "particles' own poses" in log and "symmetry C2 relaxed" in log
    assert main(base + ["--sym", "C4", "--relax-sym", "C2"]) == 2
    assert "larger group" in capsys.readouterr().err
    assert not (tmp_path / "job_refine_002").exists()
