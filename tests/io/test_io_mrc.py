"""MRC maps and stacks: round trips, header values, atomic writes and bad input."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryolive.io import InputError, StackWriter, open_stack, read_map, write_map, write_stack


def _cube(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------------- maps
def test_map_round_trip_keeps_values_voxel_size_and_zero_origin(tmp_path):
    vol = _cube()
    path = tmp_path / "map.mrc"
    write_map(path, vol, 1.5)
    out, apix = read_map(path)
    assert out.dtype == np.float32 and np.array_equal(out, vol) and apix == pytest.approx(1.5)
    with mrcfile.open(path) as m:
        assert m.data.dtype == np.float32
        assert tuple(m.header.origin.item()) == (0.0, 0.0, 0.0)
        assert m.voxel_size.x == pytest.approx(1.5) and m.voxel_size.z == pytest.approx(1.5)
        assert int(m.header.ispg) == 1
    assert _leftovers(tmp_path) == []


def test_map_axis_order_from_header_gives_zyx(tmp_path):
    vol = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)  # [z, y, x]
    path = tmp_path / "swapped.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # sections = x, rows = y, columns = z
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1
        m.voxel_size = 2.0
    out, apix = read_map(path)
    assert np.array_equal(out, vol) and apix == 2.0


def test_write_map_refuses_to_overwrite(tmp_path, guard):
    path = tmp_path / "exists.mrc"
    write_map(path, _cube(8), 1.0)
    guard(path)
    with pytest.raises(FileExistsError, match="exists.mrc"):
        write_map(path, _cube(8, seed=1), 1.0)
    assert _leftovers(tmp_path) == []


def test_write_map_overwrite_true_replaces(tmp_path):
    path = tmp_path / "m.mrc"
    write_map(path, _cube(8), 1.0)
    write_map(path, _cube(8, seed=2), 3.0, overwrite=True)
    out, apix = read_map(path)
    assert np.array_equal(out, _cube(8, seed=2)) and apix == 3.0


def test_read_map_non_cubic(tmp_path, guard):
    path = tmp_path / "brick.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((8, 8, 12), np.float32))
        m.voxel_size = 1.0
    guard(path)
    with pytest.raises(InputError, match=r"brick\.mrc.*not cubic"):
        read_map(path)


@pytest.mark.filterwarnings("ignore:Data array contains:RuntimeWarning")
def test_read_map_nan_values(tmp_path, guard):
    vol = _cube(8)
    vol[1, 2, 3] = np.nan
    path = tmp_path / "nan.mrc"
    with mrcfile.new(path) as m:
        m.set_data(vol)
        m.voxel_size = 1.0
    guard(path)
    with pytest.raises(InputError, match=r"nan\.mrc: 1 voxels are NaN"):
        read_map(path)


def test_read_map_zero_voxel_size_needs_override(tmp_path):
    path = tmp_path / "novox.mrc"
    with mrcfile.new(path) as m:
        m.set_data(_cube(8))
        m.voxel_size = 0.0
    with pytest.raises(InputError, match=r"novox\.mrc.*voxel size is 0"):
        read_map(path)
    _, apix = read_map(path, pixel_size=1.2)
    assert apix == 1.2


def test_read_map_bad_files(tmp_path):
    with pytest.raises(InputError, match=r"missing\.mrc: file not found"):
        read_map(tmp_path / "missing.mrc")
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match=r"garbage\.mrc: not a (valid|readable) MRC"):
        read_map(garbage)
    short = tmp_path / "short.mrc"
    short.write_bytes(b"hello")
    with pytest.raises(InputError, match=r"short\.mrc"):
        read_map(short)
    flat = tmp_path / "image.mrc"
    with mrcfile.new(flat) as m:
        m.set_data(np.zeros((8, 8), np.float32))
    with pytest.raises(InputError, match=r"image\.mrc.*2-D"):
        read_map(flat)


# -------------------------------------------------------------------------------------------------- stacks
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile: this file has no MAP ID / machine stamp
def test_open_stack_reads_relion31_in_any_order(interop):
    with mrcfile.open(interop / "relion31.mrcs", permissive=True) as m:
        ref = m.data.copy()
    with open_stack(interop / "relion31.mrcs") as s:
        assert len(s) == 5 and s.box == 256
        assert s.pixel_size == pytest.approx(1.0)  # what this file's header says (the STAR says 2.806)
        out = s.read([4, 0, 2, 0])
        assert out.dtype == np.float32 and out.shape == (4, 256, 256)
        assert np.array_equal(out, ref[[4, 0, 2, 0]])
        assert np.array_equal(s.read(3)[0], ref[3])


def test_open_stack_index_out_of_range(interop):
    with open_stack(interop / "relion31.mrcs") as s:
        with pytest.raises(InputError, match=r"relion31\.mrcs: image index 5 \(0-based\) is out of range"):
            s.read([0, 5])
        with pytest.raises(InputError, match="index -1"):
            s.read([-1])


def test_open_stack_volume_flagged_file_is_a_stack(interop):
    """empiar_10076_7.mrc has ispg=1 and no MAP ID, but it is the particle stack its STAR file refers to."""
    with open_stack(interop / "empiar_10076_7.mrc") as s:
        assert len(s) == 7 and s.box == 320 and s.pixel_size == 0.0


def test_single_image_counts_as_stack_of_one(tmp_path):
    img = np.random.default_rng(3).standard_normal((32, 32)).astype(np.float32)
    path = tmp_path / "one.mrc"
    with mrcfile.new(path) as m:
        m.set_data(img)
    with open_stack(path) as s:
        assert len(s) == 1 and s.box == 32
        assert np.array_equal(s.read([0])[0], img)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile's header statistics of a NaN array
def test_stack_nan_image_is_reported(tmp_path, guard):
    imgs = np.zeros((3, 16, 16), np.float32)
    imgs[2, 4, 4] = np.inf
    path = tmp_path / "bad.mrcs"
    with mrcfile.new(path) as m:
        m.set_data(imgs)
    guard(path)
    with open_stack(path) as s:
        s.read([0, 1])
        with pytest.raises(InputError, match=r"bad\.mrcs: image 2 \(0-based; 3@ in RELION\) contains NaN"):
            s.read([1, 2])


def test_write_stack_round_trip_and_header(tmp_path):
    imgs = np.random.default_rng(1).standard_normal((6, 24, 24)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    write_stack(path, imgs, 1.7)
    with open_stack(path) as s:
        assert len(s) == 6 and s.pixel_size == pytest.approx(1.7)
        assert np.array_equal(s.read(np.arange(6)), imgs)
    with mrcfile.open(path) as m:
        assert m.is_image_stack()
        assert float(m.header.dmean) == pytest.approx(float(imgs.mean()), abs=1e-6)
        assert float(m.header.rms) == pytest.approx(float(imgs.std()), rel=1e-5)
        assert float(m.header.dmin) == imgs.min() and float(m.header.dmax) == imgs.max()
    with pytest.raises(FileExistsError, match=r"s\.mrcs"):
        write_stack(path, imgs, 1.7)


def test_stack_writer_streams_batches_and_renames_on_close(tmp_path):
    imgs = np.random.default_rng(2).standard_normal((10, 16, 16)).astype(np.float32)
    path = tmp_path / "stream.mrcs"
    with StackWriter(path, 10, 16, 2.0) as w:
        for i0 in range(0, 10, 4):
            w[i0:i0 + 4] = imgs[i0:i0 + 4]
            assert not path.exists()  # only the temporary file exists until close
    with open_stack(path) as s:
        assert np.array_equal(s.read(np.arange(10)), imgs) and s.pixel_size == pytest.approx(2.0)
    assert _leftovers(tmp_path) == []


def test_stack_writer_discards_on_error_or_missing_images(tmp_path):
    path = tmp_path / "x.mrcs"
    with pytest.raises(RuntimeError):
        with StackWriter(path, 4, 8, 1.0) as w:
            w[0:2] = np.zeros((2, 8, 8))
            raise RuntimeError("interrupted")
    assert not path.exists() and _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="2 of 4 images were never written"):
        with StackWriter(path, 4, 8, 1.0) as w:
            w[[0, 3]] = np.zeros((2, 8, 8))
    assert not path.exists() and _leftovers(tmp_path) == []
    with StackWriter(path, 2, 8, 1.0) as w:
        with pytest.raises(ValueError, match="shape"):
            w[0:2] = np.zeros((2, 9, 9))
        w[0] = np.ones((8, 8))
        w[1] = np.ones((8, 8))
    assert path.exists()


def test_stack_writer_float16(tmp_path):
    imgs = np.random.default_rng(4).standard_normal((3, 8, 8)).astype(np.float32)
    path = tmp_path / "half.mrcs"
    write_stack(path, imgs, 1.0, float16=True)
    with mrcfile.open(path) as m:
        assert int(m.header.mode) == 12
    with open_stack(path) as s:
        out = s.read([0, 1, 2])
    assert out.dtype == np.float32 and np.array_equal(out, imgs.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="float16 range"):
        write_stack(tmp_path / "big.mrcs", imgs * 1e6, 1.0, float16=True)
