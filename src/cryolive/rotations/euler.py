"""RELION ZYZ Euler angles <-> rotation matrices <-> axis-angle (cryoSPARC ``alignments3D/pose``).

Convention (RELION, docs/conventions.md, "Euler angles and rotations"): ``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` with
``Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]`` and
``Ry(a) = [[cos a, 0, -sin a], [0, 1, 0], [sin a, 0, cos a]]``. ``A`` maps volume coordinates (x, y, z) to the
image frame: the projection direction is ``A[2, :]`` and the image's central slice samples the volume's Fourier
transform at ``A.T @ (kx, ky, 0)``.

cryoSPARC stores ``alignments3D/pose`` as an axis-angle vector (radians) of the rotation used for back-projection,
``R_cs = exp([pose]_x)`` (right-handed Rodrigues); RELION's ``A`` is its transpose: ``A = R_cs.T``.

All angles here are **radians**; files store degrees (convert at the I/O boundary). Matrices are ``(..., 3, 3)``
NumPy arrays (poses are small; they live on the host and are moved to the backend by the projector).
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(rot: np.ndarray | float, tilt: np.ndarray | float, psi: np.ndarray | float) -> np.ndarray:
    """RELION ZYZ Euler angles (radians) -> rotation matrices ``A`` of shape ``(..., 3, 3)``."""
    rot, tilt, psi = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (rot, tilt, psi)))
    ca, sa = np.cos(rot), np.sin(rot)
    cb, sb = np.cos(tilt), np.sin(tilt)
    cg, sg = np.cos(psi), np.sin(psi)
    a = np.empty(rot.shape + (3, 3))
    a[..., 0, 0] = cg * cb * ca - sg * sa
    a[..., 0, 1] = cg * cb * sa + sg * ca
    a[..., 0, 2] = -cg * sb
    a[..., 1, 0] = -sg * cb * ca - cg * sa
    a[..., 1, 1] = -sg * cb * sa + cg * ca
    a[..., 1, 2] = sg * sb
    a[..., 2, 0] = sb * ca
    a[..., 2, 1] = sb * sa
    a[..., 2, 2] = cb
    return a


def matrix_to_euler(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotation matrices ``(..., 3, 3)`` -> RELION ``(rot, tilt, psi)`` in radians, tilt in [0, pi].

    At the poles (tilt 0 or pi) rot is set to 0 and the whole in-plane angle goes to psi, as RELION does.
    """
    a = np.asarray(a, dtype=np.float64)
    sb = np.hypot(a[..., 0, 2], a[..., 1, 2])
    tilt = np.arctan2(sb, a[..., 2, 2])
    regular = sb > 1e-9
    rot = np.where(regular, np.arctan2(a[..., 2, 1], a[..., 2, 0]), 0.0)
    psi_regular = np.arctan2(a[..., 1, 2], -a[..., 0, 2])
    # tilt == 0: A = Rz(psi + rot); tilt == pi: A = Rz(psi) Ry(pi) Rz(rot) -> in-plane angle psi - rot
    psi_pole = np.where(a[..., 2, 2] > 0, np.arctan2(-a[..., 1, 0], a[..., 0, 0]),
                        np.arctan2(a[..., 1, 0], -a[..., 0, 0]))
    psi = np.where(regular, psi_regular, psi_pole)
    return rot, tilt, psi


def axis_angle_to_matrix(v: np.ndarray) -> np.ndarray:
    """Axis-angle vectors ``(..., 3)`` (direction = axis, norm = angle in radians) -> right-handed rotations."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)
    safe = np.where(theta > 1e-12, theta, 1.0)
    k = v / safe[..., None]
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    kmat = np.stack([np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1),
                     np.stack([-ky, kx, zero], -1)], -2)
    s = np.sin(theta)[..., None, None]
    c = (1.0 - np.cos(theta))[..., None, None]
    eye = np.broadcast_to(np.eye(3), kmat.shape)
    return eye + s * kmat + c * (kmat @ kmat)


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` -> axis-angle vectors ``(..., 3)`` with angle in [0, pi]."""
    r = np.asarray(r, dtype=np.float64)
    # Via unit quaternions (robust near 0 and pi).
    q = matrix_to_quaternion(r)
    w = np.clip(q[..., 0], -1.0, 1.0)
    n = np.linalg.norm(q[..., 1:], axis=-1)
    theta = 2.0 * np.arctan2(n, w)
    scale = np.where(n > 1e-12, theta / np.where(n > 1e-12, n, 1.0), 2.0)
    return q[..., 1:] * scale[..., None]


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(..., 4)`` as (w, x, y, z) with w >= 0."""
    r = np.asarray(r, dtype=np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    cand = np.stack([
        np.stack([1 + m00 + m11 + m22, r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                  r[..., 1, 0] - r[..., 0, 1]], -1),
        np.stack([r[..., 2, 1] - r[..., 1, 2], 1 + m00 - m11 - m22, r[..., 0, 1] + r[..., 1, 0],
                  r[..., 0, 2] + r[..., 2, 0]], -1),
        np.stack([r[..., 0, 2] - r[..., 2, 0], r[..., 0, 1] + r[..., 1, 0], 1 - m00 + m11 - m22,
                  r[..., 1, 2] + r[..., 2, 1]], -1),
        np.stack([r[..., 1, 0] - r[..., 0, 1], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1],
                  1 - m00 - m11 + m22], -1),
    ], -2)
    diag = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = np.argmax(diag, axis=-1)
    q = np.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def cryosparc_pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` (axis-angle, radians) -> RELION matrix ``A`` (``= R_cs.T``)."""
    return np.swapaxes(axis_angle_to_matrix(pose), -1, -2)


def matrix_to_cryosparc_pose(a: np.ndarray) -> np.ndarray:
    """RELION matrix ``A`` -> cryoSPARC ``alignments3D/pose`` axis-angle vector (radians)."""
    return matrix_to_axis_angle(np.swapaxes(np.asarray(a), -1, -2))


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle (radians) between rotations ``a`` and ``b`` (``(..., 3, 3)`` each)."""
    rel = np.swapaxes(a, -1, -2) @ b
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))
