"""Map-to-map alignment (rotation, shift, hand) against a transform we applied ourselves."""

from __future__ import annotations

import numpy as np

from cryolive.image.align3d import MapAlignment, _transform, align_maps, apply_alignment, mirror_map
from cryolive.resolution.fsc import fsc, resolution_at
from cryolive.rotations.euler import angular_distance, axis_angle_to_matrix
from cryolive.simulator.dataset import SimulationParams, phantom_volumes


def _moved(truth: np.ndarray, g: np.ndarray, shift_A: np.ndarray, apix: float, mirrored: bool) -> np.ndarray:
    """A map that :func:`apply_alignment` with ``(g, shift_A, mirrored)`` brings back onto ``truth``."""
    inv = _transform(truth, g.T, -(g.T @ shift_A) / apix, order=3)
    return mirror_map(inv) if mirrored else inv


def test_mirror_is_an_involution_about_the_centre_voxel():
    v = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(mirror_map(mirror_map(v)), v)
    np.testing.assert_array_equal(mirror_map(v)[4], v[4])  # the plane z = n // 2 stays
    np.testing.assert_array_equal(mirror_map(v)[5], v[3])


def test_align_maps_recovers_rotation_shift_and_hand():
    apix = 3.0
    truth = phantom_volumes(SimulationParams(box=32, pixel_size=apix, seed=3))[0]
    g = axis_angle_to_matrix(np.array([0.9, -0.4, 1.3]))
    shift = np.array([4.0, -6.0, 3.0])
    for mirrored in (True, False):
        moving = _moved(truth, g, shift, apix, mirrored)
        # the helper itself is right: the known alignment restores the truth
        assert resolution_at(fsc(apply_alignment(moving, MapAlignment(g, shift, mirrored, 1.0), apix), truth),
                             32, apix, 0.5) < 8.0
        al = align_maps(moving, truth, apix, resolution_A=10.0, step_deg=20.0)
        assert al.mirrored == mirrored
        assert np.degrees(angular_distance(al.rotation, g)) < 5.0
        assert np.linalg.norm(al.shift_A - shift) < 2.0
        before = resolution_at(fsc(moving, truth), 32, apix, 0.5)
        after = resolution_at(fsc(apply_alignment(moving, al, apix), truth), 32, apix, 0.5)
        assert before > 30.0 and after < 9.0, (before, after)
