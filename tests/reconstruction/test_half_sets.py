"""Random half sets keep particles that share pixels together (duplicates, overlapping picks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from cryolive.io import read_particles
from cryolive.reconstruction import coordinate_pixel_size, describe_half_sets, half_sets, neighbour_groups
from cryolive.sample import sample_path

INTEROP = Path(__file__).resolve().parents[3] / "shared" / "data" / "interop"



def _stack_with_picks(n_mics: int = 20, seed: int = 0):
    st = read_particles(sample_path("particles.star"))
    n = len(st)
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"rlnMicrographName": [f"mic_{i % n_mics:03d}.mrc" for i in range(n)],
                          "rlnCoordinateX": rng.uniform(0, 1500, n), "rlnCoordinateY": rng.uniform(0, 1500, n)})
    # 50 duplicate picks: particle i listed again as the same image at the same place
    dup_src = rng.choice(n, 50, replace=False)
    idx = np.concatenate([np.arange(n), dup_src])
    st = st.subset(idx).replace(half_set=np.zeros(len(idx), int), table=table.iloc[idx].reset_index(drop=True))
    return st, n


def test_neighbours_and_duplicates_share_a_half_set_and_halves_stay_balanced() -> None:
    st, n = _stack_with_picks()
    half = half_sets(st, seed=3)
    counts = np.bincount(half, minlength=3)[1:]
    assert abs(int(counts[0]) - int(counts[1])) <= 0.03 * len(st)
    # duplicates (rows n.. repeat earlier rows) are in the same half as their original
    groups = neighbour_groups(st)
    assert (groups[n:] == groups[st.stack_index[n:]]).all()
    assert (half[n:] == half[st.stack_index[n:]]).all()
    # every pair of picks closer than a box on one micrograph is in one half
    xy = st.table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    mics = st.table["rlnMicrographName"].to_numpy()
    split = close = 0
    for mic in np.unique(mics):
        sel = np.nonzero(mics == mic)[0]
        pairs = cKDTree(xy[sel]).query_pairs(st.box - 1e-6, output_type="ndarray")
        close += len(pairs)
        split += int((half[sel[pairs[:, 0]]] != half[sel[pairs[:, 1]]]).sum())
    assert close > 50 and split == 0


def test_the_files_own_half_sets_are_kept() -> None:
    st = read_particles(sample_path("particles.star"))
    assert (half_sets(st) == st.half_set).all()


def test_coordinates_of_binned_particles_are_in_micrograph_pixels() -> None:
    """Particles extracted binned 4x: a box of n particle pixels spans 4 n micrograph pixels, so two picks 3 boxes
    apart in micrograph pixels overlap and share a group; 5 boxes apart they do not."""
    st = read_particles(sample_path("particles.star"))
    n = len(st) - len(st) % 2
    st = st.subset(np.arange(n))
    gap = np.where(np.arange(n // 2) % 2 == 0, 3.0, 5.0) * st.box  # pair j: its two picks this far apart
    x = np.empty(n)
    x[0::2] = np.arange(n // 2) * 20.0 * st.box
    x[1::2] = x[0::2] + gap
    table = pd.DataFrame({"rlnMicrographName": ["mic.mrc"] * n, "rlnCoordinateX": x, "rlnCoordinateY": np.zeros(n)})
    optics = st.optics.copy()
    optics["rlnMicrographOriginalPixelSize"] = st.pixel_size / 4.0
    binned = st.replace(half_set=np.zeros(n, int), table=table, optics=optics)
    assert np.allclose(coordinate_pixel_size(binned), st.pixel_size / 4.0)
    groups = neighbour_groups(binned)
    together = groups[0::2] == groups[1::2]
    assert together[gap < 4 * st.box].all() and not together[gap > 4 * st.box].any()
    # read as particle pixels (the old reading), 3 boxes would be no neighbour at all
    assert len(np.unique(neighbour_groups(binned.replace(optics=st.optics)))) == n


def test_one_densely_picked_micrograph_still_splits_in_balanced_halves() -> None:
    """All picks on one micrograph, closer than a box: one group; the split keeps only identical images
    together instead of putting everything in one half."""
    st, n = _stack_with_picks(n_mics=1)
    table = st.table.copy()
    table["rlnCoordinateX"] = np.arange(len(st)) * 0.5 * st.box  # a chain of overlapping picks
    table["rlnCoordinateY"] = 0.0
    dense = st.replace(table=table)
    assert len(np.unique(neighbour_groups(dense))) == 1
    half = half_sets(dense, seed=1)
    counts = np.bincount(half, minlength=3)[1:]
    assert abs(int(counts[0]) - int(counts[1])) <= 0.03 * len(st)
    assert (half[n:] == half[dense.stack_index[n:]]).all()  # the same image still in one half


def _dense_micrograph_with_duplicate_picks():
    """One micrograph picked every 0.6 box along a line (overlapping boxes chain into one group), plus a duplicate
    pick 0.15 box off the line beside each of the first 50 picks: returns the stack, the originals and the
    duplicates."""
    st = read_particles(sample_path("particles.star"))
    n = len(st)
    idx = np.concatenate([np.arange(n), np.arange(50)])  # the duplicates are other images (indices reused)
    x = np.concatenate([np.arange(n), np.arange(50)]) * 0.6 * st.box
    y = np.concatenate([np.zeros(n), np.full(50, 0.15 * st.box)])
    table = pd.DataFrame({"rlnMicrographName": ["mic.mrc"] * len(idx), "rlnCoordinateX": x, "rlnCoordinateY": y})
    dense = st.subset(idx).replace(half_set=np.zeros(len(idx), int), table=table)
    # make the duplicates different images (another stack index) so only their coordinates group them
    dense = dense.replace(stack_index=np.concatenate([dense.stack_index[:n], dense.stack_index[:50] + 10**6]))
    return dense, np.arange(50), np.arange(n, n + 50)


def test_chained_overlapping_picks_fall_back_to_keeping_duplicate_picks_together() -> None:
    dense, originals, duplicates = _dense_micrograph_with_duplicate_picks()
    assert len(np.unique(neighbour_groups(dense))) == 1  # every box overlaps the next: one group
    half = half_sets(dense, seed=1)
    counts = np.bincount(half, minlength=3)[1:]
    assert abs(int(counts[0]) - int(counts[1])) <= 0.05 * len(dense)
    assert (half[duplicates] == half[originals]).all()  # 0.15 box apart: kept together
    assert (half[:-50][1:] != half[:-50][:-1]).any()  # 0.6 box apart: free to split
    line = describe_half_sets(dense, half)
    assert "100 particles are picks closer than half a box" in line


def test_a_relion_split_of_overlapping_but_distinct_particles_is_not_warned_about() -> None:
    dense, originals, duplicates = _dense_micrograph_with_duplicate_picks()
    keep = np.arange(len(dense) - 50)  # no duplicates: picks 0.6 box apart, alternating halves
    own = dense.subset(keep).replace(half_set=np.where(keep % 2 == 0, 1, 2))
    assert "WARNING" not in describe_half_sets(own, own.half_set)
    # with the duplicate picks in the other half than their originals, it is
    both = dense.replace(half_set=np.concatenate([np.where(keep % 2 == 0, 1, 2), 3 - np.where(originals % 2 == 0, 1,
                                                                                                     2)]))
    assert "WARNING: 100 particles have a pick closer than half a box" in describe_half_sets(both, both.half_set)


@pytest.mark.skipif(not (INTEROP / "relion31.star").exists(), reason="interop samples not present")
def test_micrograph_pixel_size_of_a_real_relion_file() -> None:
    st = read_particles(INTEROP / "relion31.star")
    assert st.pixel_size == 2.806
    assert np.allclose(coordinate_pixel_size(st), 1.403)


def test_the_log_line_says_where_the_half_sets_came_from() -> None:
    st, n = _stack_with_picks()
    line = describe_half_sets(st, half_sets(st, seed=3))
    _, inverse, sizes = np.unique(neighbour_groups(st), return_inverse=True, return_counts=True)
    shared = int(np.sum(sizes[inverse] > 1))  # particles in a group of two or more
    assert line.startswith("half sets ") and "random split" in line and f"{shared:,} particles share pixels" in line
    assert shared >= 100  # the 50 duplicates and their originals at least
    own = read_particles(sample_path("particles.star"))
    assert "the file's rlnRandomSubset" in describe_half_sets(own, own.half_set)


def test_a_files_own_split_that_separates_duplicate_picks_is_warned_about() -> None:
    st, n = _stack_with_picks()
    ok = st.replace(half_set=half_sets(st, seed=3))
    assert "WARNING" not in describe_half_sets(ok, ok.half_set)
    bad_half = ok.half_set.copy()
    table = ok.table.copy()
    table.loc[n, ["rlnCoordinateX", "rlnCoordinateY"]] = table.loc[0, ["rlnCoordinateX", "rlnCoordinateY"]] + 3.0
    table.loc[n, "rlnMicrographName"] = table.loc[0, "rlnMicrographName"]
    bad_half[n] = 3 - bad_half[0]  # a pick 3 px from particle 0, in the other half
    bad = ok.replace(table=table, half_set=bad_half)
    line = describe_half_sets(bad, bad.half_set)
    assert "WARNING" in line and "the other half set" in line
