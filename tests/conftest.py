"""Shared fixtures: backends present, interop data location, a small phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryolive import backend

SHARED = Path(__file__).resolve().parents[2] / "shared"
INTEROP = SHARED / "data" / "interop"


@pytest.fixture(params=backend.available_backends())
def xp_backend(request):
    """Run a test once per available backend (NumPy always, CuPy when a GPU is usable)."""
    old = backend.xp()
    mod = backend.set_backend(request.param)
    yield mod
    backend._XP = old


@pytest.fixture(scope="session")
def gaussian_phantom():
    """40 Gaussian blobs (sigma 2 px) in a 64^3 box: centres (x, y, z) px from the centre, amplitudes, volume."""
    rng = np.random.default_rng(1)
    n, sig = 64, 2.0
    cen = rng.normal(0, 8, (40, 3))
    amp = rng.uniform(0.5, 1.5, 40)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n))
    for p, a in zip(cen, amp, strict=True):
        vol += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * sig**2))
    return cen, amp, sig, vol.astype(np.float32)
