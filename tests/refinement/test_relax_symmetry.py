"""Symmetry relaxation and local refinement from the particles' own poses, on a pseudo-symmetric phantom.

The phantom is a C2 molecule plus one off-axis blob (13 % of the mass) that breaks the symmetry. Half of the
particles start at the truth, half at the truth's C2 mate (what a C2 refinement hands on: both copies fit the
symmetric core). Local refinement in C1 cannot move a particle 180° to its other copy; with the C2 symmetry
relaxed it tries both and keeps the one that fits the blob.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.io import InputError, read_map, read_particles
from cryolive.jobs import drain
from cryolive.refinement.refine import RefineParams, refine
from cryolive.resolution.filters import lowpass
from cryolive.rotations.euler import angular_distance, euler_to_matrix
from cryolive.rotations.symmetry import symmetry_operators
from cryolive.simulator.dataset import SimulationParams, phantom_volumes, simulate_dataset

BOX, APIX = 40, 3.0
BLOB_ZYX_A = np.array([0.0, 9.0, 14.0])  # the symmetry-breaking blob's centre, Å from the box centre [z, y, x]
C2 = symmetry_operators("C2")[1]  # 180° about Z


def _sphere_mean(vol: np.ndarray, centre_zyx_A: np.ndarray, radius_A: float = 5.0) -> float:
    """Mean density within ``radius_A`` of a point given in Å from the box centre, [z, y, x]."""
    zyx = (np.mgrid[:BOX, :BOX, :BOX] - BOX // 2) * APIX
    d2 = sum((zyx[i] - centre_zyx_A[i]) ** 2 for i in range(3))
    return float(vol[d2 <= radius_A**2].mean())


@pytest.fixture(scope="module")
def pseudo_c2(tmp_path_factory):
    """(stack with half its poses at the C2 mate, true rotations, which started at the mate, the true map)."""
    p = SimulationParams(n=800, box=BOX, pixel_size=APIX, snr=0.15, seed=21, symmetry="C2", max_shift_px=2.0)
    sym = phantom_volumes(p)[0]
    zyx = (np.mgrid[:BOX, :BOX, :BOX] - BOX // 2) * APIX
    blob = np.exp(-sum((zyx[i] - BLOB_ZYX_A[i]) ** 2 for i in range(3)) / (2 * 4.0**2))
    vol = (sym + 0.6 * sym.max() * blob).astype(np.float32)
    out = simulate_dataset(tmp_path_factory.mktemp("pseudo_c2") / "data", p, volumes=[vol])
    truth = np.load(out / "truth" / "truth.npz")
    stack = read_particles(out / "particles.star")
    at_mate = np.random.default_rng(1).random(len(stack)) < 0.5
    start = truth["rotations"].copy()
    start[at_mate] = start[at_mate] @ C2
    return stack.with_poses(start, truth["shifts_A"]), truth["rotations"], at_mate, read_map(out / "truth" /
                                                                                              "truth_map.mrc")[0]


def test_c2_mates_project_alike():
    """The convention the relaxation relies on: for a C2 map, the projection at ``A`` equals that at ``A S``
    (operators act on the right of RELION's ``A``, as in the reconstruction), not at ``S A``."""
    from cryolive.projection import Projector

    vol = phantom_volumes(SimulationParams(box=BOX, pixel_size=APIX, seed=21, symmetry="C2"))[0]
    a = euler_to_matrix(30.0, 70.0, -40.0)[None]
    proj = Projector(vol)
    p_a, p_as, p_sa = (np.asarray(proj.project_real(r, np.zeros((1, 2)))) for r in (a, a @ C2, C2 @ a))
    peak = np.abs(p_a).max()
    assert np.abs(p_a - p_as).max() < 0.08 * peak  # the same image up to interpolation
    assert np.abs(p_a - p_sa).max() > 0.2 * peak


def test_relaxed_symmetry_moves_particles_to_the_right_copy(pseudo_c2):
    stack, true_rot, at_mate, truth = pseudo_c2
    ref = np.asarray(lowpass(truth, 15.0, APIX))
    found = {}
    for relax in (None, "C2"):
        _, res = drain(refine(stack, ref, RefineParams(use_input_poses=True, relax_symmetry=relax, max_iter=2,
                                                       initial_lowpass_A=15.0, minibatch_iters=0)))
        right = angular_distance(res.rotations, true_rot) < angular_distance(res.rotations, true_rot @ C2)
        avg = 0.5 * (res.final.half_a + res.final.half_b)
        # the blob against the same place on the other copy (180° about Z: [z, -y, -x])
        contrast = _sphere_mean(avg, BLOB_ZYX_A) / _sphere_mean(avg, BLOB_ZYX_A * [1, -1, -1])
        found[relax] = (right.mean(), right[at_mate].mean(), contrast)
        print(f"relax {relax}: right copy {right.mean():.3f} (of those started on the mate "
              f"{right[at_mate].mean():.3f}), blob / its mirror site {contrast:.2f}, "
              f"GSFSC {res.final.resolution_A:.2f} Å")
    # local search alone keeps every particle on the copy it started on
    assert found[None][1] < 0.05 and abs(found[None][0] - 0.5) < 0.08
    # relaxed: the particles started on the wrong copy move to the right one
    assert found["C2"][1] > 0.9 and found["C2"][0] > 0.9
    # and the symmetry-breaking blob comes back at full strength on one side only
    assert found["C2"][2] > 1.3 * found[None][2]


def test_input_poses_are_required_and_relaxation_must_be_a_larger_group(pseudo_c2):
    stack, *_ = pseudo_c2
    ref = np.zeros((BOX,) * 3, np.float32)
    with pytest.raises(InputError, match="no poses"):
        next(refine(stack._replace(rotations=None), ref, RefineParams(use_input_poses=True)))
    with pytest.raises(ValueError, match="cannot be combined"):
        next(refine(stack, ref, RefineParams(use_input_poses=True, sgd_steps=5)))
    for enforced, relax in (("C4", "C2"), ("C3", "D2")):  # smaller; larger but not containing C3
        with pytest.raises(ValueError, match="larger group"):
            next(refine(stack, ref, RefineParams(symmetry=enforced, relax_symmetry=relax)))
