"""Rotations: RELION ZYZ Euler angles, matrices, cryoSPARC axis-angle, symmetry groups and SO(3) grids."""

from cryolive.rotations.euler import (
    angular_distance,
    axis_angle_to_matrix,
    cryosparc_pose_to_matrix,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_cryosparc_pose,
    matrix_to_euler,
)
from cryolive.rotations.grids import local_grid, local_grids, so3_grid, so3_grid_euler
from cryolive.rotations.symmetry import (
    expand_rotations,
    point_group_order,
    symmetrize_volume,
    symmetry_operators,
)

__all__ = [
    "angular_distance",
    "axis_angle_to_matrix",
    "cryosparc_pose_to_matrix",
    "euler_to_matrix",
    "expand_rotations",
    "local_grid",
    "local_grids",
    "matrix_to_axis_angle",
    "matrix_to_cryosparc_pose",
    "matrix_to_euler",
    "point_group_order",
    "so3_grid",
    "so3_grid_euler",
    "symmetrize_volume",
    "symmetry_operators",
]
