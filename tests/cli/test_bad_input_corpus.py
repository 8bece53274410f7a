"""A corpus of bad inputs run through the ``cryolive`` command line (issue 17, "what it must show").

Every case runs one ``cryolive`` subcommand on a small, deliberately broken input and asserts what the user sees:

* a refusal: exit status 2 and exactly one line on stderr, ``cryolive <cmd>: error: ...``, naming the file or the
  flag and the problem; no traceback; no input file changed; nothing written anywhere (the output place included:
  the refusal comes before any work and before any job folder);
* a warning (where the input can be used as it is, e.g. a pixel size that differs from the stack's header, a
  reference of another box): exit status 0, one ``cryolive <cmd>: warning: ...`` line per warning naming the file
  and what was done; no traceback, no input file changed, nothing written outside the output the user named;
* a failure found only while the work reads the data (a NaN in a movie frame: movies are not read twice): exit
  status 2, one line naming the file, and the job folder says ``failed``.

The inputs are tiny (50 simulated particles of 32 px, two 160 px movies of 6 frames), so the whole corpus runs in
seconds: every refusal happens before any heavy work. A few cases also run in a separate process, as a user would;
the unwritable-folder cases need a user other than root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryolive.cli import main
from cryolive.io import read_particles
from cryolive.simulator.dataset import SimulationParams, simulate_dataset
from cryolive.simulator.movies import MovieSimParams, simulate_movies

# ------------------------------------------------------------------------------------------------ the inputs


def _mrc(path: Path, data: np.ndarray, apix: float = 2.0) -> Path:
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore")  # header statistics of data with NaN
        m.set_data(np.asarray(data))
        m.voxel_size = apix
    return path


def _star_variant(good: Path, dest: Path, edit) -> Path:
    blocks = starfile.read(good, always_dict=True, parse_as_string=["rlnImageName"])
    blocks = {k: v.copy() for k, v in blocks.items()}
    edit(blocks)
    starfile.write(blocks, dest)
    return dest


def _text_variant(good: Path, dest: Path, old: str, new: str, count: int = 1) -> Path:
    text = good.read_text()
    assert old in text, old
    dest.write_text(text.replace(old, new, count))
    return dest


def _renamed(stack_name: str):
    def edit(b: dict) -> None:
        b["particles"]["rlnImageName"] = [f"{n.split('@')[0]}@{stack_name}" for n in b["particles"]["rlnImageName"]]
    return edit


def _build_particle_inputs(s: Path) -> None:
    """``s`` holds a good set (particles.star/.mrcs, reference.mrc, truth/); add broken STAR files and stacks."""
    good = s / "particles.star"
    imgs = read_particles(good).images(np.arange(50))

    # STAR files that cannot be read or describe no particles
    (s / "empty.star").write_text("")
    (s / "comment.star").write_text("# a STAR file with no data block\n")
    (s / "garbage.star").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary junk\xff\xfe")
    (s / "folder.star").mkdir()
    lines = good.read_text().splitlines(keepends=True)
    header = lines[: next(i for i, ln in enumerate(lines) if ln.startswith("000001@"))]
    (s / "no_rows.star").write_text("".join(header))

    def drop(*cols: str, block: str = "particles"):
        return lambda b: b.__setitem__(block, b[block].drop(columns=list(cols)))

    def set_value(col: str, value, block: str = "particles", row: int | None = None):
        def edit(b: dict) -> None:
            if row is None:
                b[block][col] = value
            else:
                b[block].loc[row, col] = value
        return edit

    _star_variant(good, s / "no_defocus.star", drop("rlnDefocusU"))
    _star_variant(good, s / "no_voltage.star", drop("rlnVoltage", block="optics"))
    _star_variant(good, s / "no_image_name.star", drop("rlnImageName"))
    _star_variant(good, s / "no_poses.star", drop("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    _star_variant(good, s / "no_optics_group.star", drop("rlnOpticsGroup"))
    _star_variant(good, s / "no_pixel_size.star", drop("rlnImagePixelSize", block="optics"))
    _star_variant(good, s / "unknown_group.star", set_value("rlnOpticsGroup", 7, row=9))
    _star_variant(good, s / "zero_pixel_size.star", set_value("rlnImagePixelSize", 0.0, block="optics"))
    _star_variant(good, s / "subset3.star", set_value("rlnRandomSubset", 3, row=4))
    _star_variant(good, s / "premultiplied.star", set_value("rlnCtfDataAreCtfPremultiplied", 1, block="optics"))
    _star_variant(good, s / "dims3.star", set_value("rlnImageDimensionality", 3, block="optics"))
    _star_variant(good, s / "box40.star", set_value("rlnImageSize", 40, block="optics"))
    _star_variant(good, s / "gone_stack.star", _renamed("gone.mrcs"))
    _star_variant(good, s / "nan_unused.star", set_value("rlnCtfFigureOfMerit", np.r_[np.nan, np.ones(49)]))
    _star_variant(good, s / "beam_tilt.star", set_value("rlnBeamTiltX", 0.3, block="optics"))

    def two_pixel_sizes(b: dict) -> None:
        o = b["optics"]
        b["optics"] = pd.concat([o, o], ignore_index=True)
        b["optics"].loc[1, "rlnOpticsGroup"] = 2
        b["optics"].loc[1, "rlnOpticsGroupName"] = "opticsGroup2"
        b["optics"].loc[1, "rlnImagePixelSize"] = 2.5
        b["particles"].loc[25:, "rlnOpticsGroup"] = 2
    _star_variant(good, s / "mixed_pixel_size.star", two_pixel_sizes)

    row7 = lines[next(i for i, ln in enumerate(lines) if ln.startswith("000007@"))]
    fields = row7.split()
    for name, col, value in (("text_defocus", 2, "abc"), ("nan_defocus", 2, "nan"), ("inf_angle", 9, "inf"),
                             ("half_subset", 13, "1.5")):
        bad = fields.copy()
        bad[col] = value
        _text_variant(good, s / f"{name}.star", row7, " ".join(bad) + "\n")
    _text_variant(good, s / "beyond_stack.star", "000050@particles.mrcs", "000051@particles.mrcs")
    _text_variant(good, s / "index_zero.star", "000001@particles.mrcs", "000000@particles.mrcs")
    _text_variant(good, s / "no_at.star", "000003@particles.mrcs", "particles.mrcs")
    _text_variant(good, s / "short_row.star", row7, " ".join(fields[:-3]) + "\n")
    # the same image twice, once in each half set: the half maps would share its noise
    other = "2" if fields[13] == "1" else "1"
    (s / "duplicate_halves.star").write_text(good.read_text() + " ".join(fields[:13] + [other]) + "\n")

    # image stacks: truncated, NaN, unnormalised counts, blank, not square, not MRC, header pixel size off
    data = (s / "particles.mrcs").read_bytes()
    (s / "cut.mrcs").write_bytes(data[: 1024 + (len(data) - 1024) // 2])
    _star_variant(good, s / "cut.star", _renamed("cut.mrcs"))
    nan = imgs.copy()
    nan[4, 3, 5] = np.nan
    _mrc(s / "nan.mrcs", nan)
    _star_variant(good, s / "nan.star", _renamed("nan.mrcs"))
    _mrc(s / "counts.mrcs", (imgs * 40 + 30000).astype(np.uint16))
    _star_variant(good, s / "counts.star", _renamed("counts.mrcs"))
    _mrc(s / "blank.mrcs", np.zeros_like(imgs))
    _star_variant(good, s / "blank.star", _renamed("blank.mrcs"))
    _mrc(s / "oblong.mrcs", imgs[:, :, :30].copy())
    _star_variant(good, s / "oblong.star", _renamed("oblong.mrcs"))
    (s / "junk.mrcs").write_bytes(b"not an MRC file at all\n" * 60)
    _star_variant(good, s / "junk.star", _renamed("junk.mrcs"))
    _mrc(s / "header25.mrcs", imgs, apix=2.5)
    _star_variant(good, s / "header25.star", _renamed("header25.mrcs"))


def _build_maps(m: Path, truth: np.ndarray) -> None:
    n = truth.shape[0]
    soft = np.clip(truth / truth.max() * 4, 0, 1).astype(np.float32)
    _mrc(m / "plane.mrc", truth[n // 2].copy())
    _mrc(m / "oblong.mrc", truth[:, :, : n - 2].copy())
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = truth.copy()
        bad[3, 4, 5] = value
        _mrc(m / f"{name}.mrc", bad)
    _mrc(m / "zero.mrc", np.zeros_like(truth))
    _mrc(m / "constant.mrc", np.full_like(truth, 0.37))
    big = np.zeros((48,) * 3, np.float32)
    big[8:40, 8:40, 8:40] = truth
    _mrc(m / "box48.mrc", big)
    _mrc(m / "apix0.mrc", truth, apix=0.0)
    _mrc(m / "apix3.mrc", truth, apix=3.0)
    _mrc(m / "complex.mrc", truth.astype(np.complex64))
    (m / "empty.mrc").write_bytes(b"")
    (m / "text.mrc").write_text("this is not a map\n" * 100)
    raw = (m / "zero.mrc").read_bytes()
    (m / "cut.mrc").write_bytes(raw[: len(raw) // 2])
    (m / "folder.mrc").mkdir()
    _mrc(m / "mask.mrc", soft)
    _mrc(m / "mask_3.mrc", soft * 3)
    _mrc(m / "mask_negative.mrc", soft - 0.5)
    _mrc(m / "mask_zero.mrc", np.zeros_like(soft))
    mnan = soft.copy()
    mnan[0, 0, 0] = np.nan
    _mrc(m / "mask_nan.mrc", mnan)
    _mrc(m / "mask_box48.mrc", np.pad(soft, 8))
    with mrcfile.new(m / "anisotropic.mrc") as f:
        f.set_data(truth)
        f.voxel_size = (2.0, 2.0, 3.0)


def _build_movie_inputs(ms: Path) -> None:
    """``ms`` holds a good movie set (movies/, particles.star, half maps, mask); add broken movies and files."""
    movies = ms / "movies"
    with mrcfile.open(movies / "mic_001.mrcs") as f:
        frames = f.data.copy()
    for name in ("movies_cut", "movies_short", "movies_nan"):
        shutil.copytree(movies, ms / name)
    raw = (movies / "mic_001.mrcs").read_bytes()
    (ms / "movies_cut" / "mic_001.mrcs").write_bytes(raw[: len(raw) // 2])
    _mrc(ms / "movies_short" / "mic_001.mrcs", frames[:4].copy())
    bad = frames.copy()
    bad[2, 10, 10] = np.nan
    _mrc(ms / "movies_nan" / "mic_001.mrcs", bad)
    (ms / "movies_empty").mkdir()
    _mrc(ms / "gain_small.mrc", np.ones((100, 120), np.float32))
    _mrc(ms / "gain_zero.mrc", np.zeros(frames.shape[1:], np.float32))
    (ms / "hyper_junk.json").write_text("{not json")
    (ms / "dose_junk.npz").write_bytes(b"PK\x03\x04 not a zip")


@dataclass(frozen=True)
class Corpus:
    root: Path

    @property
    def places(self) -> dict[str, str]:
        r = self.root
        return {"s": str(r / "sim"), "star": str(r / "sim" / "particles.star"), "ref": str(r / "sim" / "reference.mrc"),
                "map": str(r / "sim" / "truth" / "truth_map.mrc"), "m": str(r / "maps"), "ms": str(r / "msim"),
                "file": str(r / "a_file.txt")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    s = simulate_dataset(root / "sim", SimulationParams(n=50, box=32, seed=1))
    _build_particle_inputs(s)
    (root / "maps").mkdir()
    truth = mrcfile.read(s / "truth" / "truth_map.mrc").astype(np.float32)
    _build_maps(root / "maps", truth)
    ms = simulate_movies(root / "msim", MovieSimParams(n_micrographs=2, n_frames=6, particles_per_micrograph=4,
                                                       mic_size=160, seed=2))
    _build_movie_inputs(ms)
    (root / "a_file.txt").write_text("mine\n")
    return Corpus(root)


# ------------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    args: str  # the command line after ``cryolive``, with {placeholders} (see Corpus.places and {out})
    says: tuple[str, ...]  # what the line must contain: the file or flag, and the problem
    kind: str = "refuse"  # "refuse", "warn" or "fail" (module docstring)

    @property
    def command(self) -> str:
        return self.args.split()[0]


def C(name: str, args: str, *says: str, kind: str = "refuse") -> Case:
    """One row of the table below."""
    return Case(name, args, says, kind)


REFINE = "refine {star} --ref {ref} --out {out}/jobs"
CLASSIFY = "classify {star} --k 2 --out {out}/jobs"
HETERO = "hetero {star} --ref {ref} {ref} --out {out}/jobs"
CLASS2D = "class2d {star} --k 2 --out {out}/jobs"
RECONSTRUCT = "reconstruct {star} --out {out}/map.mrc"
MOTION = ("motion {ms}/particles.star --movies {ms}/movies --half-a {ms}/half_A.mrc --half-b {ms}/half_B.mrc "
          "--out {out}/jobs")
PROJECT = "project {map} --particles {star} --out {out}/proj.mrcs"

CASES = [
    # --- refine: particle files
    C("refine-star-missing", "refine {s}/nothere.star --ref {ref} --out {out}/jobs", "nothere.star", "not found"),
    C("refine-star-folder", "refine {s}/folder.star --ref {ref} --out {out}/jobs", "folder.star", "is a folder"),
    C("refine-star-empty", "refine {s}/empty.star --ref {ref} --out {out}/jobs", "empty.star", "data"),
    C("refine-star-comment-only", "refine {s}/comment.star --ref {ref} --out {out}/jobs", "comment.star", "no data"),
    C("refine-star-binary", "refine {s}/garbage.star --ref {ref} --out {out}/jobs", "garbage.star", "STAR"),
    C("refine-star-no-rows", "refine {s}/no_rows.star --ref {ref} --out {out}/jobs", "no_rows.star", "no particles"),
    C("refine-star-no-defocus", "refine {s}/no_defocus.star --ref {ref} --out {out}/jobs", "no_defocus.star",
      "rlnDefocusU"),
    C("refine-star-no-voltage", "refine {s}/no_voltage.star --ref {ref} --out {out}/jobs", "no_voltage.star",
      "rlnVoltage"),
    C("refine-star-no-image-name", "refine {s}/no_image_name.star --ref {ref} --out {out}/jobs", "no_image_name.star",
      "rlnImageName"),
    C("refine-star-no-optics-group", "refine {s}/no_optics_group.star --ref {ref} --out {out}/jobs",
      "no_optics_group.star", "rlnOpticsGroup"),
    C("refine-star-no-pixel-size", "refine {s}/no_pixel_size.star --ref {ref} --out {out}/jobs", "no_pixel_size.star",
      "no pixel size"),
    C("refine-star-unknown-optics-group", "refine {s}/unknown_group.star --ref {ref} --out {out}/jobs",
      "unknown_group.star", "optics group 7"),
    C("refine-star-zero-pixel-size", "refine {s}/zero_pixel_size.star --ref {ref} --out {out}/jobs",
      "zero_pixel_size.star", "pixel size"),
    C("refine-star-mixed-pixel-sizes", "refine {s}/mixed_pixel_size.star --ref {ref} --out {out}/jobs",
      "mixed_pixel_size.star", "different pixel sizes"),
    C("refine-star-text-defocus", "refine {s}/text_defocus.star --ref {ref} --out {out}/jobs", "text_defocus.star",
      "rlnDefocusU", "abc"),
    C("refine-star-nan-defocus", "refine {s}/nan_defocus.star --ref {ref} --out {out}/jobs", "nan_defocus.star",
      "rlnDefocusU", "NaN"),
    C("refine-star-inf-angle", "refine {s}/inf_angle.star --ref {ref} --out {out}/jobs", "inf_angle.star",
      "rlnAngleTilt", "Inf"),
    C("refine-star-fractional-subset", "refine {s}/half_subset.star --ref {ref} --out {out}/jobs", "half_subset.star",
      "rlnRandomSubset must hold integers, got 1.5"),
    C("refine-star-subset-3", "refine {s}/subset3.star --ref {ref} --out {out}/jobs", "subset3.star",
      "rlnRandomSubset must be 1 or 2"),
    C("refine-star-short-row", "refine {s}/short_row.star --ref {ref} --out {out}/jobs", "short_row.star", "row"),
    C("refine-star-premultiplied", "refine {s}/premultiplied.star --ref {ref} --out {out}/jobs", "premultiplied.star",
      "pre-multiplied"),
    C("refine-star-3d-images", "refine {s}/dims3.star --ref {ref} --out {out}/jobs", "dims3.star",
      "rlnImageDimensionality"),
    C("refine-star-box-differs-from-stack", "refine {s}/box40.star --ref {ref} --out {out}/jobs", "box40.star",
      "32 x 32", "40"),
    C("refine-star-image-paths-missing", "refine {s}/gone_stack.star --ref {ref} --out {out}/jobs", "gone_stack.star",
      "gone.mrcs", "not found"),
    C("refine-star-row-beyond-stack", "refine {s}/beyond_stack.star --ref {ref} --out {out}/jobs", "beyond_stack.star",
      "image 51", "holds 50 images"),
    C("refine-star-image-zero", "refine {s}/index_zero.star --ref {ref} --out {out}/jobs", "index_zero.star",
      "000000@"),
    C("refine-star-image-name-without-at", "refine {s}/no_at.star --ref {ref} --out {out}/jobs", "no_at.star",
      "rlnImageName"),
    C("refine-star-duplicate-in-both-halves", "refine {s}/duplicate_halves.star --ref {ref} --out {out}/jobs",
      "duplicate_halves.star", "000007@particles.mrcs", "both half sets"),
    # --- refine: image stacks
    C("refine-stack-truncated", "refine {s}/cut.star --ref {ref} --out {out}/jobs", "cut.mrcs", "truncated"),
    C("refine-stack-nan-image", "refine {s}/nan.star --ref {ref} --out {out}/jobs", "nan.mrcs", "NaN"),
    C("refine-stack-unnormalised-counts", "refine {s}/counts.star --ref {ref} --out {out}/jobs", "counts.star",
      "not normalised"),
    C("refine-stack-blank", "refine {s}/blank.star --ref {ref} --out {out}/jobs", "blank.star", "all zeros"),
    C("refine-stack-not-square", "refine {s}/oblong.star --ref {ref} --out {out}/jobs", "oblong.mrcs", "not square"),
    C("refine-stack-not-mrc", "refine {s}/junk.star --ref {ref} --out {out}/jobs", "junk.mrcs", "MRC"),
    # --- refine: reference and mask
    C("refine-ref-missing", "refine {star} --ref {m}/nothere.mrc --out {out}/jobs", "nothere.mrc", "not found"),
    C("refine-ref-folder", "refine {star} --ref {m}/folder.mrc --out {out}/jobs", "folder.mrc", "is a folder"),
    C("refine-ref-empty-file", "refine {star} --ref {m}/empty.mrc --out {out}/jobs", "empty.mrc", "MRC"),
    C("refine-ref-text-file", "refine {star} --ref {m}/text.mrc --out {out}/jobs", "text.mrc", "MRC"),
    C("refine-ref-truncated", "refine {star} --ref {m}/cut.mrc --out {out}/jobs", "cut.mrc", "truncated"),
    C("refine-ref-2d", "refine {star} --ref {m}/plane.mrc --out {out}/jobs", "plane.mrc", "2-D", "3-D map is needed"),
    C("refine-ref-not-cubic", "refine {star} --ref {m}/oblong.mrc --out {out}/jobs", "oblong.mrc", "not cubic"),
    C("refine-ref-nan", "refine {star} --ref {m}/nan.mrc --out {out}/jobs", "nan.mrc", "NaN or Inf"),
    C("refine-ref-inf", "refine {star} --ref {m}/inf.mrc --out {out}/jobs", "inf.mrc", "NaN or Inf"),
    C("refine-ref-all-zero", "refine {star} --ref {m}/zero.mrc --out {out}/jobs", "zero.mrc", "all zeros"),
    C("refine-ref-constant", "refine {star} --ref {m}/constant.mrc --out {out}/jobs", "constant.mrc", "constant"),
    C("refine-ref-voxel-size-unset", "refine {star} --ref {m}/apix0.mrc --out {out}/jobs", "apix0.mrc",
      "voxel size is 0"),
    C("refine-ref-complex", "refine {star} --ref {m}/complex.mrc --out {out}/jobs", "complex.mrc", "complex"),
    C("refine-ref-anisotropic-voxels", "refine {star} --ref {m}/anisotropic.mrc --out {out}/jobs", "anisotropic.mrc",
      "not cubic"),
    C("refine-mask-above-1", REFINE + " --mask {m}/mask_3.mrc", "mask_3.mrc", "[0, 1]"),
    C("refine-mask-negative", REFINE + " --mask {m}/mask_negative.mrc", "mask_negative.mrc", "[0, 1]"),
    C("refine-mask-all-zero", REFINE + " --mask {m}/mask_zero.mrc", "mask_zero.mrc", "selects no voxel"),
    C("refine-mask-nan", REFINE + " --mask {m}/mask_nan.mrc", "mask_nan.mrc", "NaN"),
    C("refine-mask-2d", REFINE + " --mask {m}/plane.mrc", "plane.mrc", "3-D map is needed"),
    # a reference and a mask of another box are cropped to the particles' (one line each), and the job runs
    C("refine-ref-and-mask-of-another-box",
      "refine {star} --ref {m}/box48.mrc --mask {m}/mask_box48.mrc --max-iter 1 --out {out}/jobs",
      "/box48.mrc: reference map cropped from box 48 to the particles' box 32", kind="warn"),
    # --- refine: flags and output places
    C("refine-max-iter-0", REFINE + " --max-iter 0", "--max-iter", "at least 1"),
    C("refine-max-iter-text", REFINE + " --max-iter ten", "--max-iter", "invalid int value"),
    C("refine-batch-size-0", REFINE + " --batch-size 0", "--batch-size", "at least 1"),
    C("refine-lowpass-negative", REFINE + " --lowpass -5", "--lowpass", "more than 0"),
    C("refine-coarse-step-0", REFINE + " --coarse-step 0", "--coarse-step", "more than 0"),
    C("refine-global-iters-negative", REFINE + " --global-iters -1", "--global-iters", "at least 0"),
    C("refine-max-shift-negative", REFINE + " --max-shift -3", "--max-shift", "at least 0"),
    C("refine-max-align-res-0", REFINE + " --max-align-res 0", "--max-align-res", "more than 0"),
    C("refine-sgd-steps-negative", REFINE + " --sgd-steps -1", "--sgd-steps", "at least 0"),
    C("refine-sym-unknown", REFINE + " --sym Q5", "--sym", "unknown point-group"),
    C("refine-relax-sym-unknown", REFINE + " --relax-sym X2", "--relax-sym", "unknown point-group"),
    C("refine-scale-choice", REFINE + " --scale often", "--scale", "invalid choice"),
    C("refine-no-ref", "refine {star} --out {out}/jobs", "--ref", "required"),
    C("refine-continue-missing-folder", "refine --continue {out}/job_refine_009", "job_refine_009",
      "not a refinement job folder"),
    C("refine-out-is-file", "refine {star} --ref {ref} --out {file}", "a_file.txt", "is a file"),
    C("refine-out-below-file", "refine {star} --ref {ref} --out {file}/jobs", "a_file.txt", "is a file"),
    C("refine-out-empty", "refine {star} --ref {ref} --out ''", "--out", "empty"),
    C("refine-unknown-particle-type", "refine {ref} --ref {ref} --out {out}/jobs", "reference.mrc",
      "unknown particle file type"),
    # --- classify
    C("classify-k-0", "classify {star} --k 0 --out {out}/jobs", "--k", "at least 1"),
    C("classify-k-negative", "classify {star} --k -2 --out {out}/jobs", "--k", "at least 1"),
    C("classify-k-above-n", "classify {star} --k 60 --out {out}/jobs", "--k 60", "more classes than particles (50)"),
    C("classify-no-poses", "classify {s}/no_poses.star --k 2 --out {out}/jobs", "no_poses.star", "needs poses"),
    C("classify-star-missing", "classify {s}/nothere.star --k 2 --out {out}/jobs", "nothere.star", "not found"),
    C("classify-stack-blank", "classify {s}/blank.star --k 2 --out {out}/jobs", "blank.star", "all zeros"),
    C("classify-solvent-mask-above-1", CLASSIFY + " --solvent-mask {m}/mask_3.mrc", "mask_3.mrc", "[0, 1]"),
    C("classify-focus-mask-all-zero", CLASSIFY + " --focus-mask {m}/mask_zero.mrc", "mask_zero.mrc",
      "selects no voxel"),
    C("classify-consensus-nan", CLASSIFY + " --consensus {m}/nan.mrc", "nan.mrc", "NaN"),
    C("classify-consensus-constant", CLASSIFY + " --consensus {m}/constant.mrc", "constant.mrc", "constant"),
    C("classify-similarity-above-1", CLASSIFY + " --similarity 1.5", "--similarity", "[0, 1]"),
    C("classify-max-iter-0", CLASSIFY + " --max-iter 0", "--max-iter", "at least 1"),
    C("classify-batch-size-0", CLASSIFY + " --batch-size 0", "--batch-size", "at least 1"),
    C("classify-minibatch-0", CLASSIFY + " --minibatch 0", "--minibatch", "at least"),
    C("classify-max-res-negative", CLASSIFY + " --max-res -4", "--max-res", "more than 0"),
    C("classify-lowpass-0", CLASSIFY + " --lowpass 0", "--lowpass", "more than 0"),
    C("classify-anneal-iters-negative", CLASSIFY + " --anneal-iters -1", "--anneal-iters", "at least 0"),
    C("classify-sym-unknown", CLASSIFY + " --sym C0", "--sym", "point-group"),
    C("classify-out-is-file", "classify {star} --k 2 --out {file}", "a_file.txt", "is a file"),
    C("classify-out-empty", "classify {star} --k 2 --out ''", "--out", "empty"),
    # --- hetero
    C("hetero-ref-missing", "hetero {star} --ref {ref} {m}/nothere.mrc --out {out}/jobs", "nothere.mrc", "not found"),
    C("hetero-ref-2d", "hetero {star} --ref {ref} {m}/plane.mrc --out {out}/jobs", "plane.mrc", "3-D map is needed"),
    C("hetero-ref-all-zero", "hetero {star} --ref {ref} {m}/zero.mrc --out {out}/jobs", "zero.mrc", "all zeros"),
    C("hetero-ref-constant", "hetero {star} --ref {m}/constant.mrc {ref} --out {out}/jobs", "constant.mrc",
      "constant"),
    C("hetero-ref-inf", "hetero {star} --ref {ref} {m}/inf.mrc --out {out}/jobs", "inf.mrc", "NaN or Inf"),
    C("hetero-ref-not-cubic", "hetero {star} --ref {ref} {m}/oblong.mrc --out {out}/jobs", "oblong.mrc", "not cubic"),
    C("hetero-mask-negative", HETERO + " --mask {m}/mask_negative.mrc", "mask_negative.mrc", "[0, 1]"),
    C("hetero-class-box-0", HETERO + " --class-box 0", "--class-box", "at least"),
    C("hetero-class-box-huge", HETERO + " --class-box 4096", "GiB of memory"),
    C("hetero-coarse-step-0", HETERO + " --coarse-step 0", "--coarse-step", "more than 0"),
    C("hetero-max-iter-negative", HETERO + " --max-iter -3", "--max-iter", "at least 1"),
    C("hetero-k-above-n", "hetero {star} --ref " + " ".join(["{ref}"] * 51) + " --out {out}/jobs",
      "--k 51", "more classes than particles (50)"),
    C("hetero-no-ref", "hetero {star} --out {out}/jobs", "--ref", "required"),
    C("hetero-star-truncated-stack", "hetero {s}/cut.star --ref {ref} {ref} --out {out}/jobs", "cut.mrcs",
      "truncated"),
    C("hetero-out-below-file", "hetero {star} --ref {ref} {ref} --out {file}/jobs", "a_file.txt", "is a file"),
    # --- class2d
    C("class2d-k-0", "class2d {star} --k 0 --out {out}/jobs", "--k", "at least 1"),
    C("class2d-k-above-n", "class2d {star} --k 51 --out {out}/jobs", "--k 51", "more classes than particles (50)"),
    C("class2d-max-iter-0", CLASS2D + " --max-iter 0", "--max-iter", "at least 1"),
    C("class2d-psi-step-0", CLASS2D + " --psi-step 0", "--psi-step", "more than 0"),
    C("class2d-diameter-negative", CLASS2D + " --diameter -10", "--diameter", "more than 0"),
    C("class2d-max-shift-negative", CLASS2D + " --max-shift -1", "--max-shift", "at least 0"),
    C("class2d-batch-size-0", CLASS2D + " --batch-size 0", "--batch-size", "at least 1"),
    C("class2d-k-text", "class2d {star} --k two --out {out}/jobs", "--k", "invalid int value"),
    C("class2d-star-missing-columns", "class2d {s}/no_defocus.star --k 2 --out {out}/jobs", "no_defocus.star",
      "rlnDefocusU"),
    C("class2d-stack-counts", "class2d {s}/counts.star --k 2 --out {out}/jobs", "counts.star", "not normalised"),
    C("class2d-stack-nan", "class2d {s}/nan.star --k 2 --out {out}/jobs", "nan.mrcs", "NaN"),
    C("class2d-row-beyond-stack", "class2d {s}/beyond_stack.star --k 2 --out {out}/jobs", "beyond_stack.star",
      "holds 50 images"),
    C("class2d-out-is-file", "class2d {star} --k 2 --out {file}", "a_file.txt", "is a file"),
    C("class2d-out-empty", "class2d {star} --k 2 --out ''", "--out", "empty"),
    # --- reconstruct
    C("reconstruct-star-missing", "reconstruct {s}/nothere.star --out {out}/map.mrc", "nothere.star", "not found"),
    C("reconstruct-no-poses", "reconstruct {s}/no_poses.star --out {out}/map.mrc", "no_poses.star", "poses"),
    C("reconstruct-stack-blank", "reconstruct {s}/blank.star --out {out}/map.mrc", "blank.star", "all zeros"),
    C("reconstruct-stack-truncated", "reconstruct {s}/cut.star --out {out}/map.mrc", "cut.mrcs", "truncated"),
    C("reconstruct-duplicate-in-both-halves", "reconstruct {s}/duplicate_halves.star --out {out}/map.mrc",
      "duplicate_halves.star", "both half sets"),
    C("reconstruct-sym-unknown", RECONSTRUCT + " --sym D0", "--sym", "point-group"),
    C("reconstruct-batch-size-0", RECONSTRUCT + " --batch-size 0", "--batch-size", "at least 1"),
    C("reconstruct-workers-0", RECONSTRUCT + " --workers 0", "--workers", "at least 1"),
    C("reconstruct-out-exists", "reconstruct {star} --out {ref}", "reference.mrc", "exists", "--overwrite"),
    C("reconstruct-out-folder-missing", "reconstruct {star} --out {out}/nothere/map.mrc", "nothere",
      "does not exist"),
    C("reconstruct-out-is-folder", "reconstruct {star} --out {s}", "is a folder"),
    C("reconstruct-out-below-file", "reconstruct {star} --out {file}/map.mrc", "a_file.txt", "is a file"),
    C("reconstruct-out-empty", "reconstruct {star} --out ''", "--out", "empty"),
    C("reconstruct-header-pixel-size", "reconstruct {s}/header25.star --out {out}/map.mrc", "header25.mrcs",
      "pixel size differs", kind="warn"),
    C("reconstruct-nan-in-unused-column", "reconstruct {s}/nan_unused.star --out {out}/map.mrc", "nan_unused.star",
      "rlnCtfFigureOfMerit", "not used", kind="warn"),
    C("reconstruct-beam-tilt-ignored", "reconstruct {s}/beam_tilt.star --out {out}/map.mrc", "beam_tilt.star",
      "rlnBeamTiltX", kind="warn"),
    # --- fsc
    C("fsc-map-missing", "fsc {m}/nothere.mrc {map}", "nothere.mrc", "not found"),
    C("fsc-map-folder", "fsc {map} {m}/folder.mrc", "folder.mrc", "is a folder"),
    C("fsc-map-empty-file", "fsc {map} {m}/empty.mrc", "empty.mrc", "MRC"),
    C("fsc-map-2d", "fsc {m}/plane.mrc {map}", "plane.mrc", "3-D map is needed"),
    C("fsc-map-not-cubic", "fsc {map} {m}/oblong.mrc", "oblong.mrc", "not cubic"),
    C("fsc-map-nan", "fsc {map} {m}/nan.mrc", "nan.mrc", "NaN or Inf"),
    C("fsc-map-all-zero", "fsc {m}/zero.mrc {map}", "zero.mrc", "all zeros"),
    C("fsc-map-constant", "fsc {map} {m}/constant.mrc", "constant.mrc", "constant"),
    C("fsc-maps-of-another-box", "fsc {map} {m}/box48.mrc", "box48.mrc", "differs"),
    C("fsc-maps-of-another-pixel-size", "fsc {map} {m}/apix3.mrc", "apix3.mrc", "pixel size"),
    C("fsc-mask-above-1", "fsc {map} {map} --mask {m}/mask_3.mrc", "mask_3.mrc", "[0, 1]"),
    C("fsc-mask-all-zero", "fsc {map} {map} --mask {m}/mask_zero.mrc", "mask_zero.mrc", "selects no voxel"),
    C("fsc-mask-of-another-box", "fsc {map} {map} --mask {m}/mask_box48.mrc", "mask_box48.mrc", "differs"),
    C("fsc-csv-exists", "fsc {map} {map} --csv {file}", "a_file.txt", "exists"),
    C("fsc-csv-is-folder", "fsc {map} {map} --csv {m}", "maps", "is a folder"),
    C("fsc-csv-below-file", "fsc {map} {map} --csv {file}/fsc.csv", "a_file.txt", "is a file"),
    C("fsc-csv-folder-missing", "fsc {map} {map} --csv {out}/nothere/fsc.csv", "--csv", "does not exist"),
    # --- mask
    C("mask-map-missing", "mask {m}/nothere.mrc --threshold 0.2 --out {out}/m.mrc", "nothere.mrc", "not found"),
    C("mask-map-2d", "mask {m}/plane.mrc --threshold 0.2 --out {out}/m.mrc", "plane.mrc", "3-D map is needed"),
    C("mask-map-nan", "mask {m}/nan.mrc --threshold 0.2 --out {out}/m.mrc", "nan.mrc", "NaN or Inf"),
    C("mask-map-all-zero", "mask {m}/zero.mrc --threshold 0.2 --out {out}/m.mrc", "zero.mrc", "all zeros"),
    C("mask-map-constant", "mask {m}/constant.mrc --threshold 0.2 --out {out}/m.mrc", "constant.mrc", "constant"),
    C("mask-threshold-0", "mask {map} --threshold 0 --out {out}/m.mrc", "--threshold", "(0, 1]"),
    C("mask-threshold-above-1", "mask {map} --threshold 1.5 --out {out}/m.mrc", "--threshold", "(0, 1]"),
    C("mask-dilate-negative", "mask {map} --threshold 0.2 --dilate -2 --out {out}/m.mrc", "--dilate", "at least 0"),
    C("mask-soft-negative", "mask {map} --threshold 0.2 --soft -1 --out {out}/m.mrc", "--soft", "at least 0"),
    C("mask-lowpass-0", "mask {map} --threshold 0.2 --lowpass 0 --out {out}/m.mrc", "--lowpass", "more than 0"),
    C("mask-out-exists", "mask {map} --threshold 0.2 --out {file}", "a_file.txt", "exists"),
    C("mask-out-folder-missing", "mask {map} --threshold 0.2 --out {out}/nothere/m.mrc", "nothere",
      "does not exist"),
    C("mask-out-is-folder", "mask {map} --threshold 0.2 --out {m}", "is a folder"),
    C("mask-out-empty", "mask {map} --threshold 0.2 --out ''", "--out", "empty"),
    # --- project
    C("project-map-missing", "project {m}/nothere.mrc --particles {star} --out {out}/p.mrcs", "nothere.mrc",
      "not found"),
    C("project-map-2d", "project {m}/plane.mrc --particles {star} --out {out}/p.mrcs", "plane.mrc",
      "3-D map is needed"),
    C("project-map-nan", "project {m}/nan.mrc --particles {star} --out {out}/p.mrcs", "nan.mrc", "NaN or Inf"),
    C("project-map-all-zero", "project {m}/zero.mrc --particles {star} --out {out}/p.mrcs", "zero.mrc",
      "all zeros"),
    C("project-map-of-another-box", "project {m}/box48.mrc --particles {star} --out {out}/p.mrcs",
      "particles.star", "box 32 differs from the map's box 48"),
    C("project-map-of-another-pixel-size", "project {m}/apix3.mrc --particles {star} --out {out}/p.mrcs",
      "particles.star", "pixel size"),
    C("project-particles-missing", "project {map} --particles {s}/nothere.star --out {out}/p.mrcs",
      "nothere.star", "not found"),
    C("project-particles-no-poses", "project {map} --particles {s}/no_poses.star --out {out}/p.mrcs",
      "no_poses.star", "no poses"),
    C("project-particles-text-value", "project {map} --particles {s}/text_defocus.star --out {out}/p.mrcs",
      "text_defocus.star", "non-numeric"),
    C("project-batch-size-0", PROJECT + " --batch-size 0", "--batch-size", "at least 1"),
    C("project-out-exists", "project {map} --particles {star} --out {s}/particles.mrcs", "particles.mrcs",
      "exists"),
    C("project-out-is-folder", "project {map} --particles {star} --out {m}", "is a folder"),
    C("project-out-empty", "project {map} --particles {star} --out ''", "--out", "empty"),
    C("project-out-folder-missing", "project {map} --particles {star} --out {out}/nothere/p.mrcs", "nothere",
      "does not exist"),
    # --- simulate
    C("simulate-n-0", "simulate --n 0 --box 32 --out {out}/jobs", "--n", "at least 1"),
    C("simulate-box-tiny", "simulate --n 10 --box 4 --out {out}/jobs", "--box", "at least 16"),
    C("simulate-box-huge", "simulate --n 10 --box 100000 --out {out}/jobs", "--box", "at most 1024"),
    C("simulate-apix-0", "simulate --n 10 --box 32 --apix 0 --out {out}/jobs", "--apix", "more than 0"),
    C("simulate-snr-negative", "simulate --n 10 --box 32 --snr -1 --out {out}/jobs", "--snr", "more than 0"),
    C("simulate-snr-nan", "simulate --n 10 --box 32 --snr nan --out {out}/jobs", "--snr", "a number"),
    C("simulate-states-0", "simulate --n 10 --box 32 --states 0 --out {out}/jobs", "--states", "at least 1"),
    C("simulate-sym-unknown", "simulate --n 10 --box 32 --sym Q3 --out {out}/jobs", "--sym", "point-group"),
    C("simulate-defocus-reversed", "simulate --n 10 --box 32 --defocus-min 30000 --defocus-max 10000 --out {out}/jobs",
      "--defocus-min", "above --defocus-max"),
    C("simulate-max-shift-negative", "simulate --n 10 --box 32 --max-shift -1 --out {out}/jobs", "--max-shift",
      "at least 0"),
    C("simulate-domains-0", "simulate --n 10 --box 32 --domains 0 --out {out}/jobs", "--domains", "at least 1"),
    C("simulate-out-is-file", "simulate --n 10 --box 32 --out {file}", "a_file.txt", "is a file"),
    C("simulate-out-not-empty", "simulate --n 10 --box 32 --out {m}", "maps", "not empty"),
    C("simulate-out-empty", "simulate --n 10 --box 32 --out ''", "--out", "empty"),
    # --- motion
    C("motion-star-missing", "motion {ms}/nothere.star --movies {ms}/movies --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "nothere.star", "not found"),
    C("motion-movies-missing", "motion {ms}/particles.star --movies {ms}/nothere --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "nothere", "does not exist"),
    C("motion-movies-folder-empty", "motion {ms}/particles.star --movies {ms}/movies_empty --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "movies_empty", "mic_000"),
    C("motion-movie-truncated", "motion {ms}/particles.star --movies {ms}/movies_cut --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "mic_001.mrcs", "truncated"),
    C("motion-movie-frame-count", "motion {ms}/particles.star --movies {ms}/movies_short --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "mic_001.mrcs", "4 frames"),
    C("motion-movie-nan", "motion {ms}/particles.star --movies {ms}/movies_nan --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "mic_001.mrcs", "NaN", kind="fail"),
    C("motion-half-map-missing", "motion {ms}/particles.star --movies {ms}/movies --half-a {ms}/nothere.mrc "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "nothere.mrc", "not found"),
    C("motion-half-map-of-another-box", "motion {ms}/particles.star --movies {ms}/movies --half-a {map} "
      "--half-b {ms}/half_B.mrc --out {out}/jobs", "truth_map.mrc", "box 32 differs"),
    C("motion-half-map-nan", "motion {ms}/particles.star --movies {ms}/movies --half-a {ms}/half_A.mrc "
      "--half-b {m}/nan.mrc --out {out}/jobs", "nan.mrc", "NaN"),
    C("motion-mask-2d", MOTION + " --mask {m}/plane.mrc", "plane.mrc", "3-D map is needed"),
    C("motion-gain-missing", MOTION + " --gain {ms}/nothere.mrc", "nothere.mrc", "not found"),
    C("motion-gain-of-another-size", MOTION + " --gain {ms}/gain_small.mrc", "gain_small.mrc", "160"),
    C("motion-gain-rot-5", MOTION + " --gain-rot 5", "--gain-rot", "invalid choice"),
    C("motion-stage-unknown", MOTION + " --stage polish", "--stage", "invalid choice"),
    C("motion-crop-box-1", MOTION + " --crop-box 1", "--crop-box", "at least 2"),
    C("motion-crop-box-above-box", MOTION + " --crop-box 64", "--crop-box", "at most 40"),
    C("motion-target-particles-0", MOTION + " --target-particles 0", "--target-particles", "at least 1"),
    C("motion-fit-fraction-above-1", MOTION + " --fit-fraction 1.5", "--fit-fraction", "at most 1"),
    C("motion-max-prior-strength-0", MOTION + " --max-prior-strength 0", "--max-prior-strength", "more than 0"),
    C("motion-dose-per-frame-negative", MOTION + " --dose-per-frame -1", "--dose-per-frame", "more than 0"),
    C("motion-override-r-alone", MOTION + " --override-r 1", "--override-theta", "all three"),
    C("motion-override-theta-above-pi-2", MOTION + " --override-r 1 --override-theta 3 --override-z 100",
      "--override-theta", "at most 1.5708"),
    C("motion-hyper-missing", MOTION + " --hyper {ms}/nothere.json", "nothere.json", "not found"),
    C("motion-hyper-not-json", MOTION + " --hyper {ms}/hyper_junk.json", "hyper_junk.json"),
    C("motion-dose-weights-not-npz", MOTION + " --dose-weights {ms}/dose_junk.npz", "dose_junk.npz"),
    C("motion-out-is-file", "motion {ms}/particles.star --movies {ms}/movies --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out {file}", "a_file.txt", "is a file"),
    C("motion-out-empty", "motion {ms}/particles.star --movies {ms}/movies --half-a {ms}/half_A.mrc "
      "--half-b {ms}/half_B.mrc --out ''", "--out", "empty"),
]


# ------------------------------------------------------------------------------------------------- the checks


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> content hash (folders: "dir")."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def _cli(argv: list[str]) -> int:
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.fixture(autouse=True)
def _fresh_cli_logger():
    """``main`` adds its stderr handler to the ``cryolive`` logger once per process; drop it around each case so
    that notes go to this case's (captured) stderr."""
    log = logging.getLogger("cryolive")
    before = list(log.handlers)
    yield
    for h in list(log.handlers):
        if h not in before:
            log.removeHandler(h)


def _check(case: Case, code: int, stdout: str, stderr: str, data_before: dict, data_after: dict,
           work_before: dict, work_after: dict, out: Path) -> None:
    """What the user must see (module docstring); ``work_*``: the files under the case's working folder (its
    current directory, holding the output folder ``out``) before and after."""
    shown = stdout + stderr
    assert "Traceback" not in shown, shown
    assert data_after == data_before, "an input file or folder was changed, added or removed"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    prefix = f"cryolive {case.command}"
    if case.kind == "refuse":
        assert code == 2, f"exit status {code}; stderr: {stderr!r}; stdout: {stdout!r}"
        assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr}"
        line = lines[0]
        assert line.startswith(f"{prefix}: error: "), line
        for text in case.says:
            assert text in line, f"{text!r} not in {line!r}"
        assert work_after == work_before, f"refused, but wrote {sorted(set(work_after) - set(work_before))}"
        return
    changed = sorted(p for p in set(work_after) | set(work_before) if work_after.get(p) != work_before.get(p))
    outside = [p for p in changed if not p.startswith(out.name + os.sep)]
    assert not outside, f"wrote outside {out}: {outside}"
    if case.kind == "warn":
        assert code == 0, f"exit status {code}; stderr: {stderr!r}"
        assert all(ln.startswith(f"{prefix}: warning: ") for ln in lines), stderr
        warned = [ln for ln in lines if all(text in ln for text in case.says)]
        assert len(warned) == 1, f"{case.says} not said once in:\n{stderr}"
    else:  # "fail": refused after the work began (what only reading the data shows); the job folder says so
        assert code == 2, f"exit status {code}; stderr: {stderr!r}; stdout: {stdout!r}"
        assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: "), stderr
        assert all(text in lines[0] for text in case.says), lines[0]
        status = [json.loads((out.parent / p).read_text()) for p in changed if p.endswith("status.json")]
        assert [s["state"] for s in status] == ["failed"], status


def _run_case(case: Case, corpus: Corpus, tmp_path: Path, run, lock: bool = False) -> None:
    """Run ``case`` with ``run(argv, cwd) -> (exit status, stdout, stderr)`` in a fresh working folder holding the
    output folder ``out`` (``lock``: made read-only first) and check what the user sees."""
    work = tmp_path / "work"
    out = work / "out"  # the output place of every case: {out}/jobs (job folders), {out}/map.mrc...
    out.mkdir(parents=True)
    argv = shlex.split(case.args.format(**corpus.places, out=out))
    data_before = _tree(corpus.root)
    if lock:
        out.chmod(0o500)
    try:
        work_before = _tree(work)
        code, stdout, stderr = run(argv, work)
        work_after = _tree(work)
    finally:
        out.chmod(0o700)
    _check(case, code, stdout, stderr, data_before, _tree(corpus.root), work_before, work_after, out)


def _in_process(capsys, monkeypatch):
    def run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)  # a stray relative write lands in the working folder and is seen
        capsys.readouterr()
        code = _cli(argv)
        return (code, *capsys.readouterr())
    return run


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, corpus: Corpus, tmp_path, capsys, monkeypatch) -> None:
    _run_case(case, corpus, tmp_path, _in_process(capsys, monkeypatch))


def test_the_corpus_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    per = {c.command for c in CASES}
    assert per >= {"refine", "classify", "hetero", "class2d", "reconstruct", "fsc", "mask", "project", "simulate",
                   "motion"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
@pytest.mark.parametrize("args", [REFINE, CLASSIFY, HETERO, CLASS2D, RECONSTRUCT, MOTION, PROJECT,
                                  "simulate --n 10 --box 32 --out {out}/jobs", "mask {map} --threshold 0.2 --out "
                                  "{out}/m.mrc", "fsc {map} {map} --csv {out}/fsc.csv"])
def test_an_unwritable_output_folder_is_refused(args: str, corpus: Corpus, tmp_path, capsys, monkeypatch) -> None:
    case = Case("locked", args, ("out", "not writable"))
    _run_case(case, corpus, tmp_path, _in_process(capsys, monkeypatch), lock=True)


SUBPROCESS = ["refine-ref-nan", "classify-k-above-n", "motion-movie-truncated", "fsc-mask-above-1",
              "simulate-sym-unknown", "refine-max-iter-text", "refine-star-image-paths-missing",
              "reconstruct-header-pixel-size"]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_in_a_separate_process(case_id: str, corpus: Corpus, tmp_path) -> None:
    """The same as a user sees it: the command in its own process, Python's warnings shown (as by default)."""
    def run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
        env = {**os.environ, "PYTHONWARNINGS": "default"}
        proc = subprocess.run([sys.executable, "-m", "cryolive.cli", *argv], capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr

    _run_case(next(c for c in CASES if c.id == case_id), corpus, tmp_path, run)
