"""Point groups: orders, closure, RELION axis conventions, volume symmetrisation and pose expansion."""

from __future__ import annotations

import numpy as np
import pytest

from cryolive.backend import to_numpy
from cryolive.rotations.euler import axis_angle_to_matrix, euler_to_matrix
from cryolive.rotations.symmetry import (
    canonical_symmetry_name,
    expand_rotations,
    point_group_order,
    symmetrize_volume,
    symmetry_operators,
)

ORDERS = {
    "C1": 1, "C2": 2, "C7": 7, "D1": 2, "D2": 4, "D7": 14, "T": 12, "O": 24, "I": 60, "I1": 60, "I2": 60,
}
PHI = (1 + np.sqrt(5)) / 2


def _contains(ops: np.ndarray, r: np.ndarray, tol: float = 1e-6) -> bool:
    return bool(np.min(np.max(np.abs(ops - r), axis=(1, 2))) < tol)


def _has_axis(ops: np.ndarray, axis, fold: int) -> bool:
    """True when the group holds the right-handed rotation by 360/fold degrees about ``axis``."""
    a = np.asarray(axis, dtype=float)
    return _contains(ops, axis_angle_to_matrix(a / np.linalg.norm(a) * 2 * np.pi / fold))


def _axes_of_fold(ops: np.ndarray, fold: int) -> np.ndarray:
    """Unit axes (sign: first non-zero of z, y, x positive) of the operators rotating by 360/fold degrees."""
    ang = np.arccos(np.clip((np.trace(ops, axis1=1, axis2=2) - 1) / 2, -1, 1))
    sel = ops[np.abs(ang - 2 * np.pi / fold) < 1e-6]
    axes = np.linalg.svd(sel - np.eye(3))[2][:, 2, :]  # null vector of R - I
    for a in axes:
        for c in (2, 1, 0):
            if abs(a[c]) > 1e-9:
                if a[c] < 0:
                    a *= -1
                break
    # rotations by +-360/fold share an axis
    uniq: list[np.ndarray] = []
    for a in axes:
        if not any(np.allclose(a, u, atol=1e-9) for u in uniq):
            uniq.append(a)
    return np.array(uniq)


@pytest.mark.parametrize("name,order", sorted(ORDERS.items()))
def test_group_order_and_closure(name: str, order: int) -> None:
    ops = symmetry_operators(name)
    assert ops.shape == (order, 3, 3)
    assert ops.dtype == np.float64
    assert point_group_order(name) == order
    np.testing.assert_array_equal(ops[0], np.eye(3))
    # proper rotations
    eye = np.broadcast_to(np.eye(3), ops.shape)
    np.testing.assert_allclose(ops @ np.swapaxes(ops, 1, 2), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(ops), 1.0, atol=1e-12)
    # no duplicates
    diff = np.max(np.abs(ops[:, None] - ops[None]), axis=(2, 3))
    assert np.all(diff[~np.eye(order, dtype=bool)] > 1e-3)
    # closed under composition and inversion
    prods = (ops[:, None] @ ops[None]).reshape(-1, 3, 3)
    dist = np.max(np.abs(prods[:, None] - ops[None]), axis=(2, 3)).min(axis=1)
    assert dist.max() < 1e-6
    for s in ops:
        assert _contains(ops, s.T)


def test_names_case_insensitive_and_errors() -> None:
    np.testing.assert_array_equal(symmetry_operators("c4"), symmetry_operators("C4"))
    np.testing.assert_array_equal(symmetry_operators("i"), symmetry_operators("I1"))
    assert canonical_symmetry_name(" d03 ") == "D3"
    assert not np.allclose(symmetry_operators("I1"), symmetry_operators("I2"))
    for bad in ("X", "C0", "D", "I3", "Cx", "", "C-2"):
        with pytest.raises(ValueError, match="valid names"):
            symmetry_operators(bad)
    with pytest.raises(ValueError, match="C1, Cn, Dn"):
        point_group_order("Q7")


def test_cyclic_and_dihedral_axes() -> None:
    c4 = symmetry_operators("C4")
    assert _has_axis(c4, (0, 0, 1), 4)
    # k-th operator of Cn: +2 pi k / n about Z
    np.testing.assert_allclose(c4[1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(symmetry_operators("C7")[3],
                               axis_angle_to_matrix(np.array([0, 0, 3 * 2 * np.pi / 7])), atol=1e-12)
    d2 = symmetry_operators("D2")
    for axis in np.eye(3):
        assert _has_axis(d2, axis, 2)
    d7 = symmetry_operators("D7")
    assert _has_axis(d7, (0, 0, 1), 7)
    assert _has_axis(d7, (1, 0, 0), 2)
    assert not _has_axis(d7, (0, 1, 0), 2)  # 7 is odd: the 2-folds are X and its rotations by 360/7 degrees


def test_tetrahedral_axes() -> None:
    t = symmetry_operators("T")
    assert _has_axis(t, (0, 0, 1), 3)
    # RELION's second generator: a 2-fold along (0, 0.816496, 0.577350), in the YZ plane
    assert _has_axis(t, (0, 0.816496, 0.577350), 2)
    twofolds = _axes_of_fold(t, 2)
    assert len(twofolds) == 3
    np.testing.assert_allclose(np.abs(twofolds @ twofolds.T), np.eye(3), atol=1e-9)  # mutually perpendicular
    np.testing.assert_allclose(twofolds[:, 2], 1 / np.sqrt(3), atol=1e-9)  # 54.74 degrees from Z
    assert len(_axes_of_fold(t, 3)) == 4
    assert not _has_axis(t, (1, 0, 0), 2)


def test_octahedral_axes() -> None:
    o = symmetry_operators("O")
    for axis in np.eye(3):
        assert _has_axis(o, axis, 4)
    assert _has_axis(o, (1, 1, 1), 3)
    assert len(_axes_of_fold(o, 4)) == 3
    assert len(_axes_of_fold(o, 3)) == 4
    assert len(_axes_of_fold(o, 2)) == 6 + 3  # 6 edge 2-folds + squares of the 4-folds


@pytest.mark.parametrize("name,plane_zero", [("I1", 0), ("I2", 1)])
def test_icosahedral_axes(name: str, plane_zero: int) -> None:
    ops = symmetry_operators(name)
    for axis in np.eye(3):
        assert _has_axis(ops, axis, 2)
    five = _axes_of_fold(ops, 5)
    assert len(five) == 6
    top = five[np.argmax(five[:, 2])]
    # I1: greatest-Z 5-fold (0, 1, phi)/norm in the YZ plane; I2: (1, 0, phi)/norm in the XZ plane
    expected = np.array([0.0, 1.0, PHI]) if name == "I1" else np.array([1.0, 0.0, PHI])
    np.testing.assert_allclose(np.abs(top), expected / np.linalg.norm(expected), atol=1e-9)
    assert abs(top[plane_zero]) < 1e-9
    assert len(_axes_of_fold(ops, 3)) == 10
    assert len(_axes_of_fold(ops, 2)) == 15


# ------------------------------------------------------------------------------------------------------
# Volumes


def _gaussians(points: np.ndarray, n: int = 48, sigma: float = 2.0) -> np.ndarray:
    """Sum of Gaussians at ``points`` ((x, y, z) px from the centre voxel n // 2) in a [z, y, x] volume."""
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n))
    for p in points:
        vol += np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * sigma**2))
    return vol.astype(np.float32)


def _orbit(points: np.ndarray, name: str) -> np.ndarray:
    return (symmetry_operators(name)[:, None] @ points[None, :, :, None])[..., 0].reshape(-1, 3)


def _rel(a, b) -> float:
    a, b = to_numpy(a).astype(np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


SEEDS = np.array([[7.0, 3.0, 5.0], [-4.0, 9.0, 2.0], [2.0, -6.0, -9.0]])


def test_symmetrize_d2_keeps_symmetric_changes_asymmetric(xp_backend) -> None:
    sym = _gaussians(_orbit(SEEDS, "D2"))
    out = symmetrize_volume(xp_backend.asarray(sym), "D2")
    assert isinstance(out, xp_backend.ndarray)
    assert out.dtype == xp_backend.float32 and out.shape == sym.shape
    assert _rel(out, sym) < 0.02
    asym = _gaussians(SEEDS)
    assert _rel(symmetrize_volume(xp_backend.asarray(asym), "D2"), asym) > 0.2


def test_symmetrize_axis_order(xp_backend) -> None:
    """C4 about Z must act on (x, y, z) of an [z, y, x] array: a map with a 4-fold about X is not C4."""
    about_z = _gaussians(_orbit(SEEDS, "C4"))
    assert _rel(symmetrize_volume(xp_backend.asarray(about_z), "C4"), about_z) < 0.02
    rx = axis_angle_to_matrix(np.array([np.pi / 2, 0, 0]))
    about_x = _gaussians(np.concatenate([SEEDS @ np.linalg.matrix_power(rx, k).T for k in range(4)]))
    assert _rel(symmetrize_volume(xp_backend.asarray(about_x), "C4"), about_x) > 0.2
    # one blob -> the average of its images, exactly what the group predicts
    p = np.array([[8.0, 3.0, -4.0]])
    expected = _gaussians(_orbit(p, "C4")) / 4
    assert _rel(symmetrize_volume(xp_backend.asarray(_gaussians(p)), "C4"), expected) < 0.03


def test_symmetrize_odd_box_octahedral(xp_backend) -> None:
    vol = _gaussians(_orbit(SEEDS[:1] * 0.8, "O"), n=41)
    assert _rel(symmetrize_volume(xp_backend.asarray(vol), "O"), vol) < 0.03
    one = _gaussians(SEEDS[:1], n=41)
    assert _rel(symmetrize_volume(xp_backend.asarray(one), "C1"), one) == 0.0


# ------------------------------------------------------------------------------------------------------
# Pose expansion


def _same_set(a: np.ndarray, b: np.ndarray, tol: float = 1e-9) -> bool:
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return bool(d.min(axis=1).max() < tol and d.min(axis=0).max() < tol)


@pytest.mark.parametrize("name", ["C3", "D5", "T", "O", "I1", "I2"])
def test_expand_rotations_projects_symmetric_cloud_identically(name: str) -> None:
    rng = np.random.default_rng(4)
    cloud = _orbit(rng.normal(0, 10, (3, 3)), name)  # closed under the group
    poses = euler_to_matrix(rng.uniform(-np.pi, np.pi, 2), rng.uniform(0, np.pi, 2),
                            rng.uniform(-np.pi, np.pi, 2))
    order = point_group_order(name)
    exp = expand_rotations(poses, name)
    assert exp.shape == (2 * order, 3, 3)
    np.testing.assert_allclose(exp[::order], poses)
    ops = symmetry_operators(name)
    for i, a in enumerate(poses):
        ref = (cloud @ a.T)[:, :2]  # image coordinates (A p)[:2]
        for k in range(order):
            b = exp[i * order + k]
            np.testing.assert_allclose(b, a @ ops[k], atol=1e-12)
            assert _same_set((cloud @ b.T)[:, :2], ref)
        # the other side, S @ A, is not a symmetry-equivalent pose (for some S)
        wrong = [_same_set((cloud @ (s @ a).T)[:, :2], ref) for s in ops[1:]]
        assert not all(wrong)


def test_expand_single_matrix_c1() -> None:
    a = euler_to_matrix(0.3, 1.2, -0.5)
    np.testing.assert_allclose(expand_rotations(a, "C1"), a[None])
