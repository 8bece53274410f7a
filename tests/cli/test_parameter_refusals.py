"""Parameters out of range, output places that cannot be written and runs the machine cannot hold are refused
before any work or job folder, in one line naming the flag or the path, exit status 2 (issue 17: these used to
end in tracebacks, or in errors that hid the cause, after the job folder existed)."""

from __future__ import annotations

import os
import typing

import pytest

from cryolive.classification.classify import ClassifyParams
from cryolive.cli import main
from cryolive.io import InputError
from cryolive.io.preflight import available_memory_bytes, check_memory
from cryolive.params import check_params, param_spec
from cryolive.refinement.refine import RefineParams
from cryolive.sample import sample_path

STAR = str(sample_path("particles.star"))
REF = str(sample_path("reference.mrc"))


def _refused(capsys, argv: list[str], says: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert says in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(("extra", "says"), [
    (["--max-iter", "0"], "--max-iter must be at least 1 (got 0)"),
    (["--max-iter", "-1"], "--max-iter must be at least 1 (got -1)"),
    (["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    (["--lowpass", "0"], "--lowpass must be more than 0 Å"),
    (["--coarse-step", "0"], "--coarse-step must be more than 0 deg"),
    (["--global-iters", "-2"], "--global-iters must be at least 0"),
    (["--workers", "0"], "--workers must be at least 1 (got 0)"),
    (["--workers", "2", "--scheduler", "tcp://host:8786"], "give one (a local cluster"),
    (["--scheduler", "tcp://host :8786"], "not a scheduler address"),
])
def test_refine_parameters_out_of_range(tmp_path, capsys, extra, says) -> None:
    out = tmp_path / "jobs"
    _refused(capsys, ["refine", STAR, "--ref", REF, "--out", str(out), *extra], says)
    assert not out.exists()


def test_output_places_that_cannot_be_written(tmp_path, capsys) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    _refused(capsys, ["refine", STAR, "--ref", REF, "--out", str(a_file / "jobs")], "is a file, not a folder")
    _refused(capsys, ["refine", STAR, "--ref", REF, "--out", ""], "--out is empty")
    _refused(capsys, ["reconstruct", STAR, "--out", str(tmp_path), "--overwrite"], "is a folder")
    _refused(capsys, ["simulate", "--out", str(a_file)], "is a file, not a folder")
    _refused(capsys, ["mask", REF, "--threshold", "0.1", "--out", str(tmp_path)], "is a folder")
    assert a_file.read_text() == "mine"
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        _refused(capsys, ["refine", STAR, "--ref", REF, "--out", str(locked / "jobs")], "not writable")


def test_runs_too_large_for_the_machine(tmp_path, capsys) -> None:
    _refused(capsys, ["simulate", "--box", "100000", "--out", str(tmp_path / "a")], "--box must be at most 1024 px")
    _refused(capsys, ["simulate", "--n", "0", "--out", str(tmp_path / "b")], "--n must be at least 1")
    _refused(capsys, ["simulate", "--n", "1000000000", "--box", "256", "--out", str(tmp_path / "c")],
             "GiB on disk")
    _refused(capsys, ["classify", STAR, "--k", "5000", "--out", str(tmp_path / "d")],
             "--k 5000: more classes than particles (2000)")
    _refused(capsys, ["hetero", STAR, "--ref", REF, REF, "--class-box", "4096", "--out", str(tmp_path / "e")],
             "GiB of memory")
    for name in "abcde":
        assert not (tmp_path / name).exists()
    if available_memory_bytes() is not None:
        with pytest.raises(InputError, match="needs about .* GiB of memory"):
            check_memory(1e18, "a box of 100000 px", "choose a smaller box")


def test_every_checked_parameter_has_a_label_and_a_bound() -> None:
    for cls in (RefineParams, ClassifyParams):
        specs = param_spec(cls)
        types = typing.get_type_hints(cls)
        assert len(specs) >= 10
        for name, s in specs.items():
            assert s.label, name
            if types[name] is bool:  # a switch: on or off, nothing to bound
                continue
            assert s.choices is not None or any(b is not None for b in (s.ge, s.gt, s.le)), name
        check_params(cls())  # the defaults are in range
    with pytest.raises(InputError, match="--similarity must be at most 1"):
        check_params(ClassifyParams(class_similarity=1.5))
    with pytest.raises(InputError, match="--scale must be one of minimize, reset"):
        check_params(RefineParams(scale_mode="other"))


def test_unknown_symmetry_and_mask_threshold_name_the_flag(tmp_path, capsys) -> None:
    out = tmp_path / "jobs"
    _refused(capsys, ["refine", STAR, "--ref", REF, "--out", str(out), "--sym", "Q5"], "--sym: unknown point-group")
    _refused(capsys, ["classify", STAR, "--k", "2", "--out", str(out), "--sym", "Q5"], "--sym: unknown point-group")
    _refused(capsys, ["mask", REF, "--threshold", "1.5", "--out", str(tmp_path / "m.mrc")], "--threshold must lie")
    assert not out.exists() and not (tmp_path / "m.mrc").exists()
