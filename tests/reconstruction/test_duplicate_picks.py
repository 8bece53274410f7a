"""Duplicate picks of binned particles (real data: two picks on one particle, a few pixels apart) must stay in one
half set, or their shared noise correlates the half maps at every resolution and the gold-standard FSC reports a
resolution the truth does not confirm.

The bundled sample (box 40, 3 Å/px) gets 30 % duplicate picks: each is its original's image moved by 5–9 px (the
same patch of micrograph picked off-centre; the strips that come in from outside are fresh noise), with its origin
moved to match, picked on the same micrograph with coordinates in micrograph pixels of particles binned 4×
(``rlnMicrographOriginalPixelSize`` = 0.75 Å)."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryolive.io import read_map, read_particles
from cryolive.jobs import drain
from cryolive.jobs.reconstruct import ReconstructParams, reconstruct_job
from cryolive.reconstruction import backproject_halves, finalize_halves, half_sets
from cryolive.reconstruction.solvent import solvent_fsc
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.sample import sample_path
from cryolive.simulator.picks import off_centre_pick

BIN = 4


@pytest.fixture(scope="module")
def with_duplicates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dups")
    blocks = starfile.read(sample_path("particles.star"), always_dict=True)
    parts, optics = blocks["particles"].copy(), blocks["optics"].copy()
    imgs = mrcfile.read(sample_path("particles.mrcs")).astype(np.float32)
    n, apix = len(imgs), float(optics["rlnImagePixelSize"].iloc[0])
    rng = np.random.default_rng(0)
    sd = float(np.median(imgs.std(axis=(1, 2))))
    src = rng.choice(n, int(0.3 * n), replace=False)
    moves = rng.integers(5, 10, (len(src), 2)) * rng.choice([-1, 1], (len(src), 2))
    dups = parts.iloc[src].copy().reset_index(drop=True)
    dups["rlnOriginXAngst"] -= moves[:, 0] * apix  # the particle centre sits at -origin: moved by +d
    dups["rlnOriginYAngst"] -= moves[:, 1] * apix
    dups["rlnImageName"] = [f"{n + k + 1:06d}@particles.mrcs" for k in range(len(src))]
    allp = pd.concat([parts, dups], ignore_index=True).drop(columns=["rlnRandomSubset"], errors="ignore")
    mic = np.arange(len(allp)) // 50
    xy = rng.uniform(0, 4000, (len(allp), 2))
    mic[n:], xy[n:] = mic[src], xy[src] + moves * BIN  # micrograph pixels
    allp["rlnMicrographName"] = [f"mic_{k:04d}.mrc" for k in mic]
    allp["rlnCoordinateX"], allp["rlnCoordinateY"] = xy[:, 0], xy[:, 1]
    optics["rlnMicrographOriginalPixelSize"] = apix / BIN
    with mrcfile.new(folder / "particles.mrcs") as m:
        m.set_data(np.concatenate([imgs, np.stack([off_centre_pick(imgs[i], d, rng, sd)
                                                   for i, d in zip(src, moves, strict=True)])]))
        m.voxel_size = apix
    starfile.write({"optics": optics, "particles": allp}, folder / "particles.star")
    return read_particles(folder / "particles.star")


def _gsfsc_and_truth(stack, half) -> tuple[float, float, float]:
    """Unmasked GSFSC 0.143 (Å), FSC 0.5 of the full map with the truth (Å), mean half-map FSC over the four
    shells below Nyquist (signal and shared noise)."""
    *_, (rec_a, rec_b) = (recs for _done, recs in backproject_halves(stack, half))
    a, b, full = finalize_halves(rec_a, rec_b, prior=False)
    truth = read_map(sample_path("truth_map.mrc"))[0]
    f = fsc(a, b)
    n, apix = stack.box, stack.pixel_size
    return (resolution_at(f, n, apix, 0.143), resolution_at(fsc(full, truth), n, apix, 0.5),
            float(np.mean(f[-5:-1])))


def test_duplicate_picks_of_binned_particles_keep_the_gold_standard_honest(with_duplicates) -> None:
    st = with_duplicates
    res, truth_res, outer = _gsfsc_and_truth(st, half_sets(st, seed=0))
    assert res >= 0.95 * truth_res, (res, truth_res)  # the GSFSC is confirmed by the truth (7.02 / 7.09 Å)
    # a split by particle (duplicates in both halves) is what inflates it (6.0 Å, Nyquist): the test can tell
    naive = np.random.default_rng(1).integers(1, 3, len(st))
    res_naive, _, outer_naive = _gsfsc_and_truth(st, naive)
    assert res_naive < 0.9 * truth_res and outer_naive > outer + 0.05, (res_naive, outer_naive, outer)
    # coordinates read as particle pixels (the file without its micrograph pixel size) miss most pairs (6.18 Å)
    plain = st.replace(optics=st.optics.drop(columns=["rlnMicrographOriginalPixelSize"]))
    assert _gsfsc_and_truth(st, half_sets(plain, seed=0))[0] < 0.95 * truth_res


def _solvent(stack, half):
    *_, (rec_a, rec_b) = (recs for _done, recs in backproject_halves(stack, half))
    a, b, _ = finalize_halves(rec_a, rec_b, prior=False)
    return solvent_fsc(a, b, stack.pixel_size)


def test_the_solvent_fsc_tells_shared_noise_from_signal(with_duplicates) -> None:
    """Split by particle, the duplicate picks put the same noise in both half maps, in the solvent too; kept in one
    half, the solvent of the two half maps does not correlate."""
    st = with_duplicates
    honest = _solvent(st, half_sets(st, seed=0))
    assert not honest.shared and abs(honest.mean) < 0.03 and honest.shells > 5, honest.mean
    assert "share nothing outside the particle" in honest.describe()
    naive = _solvent(st, np.random.default_rng(1).integers(1, 3, len(st)))
    assert naive.shared and naive.mean > 0.08, naive.mean
    assert naive.describe().startswith("WARNING: solvent FSC") and "duplicate picks" in naive.describe()


def test_the_solvent_fsc_of_independent_noise_is_chance() -> None:
    rng = np.random.default_rng(0)
    blob = np.zeros((40, 40, 40), np.float32)
    blob[14:26, 14:26, 14:26] = 5.0
    check = solvent_fsc(blob + rng.normal(size=blob.shape), blob + rng.normal(size=blob.shape), 3.0)
    assert not check.shared and abs(check.mean) < check.level
    shared_noise = rng.normal(size=blob.shape)
    check = solvent_fsc(blob + shared_noise + rng.normal(size=blob.shape),
                        blob + shared_noise + rng.normal(size=blob.shape), 3.0)
    assert check.shared and 0.4 < check.mean < 0.6  # half the noise is shared: FSC 0.5


def test_the_reconstruct_job_log_says_whether_the_half_maps_share_noise(with_duplicates, tmp_path) -> None:
    """A file whose own rlnRandomSubset splits the duplicate picks: the log warns twice (the split, then the solvent
    FSC); cryolive's own split: the solvent FSC says the halves share nothing."""
    blocks = starfile.read(with_duplicates.source, always_dict=True)
    parts = blocks["particles"].copy()
    parts["rlnRandomSubset"] = np.random.default_rng(1).integers(1, 3, len(parts))
    star = with_duplicates.source.parent / "split_by_particle.star"
    starfile.write({"optics": blocks["optics"], "particles": parts}, star)
    logs = {}
    for name, path in (("own", with_duplicates.source), ("file", star)):
        _, result = drain(reconstruct_job(ReconstructParams(particles=str(path), out=str(tmp_path / name))))
        logs[name] = (result.job_dir / "log.txt").read_text()
    assert "share nothing outside the particle" in logs["own"] and "WARNING" not in logs["own"]
    assert "WARNING: solvent FSC" in logs["file"] and "duplicate pick) in the other half set" in logs["file"]
