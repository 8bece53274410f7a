"""Gain reference: read, orient (RELION's ``--gain_rot`` / ``--gain_flip``), check and multiply into frames.

Orientation follows RELION's motioncorr options (the same as MotionCor2's ``-RotGain`` / ``-FlipGain``): first
rotate by ``rot`` x 90 degrees counter-clockwise as seen with y up (the MRC / IMOD view; clockwise in
relion_display, which draws row 0 at the top), then flip: ``flip`` 0 none, 1 upside down (``y -> ny-1-y``),
2 left-right (``x -> nx-1-x``). On arrays ``[y, x]`` that is ``np.rot90(gain, -rot)`` and then ``[::-1]`` or
``[:, ::-1]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryolive.io import InputError
from cryolive.motion.movie_io import read_image_2d

GAIN_ROTATIONS = (0, 1, 2, 3)
GAIN_FLIPS = (0, 1, 2)


def orient_gain(gain: np.ndarray, rot: int = 0, flip: int = 0) -> np.ndarray:
    """``gain`` ``(ny, nx)`` rotated by ``rot`` x 90 degrees counter-clockwise (y up), then flipped (``flip`` 1
    upside down, 2 left-right); see the module docstring."""
    if rot not in GAIN_ROTATIONS:
        raise ValueError(f"gain rotation must be one of {GAIN_ROTATIONS} (x 90 degrees), not {rot!r}")
    if flip not in GAIN_FLIPS:
        raise ValueError(f"gain flip must be one of {GAIN_FLIPS} (none, upside down, left-right), not {flip!r}")
    out = np.rot90(gain, -rot)
    if flip == 1:
        out = out[::-1]
    elif flip == 2:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def load_gain(path: str | os.PathLike, frame_shape: tuple[int, int], rot: int = 0, flip: int = 0) -> np.ndarray:
    """The oriented gain ``(ny, nx)`` float32 to multiply into frames of ``frame_shape`` ``(ny, nx)``.

    InputError naming the file when it is unreadable, not 2-D, of another size than the frames after orienting
    (the message says when a 90-degree rotation would fit), or holds zeros, negative values, NaN or Inf.
    """
    p = Path(path)
    gain = orient_gain(read_image_2d(p), rot, flip)
    ny, nx = frame_shape
    if gain.shape != (ny, nx):
        hint = (" (a --gain-rot of 1 or 3 would make it fit)" if gain.shape == (nx, ny) and nx != ny else "")
        raise InputError(f"{p}: gain reference is {gain.shape[1]} x {gain.shape[0]} after rotation {rot} and flip "
                         f"{flip}, but the movie frames are {nx} x {ny}{hint}")
    bad = ~np.isfinite(gain)
    if bad.any():
        raise InputError(f"{p}: gain reference holds {int(bad.sum())} NaN or Inf pixel(s)")
    if (gain <= 0).any():
        y, x = np.argwhere(gain <= 0)[0]
        raise InputError(f"{p}: gain reference holds {int((gain <= 0).sum())} zero or negative pixel(s) (first at "
                         f"x {x}, y {y}); a gain must be positive everywhere")
    return gain.astype(np.float32)


def apply_gain(frame: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """``frame * gain`` (both ``(ny, nx)``), float32; the frame itself when there is no gain."""
    return frame if gain is None else np.multiply(frame, gain, dtype=np.float32)
