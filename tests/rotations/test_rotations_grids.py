"""SO(3) grids for pose search: size, covering radius, symmetry reduction, local grids."""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.rotations.euler import angular_distance, euler_to_matrix
from cryolive.rotations.grids import (
    grid_covering_radius,
    local_grid,
    local_grids,
    local_offsets,
    so3_grid,
    so3_grid_euler,
    so3_grid_shape,
    sphere_directions,
)
from cryolive.rotations.symmetry import expand_rotations, point_group_order


def _assert_rotations(r: np.ndarray) -> None:
    eye = np.broadcast_to(np.eye(3), r.shape)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)


@pytest.fixture(scope="module")
def grid15() -> np.ndarray:
    return so3_grid(15.0)


@pytest.mark.parametrize("step", [15.0, 7.5])
def test_so3_grid_size_and_covering(step: float, grid15: np.ndarray) -> None:
    g = grid15 if step == 15.0 else so3_grid(step)
    _assert_rotations(g)
    ideal = 8 * np.pi**2 / np.deg2rad(step) ** 3
    assert 0.5 * ideal <= len(g) <= 2 * ideal
    assert 0.95 * ideal <= len(g) <= 1.15 * ideal  # in fact within a few per cent
    cov = grid_covering_radius(g)
    assert cov <= step
    assert cov > 0.5 * step  # a sane estimate, not a degenerate one


def test_so3_grid_euler_and_layout(grid15: np.ndarray) -> None:
    rot, tilt, psi = so3_grid_euler(15.0)
    np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi), grid15)
    n_dir, n_psi = so3_grid_shape(15.0)
    assert n_dir * n_psi == len(grid15) and n_psi == 24
    # direction-major: each block of n_psi shares its direction A[2, :], psi steps of 15 degrees
    g = grid15.reshape(n_dir, n_psi, 3, 3)
    np.testing.assert_allclose(g[:, :, 2, :], np.broadcast_to(g[:, :1, 2, :], (n_dir, n_psi, 3)), atol=1e-12)
    np.testing.assert_allclose(np.diff(psi.reshape(n_dir, n_psi), axis=1), np.deg2rad(15.0))
    r, t = sphere_directions(15.0)
    d = np.stack([np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], 1)
    np.testing.assert_allclose(g[:, 0, 2, :], d, atol=1e-12)
    # directions near-uniform: every direction has a neighbour within ~1 step, none closer than ~step / 2
    ang = np.degrees(np.arccos(np.clip(d @ d.T, -1, 1)))
    np.fill_diagonal(ang, 360)
    nearest = ang.min(axis=1)
    assert nearest.max() <= 15.0 + 1e-6 and nearest.min() >= 6.0


@pytest.mark.parametrize("name", ["C2", "C3", "C7", "D3", "T", "O", "I1", "I2"])
def test_symmetric_grid_covers_so3_after_expansion(name: str, grid15: np.ndarray) -> None:
    g = so3_grid(15.0, symmetry=name)
    _assert_rotations(g)
    full_cov = grid_covering_radius(grid15)
    cov = grid_covering_radius(expand_rotations(g, name))
    assert cov <= 15.0
    assert cov <= 1.1 * full_cov
    rot, tilt, _ = so3_grid_euler(15.0, symmetry=name)
    if name[0] in "CD":
        n = int(name[1:])
        assert rot.min() >= 0 and rot.max() < 2 * np.pi / n
        assert len(g) * point_group_order(name) < 1.3 * len(grid15)  # about one asymmetric unit
        if name[0] == "D":
            assert tilt.max() <= np.pi / 2 + 1e-9
    else:
        assert len(g) < 0.4 * len(grid15)  # reduced by the Z 3-fold (T) / D4 (O) / D2 (I)


def test_local_grid_covers_ball() -> None:
    center = euler_to_matrix(0.4, 1.1, -2.0)
    for step in (1.0, 2.0):
        g = local_grid(center, step, 5.0)
        _assert_rotations(g)
        np.testing.assert_allclose(g[0], center)
        dist = np.degrees(angular_distance(g, center))
        assert dist.max() <= 5.0 + step / 2 + 1e-9
        assert np.all(np.diff(dist) >= -1e-9)  # sorted by angle from the centre
        cov = grid_covering_radius(g, center=center, radius_deg=5.0)
        assert cov <= step
        assert cov <= 0.9 * step
    strict = local_grid(center, 1.0, 5.0, cover=False)
    assert np.degrees(angular_distance(strict, center)).max() <= 5.0 + 1e-9
    assert len(local_offsets(1.0, 5.0, cover=False)) == len(strict) == 515  # lattice points with |v| <= 5
    assert len(local_grid(center, 3.0, 2.0, cover=False)) == 1  # extent below one step: centre only


def test_local_grids_batch() -> None:
    rng = np.random.default_rng(2)
    centers = euler_to_matrix(rng.uniform(0, 6, 4), rng.uniform(0, 3, 4), rng.uniform(0, 6, 4))
    batch = local_grids(centers, 2.0, 6.0)
    k = len(local_offsets(2.0, 6.0))
    assert batch.shape == (4, k, 3, 3)
    for c, b in zip(centers, batch, strict=True):
        np.testing.assert_allclose(b, local_grid(c, 2.0, 6.0), atol=1e-12)
    # the same small offsets around every centre
    d = np.degrees(angular_distance(batch, centers[:, None]))
    np.testing.assert_allclose(d, np.broadcast_to(d[:1], d.shape), atol=1e-6)


def test_covering_radius_helper_and_errors() -> None:
    one = np.eye(3)[None]
    assert grid_covering_radius(one) > 150.0  # a single rotation leaves most of SO(3) far away
    assert 4.5 < grid_covering_radius(one, center=np.eye(3), radius_deg=5.0) <= 5.0 + 1e-9
    with pytest.raises(ValueError):
        so3_grid(0.0)
    with pytest.raises(ValueError):
        so3_grid(10.0, symmetry="Z3")
    with pytest.raises(ValueError):
        local_offsets(1.0, -1.0)


def test_random_perturbation_stays_within_its_angle():
    from cryolive.rotations.euler import angular_distance
    from cryolive.rotations.grids import random_perturbation

    rng = np.random.default_rng(3)
    rots = np.stack([random_perturbation(rng, 7.5) for _ in range(500)])
    np.testing.assert_allclose(rots @ rots.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rots.shape), atol=1e-12)
    ang = np.degrees(angular_distance(rots, np.eye(3)))
    assert ang.max() <= 7.5 + 1e-9 and ang.mean() > 3.0  # uniform in [0, 7.5]: mean 3.75
