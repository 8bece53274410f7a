"""Movie input of the motion job: formats (MRC modes, TIFF), gain references, pixel sizes, refusals, dose.

Small movies (8 frames of 64-256 px) are written with mrcfile / tifffile and read back; the end-to-end test turns
cryolive's simulated movies into LZW TIFF uint8 Poisson counts behind a rotated, flipped gain and checks that the
trajectories are as good as from the float32 MRC originals. Everything here takes a few seconds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from cryolive.io import InputError, read_star
from cryolive.jobs.motion import motion_job
from cryolive.motion import MotionParams
from cryolive.motion.dose import DoseModel, load_dose
from cryolive.motion.gain import load_gain, orient_gain
from cryolive.motion.movie_io import open_movie
from cryolive.motion.movies import (
    check_frame_counts,
    open_movie_set,
    patch_box,
    resolve_dose,
    star_pixel_sizes,
)
from cryolive.simulator.movies import MovieSimParams, load_truth, simulate_movies

RNG = np.random.default_rng(7)
COUNTS = RNG.poisson(4.0, (8, 48, 64))  # 8 frames, ny 48, nx 64 (non-square: orientation errors show)


def _run(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def write_mrc(path: Path, data: np.ndarray, apix: float = 1.0) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = apix
    return path


def _one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg
    return msg


# --- formats


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16, np.float32])
def test_mrc_modes_read_as_the_same_float32_frames(tmp_path, dtype):
    path = write_mrc(tmp_path / "m.mrcs", COUNTS.astype(dtype))
    movie = open_movie(path)
    assert (movie.info.n_frames, movie.info.ny, movie.info.nx) == (8, 48, 64)
    frames = movie.frames()
    assert frames.dtype == np.float32 and np.array_equal(frames, COUNTS.astype(np.float32))
    assert np.array_equal(movie.frame(3), COUNTS[3])


def test_mode0_unsigned_counts_and_mode101(tmp_path):
    big = (COUNTS * 40).clip(0, 255).astype(np.uint8)  # counts above 127 stored as mode-0 bytes
    assert big.max() > 127
    path = tmp_path / "u8.mrc"
    with mrcfile.new(path) as m:
        m.set_data(big.view(np.int8))
        m.header.dmin, m.header.dmax = 0.0, float(big.max())  # what a writer of unsigned bytes records
    assert np.array_equal(open_movie(path).frames(), big)
    # IMOD's stamp without the signed flag also means unsigned bytes
    with mrcfile.new(tmp_path / "imod.mrc") as m:
        m.set_data(big.view(np.int8))
    raw = bytearray((tmp_path / "imod.mrc").read_bytes())
    raw[152:160] = np.array([1146047817, 0], "<i4").tobytes()
    (tmp_path / "imod.mrc").write_bytes(bytes(raw))
    assert np.array_equal(open_movie(tmp_path / "imod.mrc").frames(), big)
    # 4-bit packed (mode 101): two pixels a byte, low nibble first
    nib = (COUNTS % 16).astype(np.uint8)
    packed = (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)
    with mrcfile.new(tmp_path / "p.mrc") as m:
        m.set_data(packed.view(np.int8))
    raw = bytearray((tmp_path / "p.mrc").read_bytes())
    raw[0:4] = np.array([64], "<i4").tobytes()  # nx
    raw[12:16] = np.array([101], "<i4").tobytes()  # mode
    (tmp_path / "p.mrc").write_bytes(bytes(raw))
    raw_size = len(raw)
    assert raw_size == 1024 + packed.nbytes
    assert np.array_equal(open_movie(tmp_path / "p.mrc").frames(), nib)


def test_tiff_one_page_per_frame_and_one_3d_page(tmp_path):
    per_page = tmp_path / "pages.tif"
    tifffile.imwrite(per_page, COUNTS.astype(np.uint8), compression="lzw", photometric="minisblack")
    movie = open_movie(per_page)
    assert movie.per_page and movie.info.kind == "tiff" and movie.info.pixel_size is None
    assert np.array_equal(movie.frames(), COUNTS) and np.array_equal(movie.frame(5), COUNTS[5])
    one = tmp_path / "one.tiff"
    tifffile.imwrite(one, COUNTS.astype(np.uint16), compression="lzw", planarconfig="separate",
                     photometric="minisblack")
    with tifffile.TiffFile(one) as tif:
        assert len(tif.pages) == 1  # the whole movie in one page
    movie = open_movie(one)
    assert not movie.per_page and (movie.info.n_frames, movie.info.ny, movie.info.nx) == (8, 48, 64)
    assert np.array_equal(movie.frames(), COUNTS) and np.array_equal(movie.frame(7), COUNTS[7])


def test_unreadable_movies_are_one_line_naming_the_file(tmp_path):
    write_mrc(tmp_path / "single.mrc", COUNTS[0].astype(np.float32))
    with pytest.raises(InputError) as e:
        open_movie(tmp_path / "single.mrc")
    assert "not a movie" in _one_line(e, "single.mrc")

    raw = write_mrc(tmp_path / "cut.mrc", COUNTS.astype(np.float32)).read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[: 1024 + int(3.5 * 48 * 64 * 4)])
    with pytest.raises(InputError) as e:
        open_movie(tmp_path / "cut.mrc")
    assert "truncated (header says 8 frames of 64 x 48, file holds 3.5)" in _one_line(e, "cut.mrc")

    tifffile.imwrite(tmp_path / "cut.tif", COUNTS.astype(np.uint8), photometric="minisblack")
    raw = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as e:
        open_movie(tmp_path / "cut.tif").frames()
    _one_line(e, "cut.tif")

    (tmp_path / "junk.mrc").write_bytes(b"not an mrc file at all")
    with pytest.raises(InputError) as e:
        open_movie(tmp_path / "junk.mrc")
    _one_line(e, "junk.mrc")

    (tmp_path / "m.eer").write_bytes(b"II*\x00")
    with pytest.raises(InputError) as e:
        open_movie(tmp_path / "m.eer")
    assert "not supported" in _one_line(e, "m.eer")

    bad = COUNTS.astype(np.float32)
    bad[2, 3, 4] = np.nan
    with pytest.raises(InputError) as e:
        open_movie(write_mrc(tmp_path / "nan.mrc", bad)).frames()
    assert "frame 3" in _one_line(e, "nan.mrc")


def test_frame_count_tie_blames_the_short_movie(tmp_path):
    paths = {"a_short.mrc": write_mrc(tmp_path / "a_short.mrc", COUNTS[:5].astype(np.float32)),
             "b_full.mrc": write_mrc(tmp_path / "b_full.mrc", COUNTS.astype(np.float32))}
    with pytest.raises(InputError) as e:
        check_frame_counts(paths, skip=False)
    msg = _one_line(e, "a_short.mrc")
    assert msg.startswith(str(paths["a_short.mrc"])) and "5 frames" in msg
    assert "b_full.mrc has 8" in msg  # names the count (and a movie) the others have
    assert check_frame_counts(paths, skip=True) == (8, ["a_short.mrc"])
    paths["c_full.mrc"] = write_mrc(tmp_path / "c_full.mrc", COUNTS.astype(np.float32))
    paths["d_short.mrc"] = write_mrc(tmp_path / "d_short.mrc", COUNTS[:5].astype(np.float32))
    paths["e_short.mrc"] = write_mrc(tmp_path / "e_short.mrc", COUNTS[:5].astype(np.float32))
    assert check_frame_counts(paths, skip=True) == (5, ["b_full.mrc", "c_full.mrc"])  # the majority wins


# --- gain


def _orient_by_coordinates(img: np.ndarray, rot: int, flip: int) -> np.ndarray:
    """Independent reference: move every pixel by the RELION/MotionCor2 rules in (x, y) coordinates, y up."""
    out = img
    for _ in range(rot):  # 90 degrees counter-clockwise with y up: (x, y) -> (h-1-y, x), size w x h -> h x w
        h, w = out.shape
        new = np.empty((w, h), out.dtype)
        y, x = np.mgrid[0:h, 0:w]
        new[x, h - 1 - y] = out[y, x]
        out = new
    h, w = out.shape
    y, x = np.mgrid[0:h, 0:w]
    new = np.empty_like(out)
    if flip == 1:
        new[h - 1 - y, x] = out[y, x]
    elif flip == 2:
        new[y, w - 1 - x] = out[y, x]
    else:
        new = out.copy()
    return new


def test_gain_rotation_and_flip_conventions():
    a = np.zeros((3, 5))
    a[0, 4] = 1.0  # x 4, y 0: right end of the bottom row (y up)
    assert orient_gain(a, 1, 0)[4, 2] == 1.0  # counter-clockwise: to the top (y 4) of the right column (x 2)
    gain = RNG.uniform(0.5, 2.0, (48, 64))
    for rot in range(4):
        for flip in range(3):
            assert np.array_equal(orient_gain(gain, rot, flip), _orient_by_coordinates(gain, rot, flip)), (rot, flip)


@pytest.mark.parametrize(("rot", "flip"), [(0, 0), (1, 0), (2, 1), (3, 2), (1, 2)])
def test_gain_file_cancels_the_pattern_in_the_frames(tmp_path, rot, flip):
    y, x = np.mgrid[0:48, 0:64]
    sensitivity = 1.0 + 0.5 * (x / 63.0) ** 2 + 0.25 * (y < 10)  # asymmetric in x and y
    frames = COUNTS.astype(np.float32) + 5.0
    raw = frames * sensitivity  # what the detector recorded
    # the gain as a file: the inverse sensitivity in the detector's orientation, un-done by (rot, flip)
    file_gain = 1.0 / sensitivity
    if flip:  # undo the flip (applied last), then the rotation
        file_gain = file_gain[::-1] if flip == 1 else file_gain[:, ::-1]
    file_gain = np.rot90(file_gain, rot)  # inverse of rot counter-clockwise (y up) steps
    file_gain = np.ascontiguousarray(file_gain)
    assert np.array_equal(_orient_by_coordinates(file_gain, rot, flip), 1.0 / sensitivity)
    if rot % 2:
        assert file_gain.shape == (64, 48)
    gpath = tmp_path / "gain.mrc"
    with mrcfile.new(gpath) as m:
        m.set_data(file_gain.astype(np.float32))
    movie = open_movie(write_mrc(tmp_path / "raw.mrcs", raw.astype(np.float32)))
    gain = load_gain(gpath, (48, 64), rot, flip)
    assert np.allclose(movie.frames() * gain, frames, rtol=1e-5)
    wrong = (rot + 2) % 4  # turned by another 180 degrees: same shape, wrong orientation
    wrong_gain = orient_gain(file_gain.astype(np.float32), wrong, flip)
    assert not np.allclose(movie.frames() * wrong_gain, frames, rtol=1e-2)
    tifffile.imwrite(tmp_path / "gain.tif", file_gain.astype(np.float32))  # TIFF gains read the same
    assert np.allclose(load_gain(tmp_path / "gain.tif", (48, 64), rot, flip), gain)


def test_bad_gain_is_refused_naming_the_file(tmp_path):
    good = np.ones((48, 64), np.float32)
    cases = {"small.mrc": np.ones((40, 64), np.float32), "zero.mrc": np.where(np.eye(48, 64) > 0, 0, good),
             "nan.mrc": np.where(np.eye(48, 64) > 0, np.nan, good).astype(np.float32),
             "stack.mrc": np.ones((2, 48, 64), np.float32)}
    for name, data in cases.items():
        with mrcfile.new(tmp_path / name) as m:
            m.set_data(data.astype(np.float32))
        with pytest.raises(InputError) as e:
            load_gain(tmp_path / name, (48, 64))
        _one_line(e, name)
    with mrcfile.new(tmp_path / "turned.mrc") as m:
        m.set_data(np.ones((64, 48), np.float32))
    with pytest.raises(InputError, match="gain-rot of 1 or 3"):
        load_gain(tmp_path / "turned.mrc", (48, 64))
    assert load_gain(tmp_path / "turned.mrc", (48, 64), rot=1).shape == (48, 64)


# --- a simulated data set: pixel sizes, refusals before the job folder, end to end TIFF


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_movies(tmp_path_factory.mktemp("fmt") / "sim",
                           MovieSimParams(n_micrographs=2, n_frames=12, particles_per_micrograph=25, snr=1.0, seed=5))


def _job(sim: Path, movies: Path, out: Path, **kw) -> object:
    p = MotionParams(override_r=1.0, override_theta=1.0, override_z_A=100.0, dose_target_particles=50, **kw)
    return _run(motion_job(str(sim / "particles.star"), str(movies), str(sim / "half_A.mrc"),
                           str(sim / "half_B.mrc"), str(sim / "mask.mrc"), str(out), p))


def traj_error(truth, result) -> float:
    """Worst per-micrograph RMS trajectory error (px) after removing each particle's mean over frames."""
    errs = []
    for idx, traj in result.trajectories.values():
        t = truth.trajectories[idx]
        e = (traj - traj.mean(1, keepdims=True)) - (t - t.mean(1, keepdims=True))
        errs.append(float(np.sqrt((e**2).mean())))
    return max(errs)


def _copy_movies(sim: Path, dest: Path, header_apix: float | None = None) -> Path:
    shutil.copytree(sim / "movies", dest)
    if header_apix is not None:
        for p in dest.iterdir():
            with mrcfile.open(p, mode="r+") as m:
                m.voxel_size = header_apix
    return dest


def test_header_pixel_size_unset_is_ignored_and_a_mismatch_refused(sim, tmp_path):
    stack = read_star(sim / "particles.star")
    for unset in (0.0, 1.0):
        ms = open_movie_set(stack, _copy_movies(sim, tmp_path / f"h{unset}", unset))
        assert ms.pixel.movie_A == 2.0 and ms.patch == stack.box
    wrong = _copy_movies(sim, tmp_path / "wrong", 2.5)
    with pytest.raises(InputError) as e:
        _job(sim, wrong, tmp_path / "jobs")
    msg = _one_line(e, "wrong/mic_000.mrcs")
    assert "particles.star" in msg and "2.5000" in msg
    assert not (tmp_path / "jobs").exists()  # refused before the job folder was made


def test_star_pixel_sizes_follow_relion(sim):
    stack = read_star(sim / "particles.star")
    px = star_pixel_sizes(stack)
    assert (px.movie_A, px.coords_A) == (2.0, 2.0)
    t = stack.table.copy()
    t["rlnMicrographOriginalPixelSize"] = 1.0
    t["rlnMicrographPixelSize"] = 1.0
    finer = star_pixel_sizes(stack.replace(table=t))
    assert (finer.movie_A, finer.coords_A, finer.movie_label) == (1.0, 1.0, "rlnMicrographOriginalPixelSize")
    assert patch_box(40, finer, stack.source) == 80  # 40 px of 2 Å = 80 movie px of 1 Å, Fourier-cropped to 40
    t["rlnMicrographOriginalPixelSize"] = 80.0 / 81.0  # 81 movie px: the nearest even sizes are 1.2 % off
    with pytest.raises(InputError, match="even patch size"):
        patch_box(40, star_pixel_sizes(stack.replace(table=t)), stack.source)
    t["rlnMicrographOriginalPixelSize"] = 4.0
    with pytest.raises(InputError, match="coarser"):
        patch_box(40, star_pixel_sizes(stack.replace(table=t)), stack.source)


def test_particle_outside_the_frame_is_refused(sim):
    stack = read_star(sim / "particles.star")
    t = stack.table.copy()
    t.loc[2, "rlnCoordinateX"] = 300.0  # the movies are 256 px wide
    with pytest.raises(InputError) as e:
        open_movie_set(stack.replace(table=t), sim / "movies")
    msg = _one_line(e, "mic_000.mrcs")
    assert "particle 3 " in msg and "256 x 256" in msg


def test_bad_gain_and_short_movie_refused_before_the_job_folder(sim, tmp_path):
    with mrcfile.new(tmp_path / "g.mrc") as m:
        m.set_data(np.ones((200, 256), np.float32))
    with pytest.raises(InputError) as e:
        _job(sim, sim / "movies", tmp_path / "jobs", gain=str(tmp_path / "g.mrc"))
    _one_line(e, "g.mrc")
    movies = _copy_movies(sim, tmp_path / "short")
    with mrcfile.open(sim / "movies" / "mic_001.mrcs") as m:
        write_mrc(movies / "mic_001.mrcs", m.data[:7].copy(), 2.0)
    with pytest.raises(InputError) as e:
        _job(sim, movies, tmp_path / "jobs")
    msg = _one_line(e, "mic_001.mrcs")
    assert "7 frames" in msg and "mic_000.mrcs has 12" in msg
    assert not (tmp_path / "jobs").exists()


def _to_tiff_counts(sim: Path, dest: Path, sensitivity: np.ndarray, seed: int) -> None:
    """Each simulated movie as LZW TIFF uint8 Poisson counts seen through ``sensitivity`` (ny, nx)."""
    rng = np.random.default_rng(seed)
    dest.mkdir()
    for src in sorted((sim / "movies").iterdir()):
        with mrcfile.open(src) as m:
            frames = np.asarray(m.data, np.float64)
        scale = 22.0 / frames.std()  # the simulator's noise dominates the added Poisson noise
        rate = np.clip((frames - frames.mean()) * scale + 90.0, 0, None) * sensitivity
        counts = np.minimum(rng.poisson(rate), 255).astype(np.uint8)
        tifffile.imwrite(dest / (src.stem + ".tif"), counts, compression="lzw", photometric="minisblack")


def test_tiff_counts_with_gain_track_as_well_as_the_mrc(sim, tmp_path):
    ref = _job(sim, sim / "movies", tmp_path / "jobs")
    y, x = np.mgrid[0:256, 0:256]
    sensitivity = 0.7 + 0.4 * (x / 255.0) * (y < 128) + 0.2 * (y / 255.0)  # asymmetric
    movies = tmp_path / "tiff"
    _to_tiff_counts(sim, movies, sensitivity, seed=1)
    listing = tmp_path / "movies.star"  # a STAR listing the TIFF movies by the names the particles use
    rows = "\n".join(f"tiff/mic_{k:03d}.tif 2.0" for k in range(2))
    listing.write_text(f"data_movies\n\nloop_\n_rlnMicrographMovieName #1\n_rlnMicrographDoseRate #2\n{rows}\n")
    star = re.sub(r"(mic_\d+)\.mrcs", r"\1.tif", (sim / "particles.star").read_text())
    (sim / "particles_tif.star").write_text(star)
    gain_file = np.ascontiguousarray(np.rot90((1.0 / sensitivity)[:, ::-1], 1))  # undoes rot 1 then flip 2
    tifffile.imwrite(tmp_path / "gain.tif", gain_file.astype(np.float32))
    p = MotionParams(override_r=1.0, override_theta=1.0, override_z_A=100.0, dose_target_particles=50,
                     gain=str(tmp_path / "gain.tif"), gain_rot=1, gain_flip=2)
    result = _run(motion_job(str(sim / "particles_tif.star"), str(listing), str(sim / "half_A.mrc"),
                             str(sim / "half_B.mrc"), str(sim / "mask.mrc"), str(tmp_path / "jobs"), p))
    truth = load_truth(sim)
    e_mrc, e_tif = traj_error(truth, ref), traj_error(truth, result)
    assert e_mrc < 0.3, e_mrc  # measured 0.145 px
    assert e_tif <= 1.15 * e_mrc + 0.02, (e_tif, e_mrc)  # measured 0.157 px (Poisson noise added)
    params = json.loads((tmp_path / "jobs" / "job_motion_002" / "params.json").read_text())
    assert params["gain_rot"] == 1 and params["dose_per_frame_e_A2"] == 2.0 and params["n_frames"] == 12
    dose = load_dose(tmp_path / "jobs" / "job_motion_002" / "dose_weights.npz")
    assert dose.dose_per_frame == 2.0 and np.allclose(dose.exposure(), 2.0 * (np.arange(12) + 0.5))
    # the gain reached the frames: the counts' pattern is gone from the movie set's gain-corrected frames
    stack = read_star(sim / "particles_tif.star")
    ms = open_movie_set(stack, listing, gain=str(tmp_path / "gain.tif"), gain_rot=1, gain_flip=2)
    raw = open_movie(movies / "mic_000.tif").frames().mean(axis=0)
    corrected = raw * ms.gain
    right_top = (slice(0, 128), slice(192, 256))
    left_top = (slice(0, 128), slice(0, 64))
    assert raw[right_top].mean() / raw[left_top].mean() > 1.3  # sensitivity 1.1 .. 0.75 there
    assert abs(corrected[right_top].mean() / corrected[left_top].mean() - 1.0) < 0.03
    print(f"trajectory error MRC {e_mrc:.3f} px, TIFF counts {e_tif:.3f} px")


def test_movie_units_and_inverted_contrast_do_not_matter(sim, tmp_path):
    """Counts in arbitrary units with inverted contrast (uint16 MRC, mode 6): the references are scaled to the
    movies (sign included), so the tracks match the original's and the corrected particles keep their contrast."""
    ref = _job(sim, sim / "movies", tmp_path / "jobs", final_stage="final")
    movies = tmp_path / "inv"
    movies.mkdir()
    for src in sorted((sim / "movies").iterdir()):
        with mrcfile.open(src) as m:
            frames = np.asarray(m.data, np.float64)
        counts = np.rint(5000.0 - frames * (800.0 / frames.std())).astype(np.uint16)
        write_mrc(movies / src.name, counts, 0.0)
    inv = _job(sim, movies, tmp_path / "jobs")
    truth = load_truth(sim)
    e_ref, e_inv = traj_error(truth, ref), traj_error(truth, inv)
    assert e_inv <= 1.1 * e_ref + 0.01, (e_inv, e_ref)  # measured 0.145 and 0.145 px
    a = read_star(tmp_path / "jobs" / "job_motion_001" / "particles.star")
    b = read_star(tmp_path / "jobs" / "job_motion_002" / "particles.star")
    ia, ib = a.images(np.arange(len(a))), b.images(np.arange(len(b)))
    corr = np.corrcoef(ia.ravel(), ib.ravel())[0, 1]
    assert corr > 0.9, corr  # same contrast (a sign error would give -1)


# --- dose


def test_dose_per_frame_given_then_from_the_star(sim, tmp_path):
    stack = read_star(sim / "particles.star")
    assert resolve_dose(stack, sim / "movies", None) == (None, 0.0, "unknown")
    assert resolve_dose(stack, sim / "movies", 1.5)[:2] == (1.5, 0.0)
    t = stack.table.copy()
    t["rlnMicrographDoseRate"] = 1.2
    t["rlnMicrographPreExposure"] = 3.0
    dose, pre, where = resolve_dose(stack.replace(table=t), sim / "movies", None)
    assert (dose, pre) == (1.2, 3.0) and "rlnMicrographDoseRate" in where
    assert resolve_dose(stack.replace(table=t), sim / "movies", 0.8)[:2] == (0.8, 3.0)  # the option wins
    with pytest.raises(ValueError, match="dose_per_frame"):
        resolve_dose(stack, sim / "movies", -1.0)
    model = DoseModel(np.array([0.0, 6.0, 12.0, 18.0]), np.ones(4), 2.0, 40, dose_per_frame=1.5, pre_exposure=1.0)
    assert abs(model.bfactor_per_dose() - 4.0) < 1e-9  # 6 Å^2 per frame of 1.5 e/Å^2
    model.save(tmp_path / "d.npz")
    back = load_dose(tmp_path / "d.npz")
    assert back.dose_per_frame == 1.5 and back.pre_exposure == 1.0
    assert DoseModel(np.zeros(3), np.ones(3), 2.0, 40).bfactor_per_dose() is None
