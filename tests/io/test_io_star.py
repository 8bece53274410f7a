"""RELION STAR files: real samples, round trips, conversions and bad input."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryolive.io import InputError, ParticleStack, read_cs, read_particles, read_star, write_stack, write_star
from cryolive.rotations.euler import euler_to_matrix, matrix_to_euler


def _mrc_data(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # these sample files lack the MAP ID and machine stamp
        with mrcfile.open(path, permissive=True) as m:
            return np.array(m.data, dtype=np.float32)


def _angles_deg(rotations: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.stack(matrix_to_euler(rotations), axis=1))


# ----------------------------------------------------------------------------------------- real samples
def test_relion31_values(interop):
    with pytest.warns(UserWarning, match=r"relion31\.star: the pixel size differs .* relion31\.mrcs"):
        s = read_star(interop / "relion31.star")
    assert len(s) == 5 and s.box == 256
    # rlnImagePixelSize is 2.806 Å (images binned 2x); 1.403 Å is rlnMicrographOriginalPixelSize
    assert s.pixel_size == pytest.approx(2.806)
    assert s.optics["rlnMicrographOriginalPixelSize"].iloc[0] == pytest.approx(1.403)
    assert _angles_deg(s.rotations[:1])[0] == pytest.approx([-102.30296, 82.318041, 124.706463], abs=1e-9)
    assert s.shifts[0] == pytest.approx([0.019324, -0.64686])
    assert s.shifts[4] == pytest.approx([-0.33773, 0.385262])
    assert s.ctf.defocus_u[0] == pytest.approx(13108.082418) and s.ctf.defocus_v[0] == pytest.approx(12845.582418)
    assert s.ctf.astig_angle[0] == pytest.approx(np.deg2rad(-160.39))
    assert s.ctf.voltage[0] == 300 and s.ctf.cs[0] == pytest.approx(0.01) and s.ctf.amp_contrast[0] == 0.1
    assert s.ctf.bfactor[0] == 0 and s.ctf.scale[0] == 1 and s.ctf.phase_shift[0] == 0
    assert s.half_set.tolist() == [1] * 5 and s.class_number.tolist() == [1] * 5
    assert s.optics_group.tolist() == [1] * 5 and s.stack_index.tolist() == [0, 1, 2, 3, 4]
    assert s.stack_paths == [interop / "relion31.mrcs"]
    assert list(s.table.columns)[:3] == ["rlnCoordinateX", "rlnCoordinateY", "rlnImageOriginalName"]
    ref = _mrc_data(interop / "relion31.mrcs")
    assert np.array_equal(s.images([4, 0, 2]), ref[[4, 0, 2]])
    batches = list(s.iter_batches(2))
    assert [b[0].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert np.array_equal(np.concatenate([b[1] for b in batches]), ref)
    s.close()


def test_empiar_relion30_values(interop):
    s = read_star(interop / "empiar_10076_7.star")
    assert len(s) == 7 and s.box == 320
    assert s.pixel_size == pytest.approx(5 * 1e4 / 38168) and s.pixel_size == pytest.approx(1.31, abs=1e-4)
    assert s.rotations is None and s.shifts is None and s.class_number is None
    assert s.half_set.tolist() == [0] * 7
    assert s.ctf.defocus_u[:2] == pytest.approx([15301.1, 15303.0])
    assert s.ctf.astig_angle == pytest.approx(np.deg2rad(5.28))
    assert (s.ctf.voltage == 300).all() and (s.ctf.amp_contrast == 0.07).all()
    assert s.optics["rlnImagePixelSize"].iloc[0] == pytest.approx(s.pixel_size)  # 3.0 optics made at read
    assert np.array_equal(s.images(np.arange(7)), _mrc_data(interop / "empiar_10076_7.mrc"))


def test_empiar_star_and_cs_agree(interop):
    st = read_star(interop / "empiar_10076_7.star")
    cs = read_cs(interop / "empiar_10076_7.cs")
    assert np.abs(st.ctf.defocus_u - cs.ctf.defocus_u).max() < 0.1
    assert np.abs(st.ctf.defocus_v - cs.ctf.defocus_v).max() < 0.1
    assert np.abs(st.ctf.astig_angle - cs.ctf.astig_angle).max() < 1e-6
    assert cs.pixel_size == pytest.approx(st.pixel_size, rel=1e-5)
    for f in ("voltage", "cs", "amp_contrast"):
        assert np.allclose(getattr(st.ctf, f), getattr(cs.ctf, f))
    assert st.box == cs.box == 320
    assert np.array_equal(st.stack_index, cs.stack_index) and st.stack_paths == cs.stack_paths
    assert np.array_equal(st.images(np.arange(7)), cs.images(np.arange(7)))


def test_relion5_metadata_only_and_aberration_warning(interop):
    with pytest.raises(InputError, match=r"(?s)relion5\.star: 2 image stack file\(s\) not found.*toy_images_a"):
        with pytest.warns(UserWarning, match="ignored by cryolive"):
            read_star(interop / "relion5.star")
    with pytest.warns(UserWarning, match=r"relion5\.star: rlnBeamTiltX.*ignored"):
        s = read_star(interop / "relion5.star", require_images=False)
    assert len(s) == 17 and s.box == 448 and s.pixel_size == pytest.approx(0.89)
    assert [p.name for p in s.stack_paths] == ["toy_images_a.mrcs", "toy_images_b.mrcs"]
    assert s.stack_index[:3].tolist() == [0, 1, 2]
    assert s.optics["rlnBeamTiltX"].iloc[0] == pytest.approx(0.043489)
    assert s.optics["rlnOddZernike"].iloc[0].startswith("[0.0680480107376,")
    assert s.ctf.voltage[0] == 100 and s.ctf.cs[0] == pytest.approx(1.6)
    assert _angles_deg(s.rotations[:1])[0] == pytest.approx([111.508618, 36.742536, 141.158035], abs=1e-9)
    assert s.shifts[0] == pytest.approx([-3.12578, -1.41031])
    assert s.half_set[:3].tolist() == [1, 2, 2]
    with pytest.raises(InputError, match=r"relion5\.star: image stack .*toy_images_a\.mrcs not found"):
        s.images([0])


def test_premultiplied_ctf_is_refused(interop, tmp_path):
    text = (interop / "relion5.star").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("opticsGroup1"))
    fields = line.split()
    assert fields[9] == "0"  # rlnCtfDataAreCtfPremultiplied (#10)
    fields[9] = "1"
    bad = tmp_path / "premult.star"
    bad.write_text(text.replace(line, " ".join(fields)))
    with pytest.raises(InputError, match=r"premult\.star: rlnCtfDataAreCtfPremultiplied = 1"):
        read_star(bad, require_images=False)


def test_six_optics_groups(interop, tmp_path):
    path = interop / "relion31.6opticsgroups.star"
    with pytest.raises(InputError, match=r"6opticsgroups\.star: the particles have different pixel sizes .*1\.24"):
        with pytest.warns(UserWarning, match="ignored by cryolive"):
            read_star(path, require_images=False)
    with pytest.warns(UserWarning):
        s = read_star(path, require_images=False, allow_mixed_pixel_size=True)
    optics = starfile.read(path)["optics"]
    parts = starfile.read(path)["particles"]
    assert len(s) == len(parts) == 139 and s.box == 196 and s.pixel_size == 1.25
    by_group = optics.set_index("rlnOpticsGroup")
    g = parts["rlnOpticsGroup"].to_numpy()
    assert np.array_equal(s.optics_group, g)
    assert np.array_equal(s.ctf.cs, by_group.loc[g, "rlnSphericalAberration"].to_numpy())
    assert set(s.ctf.cs[g == 4]) == {2.6} and set(s.ctf.cs[g != 4]) == {2.7}
    assert np.array_equal(s.particle_pixel_sizes(), by_group.loc[g, "rlnImagePixelSize"].to_numpy())
    pd.testing.assert_frame_equal(s.optics, optics)
    # written and read back: every optics column and per-group value kept
    out = tmp_path / "six.star"
    write_star(s, out)
    with pytest.warns(UserWarning):
        back = read_star(out, require_images=False, allow_mixed_pixel_size=True)
    pd.testing.assert_frame_equal(back.optics, optics)
    assert np.array_equal(back.optics_group, g) and np.array_equal(back.ctf.cs, s.ctf.cs)
    assert np.array_equal(back.particle_pixel_sizes(), s.particle_pixel_sizes())
    assert np.allclose(back.rotations, s.rotations, atol=1e-12)
    assert [str(n) for n in back.stack_names] == [str(n) for n in s.stack_names]  # absent stacks: names kept


# ------------------------------------------------------------------------------------------- round trips
def _assert_tables_equal(a: pd.DataFrame, b: pd.DataFrame, skip: tuple[str, ...] = ("rlnImageName",)) -> None:
    assert list(a.columns) == list(b.columns)
    for c in a.columns:
        if c in skip:
            continue
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x):
            assert np.array_equal(x.to_numpy(float), y.to_numpy(float)), c
        else:
            assert x.astype(str).tolist() == y.astype(str).tolist(), c


def test_star_round_trip_keeps_every_value(interop, tmp_path, quiet):
    s = quiet(read_star, interop / "relion31.star")
    out = tmp_path / "sub" / "out.star"
    out.parent.mkdir()
    write_star(s, out)
    text = out.read_text()
    assert text.lstrip().startswith("# version 30001") and "data_optics" in text and "data_particles" in text
    assert "000001@../../" in text or "000001@/" in text  # relative to the output folder
    back = quiet(read_star, out)
    _assert_tables_equal(s.table, back.table)
    pd.testing.assert_frame_equal(s.optics, back.optics)
    assert back.pixel_size == s.pixel_size and back.box == s.box
    assert np.array_equal(back.rotations, s.rotations) and np.array_equal(back.shifts, s.shifts)
    for f in ("defocus_u", "defocus_v", "astig_angle", "voltage", "cs", "amp_contrast", "phase_shift", "bfactor",
              "scale"):
        assert np.array_equal(getattr(back.ctf, f), getattr(s.ctf, f)), f
    assert os.path.samefile(back.stack_paths[0], s.stack_paths[0])
    assert np.array_equal(back.stack_index, s.stack_index)
    assert np.array_equal(back.images(np.arange(5)), s.images(np.arange(5)))


def test_with_poses_round_trip(interop, tmp_path, quiet):
    s = quiet(read_star, interop / "relion31.star")
    rng = np.random.default_rng(7)
    angles = np.column_stack([rng.uniform(-180, 180, 5), rng.uniform(1, 179, 5), rng.uniform(-180, 180, 5)])
    rots = euler_to_matrix(*np.deg2rad(angles.T))
    shifts = rng.normal(0, 3, (5, 2))
    prob = rng.uniform(0, 1, 5)
    new = s.with_poses(rots, shifts, half_set=[1, 2, 1, 2, 2], class_number=[3, 1, 2, 3, 1],
                       extra_columns={"rlnMaxValueProbDistribution": prob})
    assert _angles_deg(s.rotations[:1])[0] == pytest.approx([-102.30296, 82.318041, 124.706463])  # not mutated
    assert s.table["rlnMaxValueProbDistribution"].iloc[0] == pytest.approx(0.051189)
    out = tmp_path / "poses.star"
    write_star(new, out)
    back = quiet(read_star, out)
    assert np.allclose(back.rotations, rots, atol=1e-10)
    assert np.allclose(_angles_deg(back.rotations), angles, atol=1e-8)
    assert np.allclose(back.shifts, shifts, atol=1e-10)
    assert back.half_set.tolist() == [1, 2, 1, 2, 2] and back.class_number.tolist() == [3, 1, 2, 3, 1]
    assert np.allclose(back.table["rlnMaxValueProbDistribution"], prob, atol=1e-11)
    assert back.table["rlnCoordinateX"].tolist() == s.table["rlnCoordinateX"].tolist()


def test_relion30_is_written_as_31(interop, tmp_path):
    s = read_star(interop / "empiar_10076_7.star")
    out = tmp_path / "e31.star"
    write_star(s, out)
    blocks = starfile.read(out, always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    assert "rlnMagnification" not in blocks["particles"] and "rlnVoltage" not in blocks["particles"]
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(5e4 / 38168, rel=1e-12)
    assert blocks["optics"]["rlnImageSize"].iloc[0] == 320
    back = read_star(out)
    assert back.pixel_size == pytest.approx(s.pixel_size, rel=1e-12) and back.box == 320
    for f in ("defocus_u", "defocus_v", "astig_angle", "voltage", "cs", "amp_contrast"):
        assert np.allclose(getattr(back.ctf, f), getattr(s.ctf, f), rtol=1e-12, atol=0), f
    assert back.table["rlnMicrographName"].astype(str).tolist() == [str(i) for i in range(1, 8)]
    assert np.array_equal(back.images(np.arange(7)), s.images(np.arange(7)))


def test_old_pixel_origins_are_converted_to_angstrom(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((2, 8, 8)), 2.0)
    (tmp_path / "old.star").write_text(
        "data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n"
        "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnMagnification\n_rlnDetectorPixelSize\n"
        "_rlnOriginX\n_rlnOriginY\n_rlnAnglePsi\n"
        "1@s.mrcs 10000 9000 30 300 2.7 0.1 10000 2.0 1.5 -2 90\n"
        "2@s.mrcs 11000 9000 30 300 2.7 0.1 10000 2.0 0 0.25 0\n")
    s = read_star(tmp_path / "old.star")
    assert s.pixel_size == 2.0 and s.box == 8
    assert s.shifts.tolist() == [[3.0, -4.0], [0.0, 0.5]]  # pixels x 2 Å
    assert np.allclose(s.rotations[0], euler_to_matrix(0, 0, np.pi / 2))  # only psi given: rot = tilt = 0
    write_star(s, tmp_path / "new.star")
    parts = starfile.read(tmp_path / "new.star")["particles"]
    assert "rlnOriginX" not in parts and parts["rlnOriginXAngst"].tolist() == [3.0, 0.0]


def test_relion_euler_matrix_euler_identity():
    rng = np.random.default_rng(11)
    rot = rng.uniform(-np.pi, np.pi, 500)
    tilt = rng.uniform(1e-3, np.pi - 1e-3, 500)
    psi = rng.uniform(-np.pi, np.pi, 500)
    a = euler_to_matrix(rot, tilt, psi)
    back = matrix_to_euler(a)
    assert np.allclose(back[0], rot, atol=1e-9) and np.allclose(back[1], tilt, atol=1e-9)
    assert np.allclose(back[2], psi, atol=1e-9)
    # docs/conventions.md: A[0,0] = cψcθcφ − sψsφ and A[2,:] = (sθcφ, sθsφ, cθ)
    assert np.allclose(a[:, 0, 0], np.cos(psi) * np.cos(tilt) * np.cos(rot) - np.sin(psi) * np.sin(rot))
    assert np.allclose(a[:, 2], np.column_stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot),
                                                 np.cos(tilt)]))


def test_subset_and_read_particles(interop, quiet):
    s = quiet(read_particles, interop / "relion31.star")
    sub = s.subset([3, 1])
    assert len(sub) == 2 and sub.table["rlnImageName"].tolist() == ["000004@relion31.mrcs", "000002@relion31.mrcs"]
    assert np.array_equal(sub.rotations, s.rotations[[3, 1]])
    assert np.array_equal(sub.images([0, 1]), s.images([3, 1]))
    assert isinstance(read_particles(interop / "empiar_10076_7.cs"), ParticleStack)
    with pytest.raises(InputError, match=r"relion31\.mrcs: unknown particle file type"):
        read_particles(interop / "relion31.mrcs")


def test_stack_paths_relative_to_project_dir_or_cwd(relion31_copy, tmp_path, monkeypatch, quiet):
    sub = tmp_path / "in" / "Refine3D" / "job001"
    sub.mkdir(parents=True)
    (sub / "run_data.star").write_text(relion31_copy.read_text().replace("@relion31.mrcs", "@in/relion31.mrcs"))
    # a job's STAR names images relative to the project folder above it: found from the folders above the file
    s = quiet(read_star, sub / "run_data.star")
    assert os.path.samefile(s.stack_paths[0], relion31_copy.parent / "relion31.mrcs")
    elsewhere = tmp_path.parent / f"{tmp_path.name}_other" / "run_data.star"  # not below the project
    elsewhere.parent.mkdir()
    elsewhere.write_text((sub / "run_data.star").read_text())
    monkeypatch.chdir(sub)
    with pytest.raises(InputError, match=r"(?s)run_data\.star: 1 image stack file\(s\) not found.*tried"):
        read_star(elsewhere)
    s = quiet(read_star, elsewhere, project_dir=tmp_path)
    assert os.path.samefile(s.stack_paths[0], relion31_copy.parent / "relion31.mrcs")
    monkeypatch.chdir(tmp_path)
    s = quiet(read_star, sub / "run_data.star")
    assert os.path.samefile(s.stack_paths[0], relion31_copy.parent / "relion31.mrcs")


# -------------------------------------------------------------------------------------------- bad input
def test_missing_stack_file(relion31_copy, guard):
    (relion31_copy.parent / "relion31.mrcs").unlink()
    guard(relion31_copy)
    with pytest.raises(InputError, match=r"(?s)relion31\.star: 1 image stack file\(s\) not found.*relion31\.mrcs"):
        read_star(relion31_copy)


def test_image_index_out_of_range(relion31_copy, guard):
    relion31_copy.write_text(relion31_copy.read_text().replace("000005@relion31.mrcs", "000009@relion31.mrcs"))
    guard(relion31_copy)
    with pytest.raises(InputError, match=r"relion31\.star: data_particles row 5 .* refers to image 9 but "
                                         r"relion31\.mrcs holds 5 images"):
        read_star(relion31_copy)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_image_is_reported_when_read(tmp_path, guard):
    imgs = np.ones((3, 8, 8), np.float32)
    imgs[1, 0, 0] = np.nan
    with mrcfile.new(tmp_path / "nan.mrcs") as m:
        m.set_data(imgs)
        m.voxel_size = 1.0
    star = tmp_path / "nan.star"
    star.write_text("data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n_rlnSphericalAberration\n"
                    "_rlnAmplitudeContrast\n_rlnImagePixelSize\n_rlnImageSize\n1 300 2.7 0.1 1.0 8\n\n"
                    "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnDefocusU\n_rlnDefocusV\n"
                    "_rlnDefocusAngle\n1@nan.mrcs 1 1e4 1e4 0\n2@nan.mrcs 1 1e4 1e4 0\n3@nan.mrcs 1 1e4 1e4 0\n")
    guard(star, tmp_path / "nan.mrcs")
    s = read_star(star)
    assert s.images([0, 2]).shape == (2, 8, 8)
    with pytest.raises(InputError, match=r"nan\.mrcs: image 1 \(0-based; 2@ in RELION\) contains NaN"):
        s.images([0, 1])
    with pytest.raises(InputError, match=r"nan\.mrcs"):
        list(s.iter_batches(2))
    s.close()


def test_box_mismatch_between_optics_and_stack(relion31_copy, guard):
    text = relion31_copy.read_text()
    relion31_copy.write_text(text.replace("1.403000          256", "1.403000          128"))
    guard(relion31_copy)
    with pytest.raises(InputError, match=r"relion31\.star: stack .*relion31\.mrcs holds 256 x 256 images but the "
                                         r"box size is 128"):
        read_star(relion31_copy)


@pytest.mark.parametrize("content, problem", [
    (b"\x00\xff\x13garbage\x00" * 50, r"(not a readable STAR|not a STAR file|no data_particles)"),
    ("data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 300\n", r"no data_particles block"),
    ("data_particles\nloop_\n_rlnDefocusU\n_rlnDefocusV\n1 2\n", r"no data_particles|no rlnImageName"),
    ("data_images\nloop_\n_rlnDefocusU\n_rlnDefocusV\n1 2\n", r"no data_particles block"),
    ("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 1000\n", r"rlnDefocusV, rlnDefocusAngle"),
    ("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n"
     "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnImagePixelSize\nx@a.mrcs 1 1 0 300 2.7 0.1 1\n",
     r"row 1 .*must look like 000123@stack\.mrcs"),
    ("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n"
     "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnImagePixelSize\n1@a.mrcs nan 1 0 300 2.7 0.1 1\n",
     r"column rlnDefocusU holds 1 NaN"),
    ("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n"
     "_rlnSphericalAberration\n_rlnAmplitudeContrast\n1@a.mrcs 1 1 0 300 2.7 0.1\n", r"no pixel size"),
    ("data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n"
     "_rlnImagePixelSize\n1 300 2.7 0.1 1\n\ndata_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnDefocusU\n"
     "_rlnDefocusV\n_rlnDefocusAngle\n1@a.mrcs 2 1 1 0\n", r"optics group 2, which data_optics does not list"),
])
def test_malformed_star(tmp_path, guard, content, problem):
    path = tmp_path / "broken.star"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    guard(path)
    with pytest.raises(InputError, match=r"(?s)broken\.star.*" + problem):
        read_star(path, require_images=False)


def test_missing_star_file(tmp_path):
    with pytest.raises(InputError, match=r"nothere\.star: file not found"):
        read_star(tmp_path / "nothere.star")


def test_write_star_refuses_to_overwrite(interop, tmp_path, guard, quiet):
    s = quiet(read_star, interop / "relion31.star")
    out = tmp_path / "exists.star"
    out.write_text("keep me")
    guard(out)
    with pytest.raises(FileExistsError, match=r"exists\.star"):
        write_star(s, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.star"]


def test_write_star_overwrite_true(interop, tmp_path, quiet):
    s = quiet(read_star, interop / "relion31.star")
    out = tmp_path / "o.star"
    out.write_text("old")
    write_star(s, out, overwrite=True)
    assert len(quiet(read_star, out)) == 5


def test_write_star_absolute_paths_when_relative_to_elsewhere(interop, tmp_path, quiet):
    s = quiet(read_star, interop / "relion31.star")
    out = tmp_path / "p.star"
    write_star(s, out, relative_to=tmp_path / "project")
    back = quiet(read_star, out, project_dir=tmp_path / "project")
    assert os.path.samefile(back.stack_paths[0], interop / "relion31.mrcs")


def test_copy_of_interop_files_unchanged_by_reads(relion31_copy, guard, quiet):
    guard(relion31_copy, relion31_copy.parent / "relion31.mrcs")
    s = quiet(read_star, relion31_copy)
    s.images(np.arange(5))
    s.close()


def test_particle_stack_pickles_and_reads_in_threads(interop, quiet):
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    s = quiet(read_star, interop / "relion31.star")
    s.images([0])
    copy = pickle.loads(pickle.dumps(s))
    assert np.array_equal(copy.images([1, 3]), s.images([1, 3]))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: copy.images([i % 5]), range(20)))
    assert all(np.array_equal(r, s.images([i % 5])) for i, r in enumerate(results))
    copy.close()
    s.close()
