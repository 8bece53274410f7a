"""Shared fixtures: backends present, interop data location, a small phantom."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from cryolive import backend

SHARED = Path(__file__).resolve().parents[2] / "shared"
INTEROP = SHARED / "data" / "interop"


def _clear_backend_caches() -> None:
    """Forget the per-backend cached arrays (pixel sets, shell indices), so no emulated array outlives its test."""
    from cryolive.alignment import pixels
    from cryolive.resolution import _shells

    pixels._pixel_set.cache_clear()
    _shells._shell_index_cached.cache_clear()


@contextmanager
def _emulated_device():
    """The strict CuPy stand-in of ``device_emulation`` as ``cupy``/``cupyx`` and as cryolive's backend."""
    from device_emulation import make_modules

    saved = {name: sys.modules.get(name) for name in make_modules()}
    old = backend.xp()
    sys.modules.update(make_modules())
    _clear_backend_caches()
    try:
        yield backend.set_backend("cupy")
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        backend._XP = old
        _clear_backend_caches()


#: where the CuPy path is checked: a real GPU when one is usable, else the strict emulation
DEVICE_BACKENDS = ["cupy"] if "cupy" in backend.available_backends() else ["emulated"]


@pytest.fixture(params=["numpy", *DEVICE_BACKENDS])
def xp_backend(request):
    """Run a test once on NumPy and once on the device path: CuPy on a GPU, else the strict CuPy emulation
    (``tests/device_emulation.py``: NumPy storage, CuPy's host/device rules)."""
    if request.param == "emulated":
        with _emulated_device() as mod:
            yield mod
        return
    old = backend.xp()
    mod = backend.set_backend(request.param)
    yield mod
    backend._XP = old


@pytest.fixture
def device_backend():
    """The device path alone (CuPy on a GPU, else the strict emulation); the test compares it with NumPy itself."""
    if DEVICE_BACKENDS == ["emulated"]:
        with _emulated_device() as mod:
            yield mod
        return
    old = backend.xp()
    mod = backend.set_backend("cupy")
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
