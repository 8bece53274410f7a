"""cryoSPARC .cs files: real samples, round trips, conversion to and from STAR, bad input."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryolive.io import InputError, read_cs, read_star, write_cs, write_stack, write_star
from cryolive.rotations.euler import cryosparc_pose_to_matrix


def _mrc_data(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample stacks lack the MAP ID and machine stamp
        with mrcfile.open(path, permissive=True) as m:
            return np.array(m.data, dtype=np.float32)


def test_empiar_cs_values(interop):
    s = read_cs(interop / "empiar_10076_7.cs")
    raw = np.load(interop / "empiar_10076_7.cs")
    assert len(s) == 7 and s.box == 320 and s.pixel_size == pytest.approx(1.31, abs=1e-4)
    assert s.rotations is None and s.shifts is None
    assert np.array_equal(s.ctf.defocus_u.astype(np.float32), raw["ctf/df1_A"])
    assert s.ctf.defocus_u[0] == 15301.1  # float32 values read as their shortest decimal
    assert s.ctf.astig_angle[0] == pytest.approx(np.deg2rad(5.28), abs=1e-7)
    assert s.ctf.cs[0] == 2.7 and s.ctf.voltage[0] == 300 and s.ctf.amp_contrast[0] == 0.07
    assert s.stack_index.tolist() == list(range(7))
    assert s.table["blob/sign"].tolist() == [-1.0] * 7 and "blob/shape_0" in s.table
    assert np.array_equal(s.images([6, 0]), _mrc_data(interop / "empiar_10076_7.mrc")[[6, 0]])


def test_p12_alignments(interop):
    raw = np.load(interop / "cryosparc_P12_J24_001_particles.cs")
    with pytest.raises(InputError, match=r"(?s)P12_J24_001_particles\.cs: 50 image stack file\(s\) not found.*J19"):
        read_cs(interop / "cryosparc_P12_J24_001_particles.cs")
    s = read_cs(interop / "cryosparc_P12_J24_001_particles.cs", require_images=False)
    assert len(s) == 2019 and s.box == 180 and s.pixel_size == 2.95 and len(s.stack_paths) == 50
    assert np.allclose(s.rotations, cryosparc_pose_to_matrix(raw["alignments3D/pose"].astype(np.float64)))
    assert np.allclose(s.shifts, raw["alignments3D/shift"].astype(np.float64) * 2.95)
    assert np.array_equal(s.half_set, raw["alignments3D/split"].astype(int) + 1)
    assert set(s.half_set.tolist()) == {1, 2}
    assert np.array_equal(s.class_number, raw["alignments3D/class"].astype(int) + 1)
    assert np.array_equal(s.table["alpha"].to_numpy(), raw["alignments3D/alpha"])
    assert np.array_equal(s.table["alignments3D/pose_2"].to_numpy(), raw["alignments3D/pose"][:, 2])
    assert s.ctf.voltage[0] == 200 and s.ctf.cs[0] == 2.0
    assert np.allclose(s.ctf.astig_angle, raw["ctf/df_angle_rad"], atol=1e-7)


def test_j2_leading_gt_and_project_dir(interop, tmp_path):
    raw = np.load(interop / "cryosparc_J2_particles_exported.cs")
    s = read_cs(interop / "cryosparc_J2_particles_exported.cs", require_images=False)
    assert len(s) == 22 and s.box == 300 and s.pixel_size == pytest.approx(1.345)
    assert s.rotations is None  # only 2D alignments
    assert s.stack_names == [raw["blob/path"][0].decode()] and s.stack_names[0].startswith(">")
    assert ">" not in str(s.stack_paths[0]) and s.stack_paths[0].name.endswith("_ali_DW.mrcs")
    # a project folder holding the stack: found through project_dir
    rel = raw["blob/path"][0].decode()[1:]
    stack = tmp_path / "project" / rel
    stack.parent.mkdir(parents=True)
    imgs = np.random.default_rng(0).standard_normal((22, 300, 300)).astype(np.float32)
    write_stack(stack, imgs, 1.345)
    found = read_cs(interop / "cryosparc_J2_particles_exported.cs", project_dir=tmp_path / "project")
    assert os.path.samefile(found.stack_paths[0], stack)
    assert np.array_equal(found.images([21, 3]), imgs[raw["blob/idx"][[21, 3]]])


def test_cs_round_trip_keeps_every_field(interop, tmp_path):
    raw = np.load(interop / "cryosparc_P12_J24_001_particles.cs")
    s = read_cs(interop / "cryosparc_P12_J24_001_particles.cs", require_images=False)
    out = tmp_path / "out.cs"
    write_cs(s, out)
    assert out.exists() and not (tmp_path / "out.cs.npy").exists()
    new = np.load(out)
    for name in raw.dtype.names:
        assert new.dtype[name] == raw.dtype[name], name
        assert np.array_equal(new[name], raw[name]), name
    back = read_cs(out, require_images=False)
    assert np.array_equal(back.rotations, s.rotations) and np.array_equal(back.shifts, s.shifts)
    assert np.array_equal(back.half_set, s.half_set) and np.array_equal(back.class_number, s.class_number)
    for f in ("defocus_u", "defocus_v", "astig_angle", "voltage", "cs", "amp_contrast", "phase_shift", "scale"):
        assert np.array_equal(getattr(back.ctf, f), getattr(s.ctf, f)), f


def test_cs_round_trip_with_images(interop, tmp_path):
    s = read_cs(interop / "empiar_10076_7.cs")
    out = tmp_path / "deep" / "x.cs"
    out.parent.mkdir()
    write_cs(s, out)
    new = np.load(out)
    assert new["blob/path"][0].decode().endswith("interop/empiar_10076_7.mrc")
    back = read_cs(out)
    assert os.path.samefile(back.stack_paths[0], interop / "empiar_10076_7.mrc")
    assert np.array_equal(back.images(np.arange(7)), s.images(np.arange(7)))
    assert np.array_equal(new["uid"], np.load(interop / "empiar_10076_7.cs")["uid"])


def test_cs_to_star_gives_the_same_matrices(interop, tmp_path):
    raw = np.load(interop / "cryosparc_P12_J24_001_particles.cs")
    s = read_cs(interop / "cryosparc_P12_J24_001_particles.cs", require_images=False)
    out = tmp_path / "p12.star"
    write_star(s, out)
    back = read_star(out, require_images=False)
    cs_mats = cryosparc_pose_to_matrix(raw["alignments3D/pose"].astype(np.float64))
    assert np.abs(back.rotations - cs_mats).max() < 1e-9
    assert np.allclose(back.shifts, raw["alignments3D/shift"] * 2.95, atol=1e-9)
    assert np.array_equal(back.half_set, raw["alignments3D/split"] + 1)
    assert np.allclose(back.ctf.defocus_u, raw["ctf/df1_A"], rtol=1e-7)
    assert np.allclose(back.ctf.astig_angle, raw["ctf/df_angle_rad"], atol=1e-9)
    assert back.pixel_size == 2.95 and back.box == 180
    assert np.array_equal(back.stack_index, raw["blob/idx"])
    assert [n for n in back.stack_names] == s.stack_names


def test_star_to_cs(interop, tmp_path, quiet):
    s = quiet(read_star, interop / "relion31.star")
    out = tmp_path / "r.cs"
    write_cs(s, out)
    raw = np.load(out)
    assert raw["blob/idx"].tolist() == [0, 1, 2, 3, 4] and raw["blob/shape"][0].tolist() == [256, 256]
    assert np.allclose(raw["blob/psize_A"], 2.806)
    assert np.allclose(cryosparc_pose_to_matrix(raw["alignments3D/pose"].astype(float)), s.rotations, atol=1e-6)
    with pytest.warns(UserWarning, match=r"r\.cs: the pixel size differs .* relion31\.mrcs \(1 Å in the header"):
        back = read_cs(out)
    assert np.allclose(back.rotations, s.rotations, atol=1e-6)
    assert np.allclose(back.shifts, s.shifts, atol=1e-6)
    assert np.allclose(back.ctf.defocus_u, s.ctf.defocus_u, rtol=1e-7)
    assert np.allclose(back.ctf.astig_angle, s.ctf.astig_angle, atol=1e-7)
    assert np.array_equal(back.half_set, s.half_set) and np.array_equal(back.class_number, s.class_number)
    assert np.array_equal(back.images(np.arange(5)), s.images(np.arange(5)))


# -------------------------------------------------------------------------------------------- bad input
def _empiar_copy(interop: Path, tmp_path: Path) -> tuple[np.ndarray, Path]:
    raw = np.load(interop / "empiar_10076_7.cs")
    (tmp_path / "empiar_10076_7.mrc").symlink_to(interop / "empiar_10076_7.mrc")
    return raw.copy(), tmp_path / "bad.cs"


def _save(arr: np.ndarray, path: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr)


def test_cs_index_out_of_range(interop, tmp_path, guard):
    arr, path = _empiar_copy(interop, tmp_path)
    arr["blob/idx"][3] = 9
    _save(arr, path)
    guard(path)
    with pytest.raises(InputError, match=r"bad\.cs: row 3 \(0-based; blob/path 'empiar_10076_7\.mrc', blob/idx 9\) "
                                         r"refers to image 9 but empiar_10076_7\.mrc holds 7 images"):
        read_cs(path)


def test_cs_missing_stack(interop, tmp_path, guard):
    arr, path = _empiar_copy(interop, tmp_path)
    arr["blob/path"] = b"gone.mrcs"
    _save(arr, path)
    guard(path)
    with pytest.raises(InputError, match=r"(?s)bad\.cs: 1 image stack file\(s\) not found.*gone\.mrcs"):
        read_cs(path)


def test_cs_nan_and_missing_fields(interop, tmp_path, guard):
    arr, path = _empiar_copy(interop, tmp_path)
    arr["ctf/df1_A"][2] = np.nan
    _save(arr, path)
    guard(path)
    with pytest.raises(InputError, match=r"bad\.cs: field column ctf/df1_A holds 1 NaN/Inf value\(s\), first at row 2"):
        read_cs(path)
    names = [n for n in arr.dtype.names if n != "ctf/df2_A"]
    other = tmp_path / "nofield.cs"
    _save(arr[names], other)
    with pytest.raises(InputError, match=r"nofield\.cs: required field\(s\) ctf/df2_A missing"):
        read_cs(other)


def test_cs_box_mismatch(interop, tmp_path):
    arr, path = _empiar_copy(interop, tmp_path)
    arr["blob/shape"] = 256
    _save(arr, path)
    with pytest.raises(InputError, match=r"bad\.cs: stack .*empiar_10076_7\.mrc holds 320 x 320 images but the box "
                                         r"size is 256"):
        read_cs(path)


def test_cs_garbage(tmp_path, guard):
    path = tmp_path / "junk.cs"
    path.write_bytes(b"not numpy at all" * 20)
    guard(path)
    with pytest.raises(InputError, match=r"junk\.cs: not a cryoSPARC \.cs file"):
        read_cs(path)
    plain = tmp_path / "plain.cs"
    _save(np.arange(10.0), plain)
    with pytest.raises(InputError, match=r"plain\.cs: not a cryoSPARC \.cs file \(expected a 1-D NumPy structured"):
        read_cs(plain)


def test_write_cs_refuses_to_overwrite(interop, tmp_path, guard):
    s = read_cs(interop / "empiar_10076_7.cs")
    out = tmp_path / "exists.cs"
    out.write_bytes(b"precious")
    guard(out)
    with pytest.raises(FileExistsError, match=r"exists\.cs"):
        write_cs(s, out)
    write_cs(s, tmp_path / "fresh.cs")
    write_cs(s, tmp_path / "fresh.cs", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.cs", "fresh.cs"]
