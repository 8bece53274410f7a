"""Rotations: RELION ZYZ Euler angles, matrices, cryoSPARC axis-angle, symmetry groups and SO(3) grids."""

from cryolive.rotations.euler import (
    axis_angle_to_matrix,
    cryosparc_pose_to_matrix,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_cryosparc_pose,
    matrix_to_euler,
)

__all__ = [
    "axis_angle_to_matrix",
    "cryosparc_pose_to_matrix",
    "euler_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_cryosparc_pose",
    "matrix_to_euler",
]
