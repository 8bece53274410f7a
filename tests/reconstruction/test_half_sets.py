"""Random half sets keep particles that share pixels together (duplicates, overlapping picks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from cryolive.io import read_particles
from cryolive.reconstruction import half_sets, neighbour_groups
from cryolive.sample import sample_path


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
