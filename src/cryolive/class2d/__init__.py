"""Reference-free 2D classification (maximum likelihood over classes, in-plane rotations and origins)."""

from cryolive.class2d.classify2d import Class2DIteration, Class2DParams, Class2DResult, classify2d

__all__ = ["Class2DIteration", "Class2DParams", "Class2DResult", "classify2d"]
