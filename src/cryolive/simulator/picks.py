"""Picking artefacts of real data sets, for tests and benchmarks of what they do to the gold standard."""

from __future__ import annotations

import numpy as np


def off_centre_pick(image: np.ndarray, move_px: np.ndarray, rng: np.random.Generator, noise_sd: float) -> np.ndarray:
    """A second pick of the particle in ``image`` ``(n, n)``, ``move_px = (dx, dy)`` pixels away: the same patch of
    micrograph seen from a box moved by ``-move``, so the particle (and every pixel the two boxes share) sits
    ``move`` further along ``(x, y)``; the strips that come into the box from outside the first one are fresh
    Gaussian noise of ``noise_sd``. Give the copy an origin moved by ``-move * pixel_size`` Å (the centre sits at
    ``-origin``) to keep the particle's pose right."""
    out = np.roll(image, (int(move_px[1]), int(move_px[0])), axis=(0, 1))
    for axis, k in ((0, int(move_px[1])), (1, int(move_px[0]))):
        strip = [slice(None), slice(None)]
        strip[axis] = slice(0, k) if k > 0 else slice(k, None)
        out[tuple(strip)] = rng.normal(0.0, noise_sd, out[tuple(strip)].shape)
    return out
