"""Inputs that carry no signal are refused before any work, with one line naming the file (issue: a zero
reference used to report 8.98 Å, a constant one 9.73 Å, an unnormalised uint16 stack 7.15 Å)."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from cryolive.cli import main
from cryolive.io import read_map, read_particles, write_map
from cryolive.sample import sample_path


@pytest.fixture()
def sample_box() -> tuple[int, float]:
    stack = read_particles(sample_path("particles.star"))
    return stack.box, stack.pixel_size


@pytest.mark.parametrize(("fill", "says"), [(0.0, "all zeros"), (0.37, "constant")])
def test_refine_refuses_a_zero_or_constant_reference(tmp_path, capsys, sample_box, fill, says) -> None:
    box, apix = sample_box
    ref = tmp_path / "ref.mrc"
    write_map(ref, np.full((box,) * 3, fill, np.float32), apix)
    code = main(["refine", str(sample_path("particles.star")), "--ref", str(ref), "--out", str(tmp_path / "jobs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "ref.mrc" in err and says in err
    assert not (tmp_path / "jobs").exists()  # refused before a job folder was made


def test_refine_refuses_an_empty_mask_and_fsc_a_mask_outside_0_1(tmp_path, capsys, sample_box) -> None:
    box, apix = sample_box
    mask = tmp_path / "mask.mrc"
    write_map(mask, np.zeros((box,) * 3, np.float32), apix)
    code = main(["refine", str(sample_path("particles.star")), "--ref", str(sample_path("reference.mrc")),
                 "--mask", str(mask), "--out", str(tmp_path / "jobs")])
    err = capsys.readouterr().err
    assert code == 2 and "mask.mrc" in err and "selects no voxel" in err
    assert not (tmp_path / "jobs").exists()
    vol, _ = read_map(sample_path("truth_map.mrc"))
    bad = tmp_path / "bad_mask.mrc"
    write_map(bad, np.full(vol.shape, 3.0, np.float32), apix)
    assert main(["fsc", str(sample_path("truth_map.mrc")), str(sample_path("truth_map.mrc")), "--mask", str(bad)]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    zero = tmp_path / "zero.mrc"
    write_map(zero, np.zeros(vol.shape, np.float32), apix)
    assert main(["fsc", str(zero), str(zero)]) == 2
    assert "all zeros" in capsys.readouterr().err


def test_unnormalised_and_blank_stacks_are_refused(tmp_path, capsys) -> None:
    star_text = sample_path("particles.star").read_text()
    stack = read_particles(sample_path("particles.star"))
    imgs = stack.images(np.arange(len(stack)))
    for name, data in (("counts", (imgs * 40 + 30000).astype(np.uint16)), ("blank", np.zeros_like(imgs))):
        folder = tmp_path / name
        folder.mkdir()
        with mrcfile.new(folder / "particles.mrcs") as m:
            m.set_data(data)
            m.voxel_size = stack.pixel_size
        (folder / "particles.star").write_text(star_text)
        code = main(["reconstruct", str(folder / "particles.star"), "--out", str(folder / "map.mrc")])
        err = capsys.readouterr().err
        assert code == 2, name
        assert "particles.star" in err
        assert ("not normalised" if name == "counts" else "all zeros") in err
        assert not (folder / "map.mrc").exists()
