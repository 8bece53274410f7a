"""Files other programs write: a STAR 3.0 with rlnPixelSize is read, a truncated stack is named as truncated (issue
17: the first was refused, the second said only "Error opening memmap")."""

from __future__ import annotations

import shutil

import pytest
import starfile

from cryolive.io import InputError, read_particles
from cryolive.sample import sample_path


def _star30(tmp_path, stack_name: str):
    blocks = starfile.read(sample_path("particles.star"), always_dict=True)
    parts = blocks["particles"].copy()
    optics = blocks["optics"].iloc[0]
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        parts[col] = optics[col]
    parts["rlnPixelSize"] = optics["rlnImagePixelSize"]
    parts = parts.drop(columns=["rlnOpticsGroup"])
    parts["rlnImageName"] = [f"{n.split('@')[0]}@{stack_name}" for n in parts["rlnImageName"]]
    star = tmp_path / f"{stack_name}.star"
    starfile.write(parts, star)
    return star, float(optics["rlnImagePixelSize"])


def test_star_30_with_rln_pixel_size_is_read(tmp_path) -> None:
    shutil.copy(sample_path("particles.mrcs"), tmp_path / "particles.mrcs")
    star, apix = _star30(tmp_path, "particles.mrcs")
    stack = read_particles(star)
    assert stack.pixel_size == pytest.approx(apix)
    assert stack.images([0, 1]).shape == (2, stack.box, stack.box)


def test_a_truncated_stack_is_named_truncated(tmp_path) -> None:
    data = sample_path("particles.mrcs").read_bytes()
    (tmp_path / "cut.mrcs").write_bytes(data[: len(data) // 2])
    star, _ = _star30(tmp_path, "cut.mrcs")
    with pytest.raises(InputError, match=r"cut.mrcs: truncated \(the header says 2000 images of 40 x 40, the file "
                                         r"holds 999\.\d\)"):
        read_particles(star)


def test_a_reference_of_another_pixel_size_and_box_is_brought_to_the_particles(tmp_path, caplog) -> None:
    import numpy as np

    from cryolive.image.resample import resample_volume
    from cryolive.io import read_map, read_matching_map, write_map
    from cryolive.resolution.filters import lowpass

    truth, apix = read_map(sample_path("truth_map.mrc"))  # box 40 at the particles' pixel size
    n = truth.shape[0]
    coarse = np.asarray(resample_volume(lowpass(truth, 4 * apix, apix), n // 2))  # 2x the voxel size, same extent
    padded = np.zeros((n // 2 + 8,) * 3, np.float32)  # and a larger box (cropped back)
    padded[4:-4, 4:-4, 4:-4] = coarse
    write_map(tmp_path / "other.mrc", padded, 2 * apix)
    with caplog.at_level("WARNING", logger="cryolive.io"):
        vol = read_matching_map(tmp_path / "other.mrc", n, apix, "particles.star")
    assert vol.shape == (n,) * 3
    assert "resampled from" in caplog.text and "cropped from box" in caplog.text
    ref = np.asarray(lowpass(truth, 4 * apix, apix))
    assert np.corrcoef(vol.ravel(), ref.ravel())[0, 1] > 0.98
