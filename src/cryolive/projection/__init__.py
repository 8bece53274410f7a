"""Fourier-space projection (central slices) and reconstruction (slice insertion, its adjoint)."""

from cryolive.projection.insert import Reconstructor
from cryolive.projection.project import Projector

__all__ = ["Projector", "Reconstructor"]
