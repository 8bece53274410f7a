"""Symmetric phantoms from the simulator, symmetrisation, and symmetry applied on insertion."""

from __future__ import annotations

import numpy as np

from cryolive.backend import to_numpy
from cryolive.projection import Projector, Reconstructor
from cryolive.resolution.fsc import fsc
from cryolive.rotations.symmetry import symmetrize_volume
from cryolive.simulator.particles import random_rotations
from cryolive.simulator.phantom import make_phantom, render


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_d2_phantom_is_unchanged_by_d2_symmetrisation(xp_backend):
    vol = render(make_phantom(48, 2.0, seed=2, symmetry="D2"), 48, 2.0, sigma_A=3.0)
    assert _rel(to_numpy(symmetrize_volume(vol, "D2")), vol) < 0.02
    # but not by a group it lacks
    assert _rel(to_numpy(symmetrize_volume(vol, "C4")), vol) > 0.2
    asym = render(make_phantom(48, 2.0, seed=2), 48, 2.0, sigma_A=3.0)
    assert _rel(to_numpy(symmetrize_volume(asym, "D2")), asym) > 0.2


def test_symmetry_on_insertion_fills_fourier_space(xp_backend):
    # 60 views of a D2 phantom: with D2 applied on insertion (4x the views) the map is much closer to the truth
    n = 48
    vol = render(make_phantom(n, 2.0, seed=4, symmetry="D2"), n, 2.0, sigma_A=2.0)
    rots = random_rotations(60, np.random.default_rng(9))
    f = Projector(vol).project(rots)
    maps = {}
    for sym in ("C1", "D2"):
        rec = Reconstructor(n, symmetry=sym)
        rec.insert(f, rots)
        maps[sym] = to_numpy(rec.finalize(wiener_constant=0.05))
    f_c1, f_d2 = fsc(maps["C1"], vol), fsc(maps["D2"], vol)
    shells = slice(n // 8, n // 2 - 2)
    assert f_d2[shells].mean() > f_c1[shells].mean() + 0.05
    assert f_d2[1:n // 4].min() > 0.9
