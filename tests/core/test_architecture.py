"""The numerical core imports no Qt and no napari; the backend switch behaves."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cryolive import backend

CORE_MODULES = [
    "cryolive.backend", "cryolive.image.ctf", "cryolive.image.fourier", "cryolive.projection",
    "cryolive.rotations", "cryolive.rotations.symmetry", "cryolive.rotations.grids", "cryolive.resolution.fsc",
    "cryolive.resolution.filters", "cryolive.resolution.sharpen", "cryolive.masks", "cryolive.io",
    "cryolive.simulator.phantom", "cryolive.simulator.particles", "cryolive.simulator.dataset",
    "cryolive.jobs.reconstruct", "cryolive.jobs.jobdir", "cryolive.cli", "cryolive.refinement",
    "cryolive.classification", "cryolive.jobs.classify", "cryolive.motion", "cryolive.simulator.movies",
    "cryolive.jobs.motion",
]


def test_core_imports_no_qt_or_napari():
    code = (
        "import sys\n"
        f"for m in {CORE_MODULES!r}: __import__(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
        "('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari', 'vispy', 'magicgui', 'superqt'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core modules pulled in GUI packages: {out.stdout}"


def test_backend_env_switch_numpy():
    env = {**os.environ, "CRYOLIVE_BACKEND": "numpy"}
    code = "from cryolive import backend; print(backend.backend_name(), backend.device_label())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "numpy CPU (NumPy)"


def test_backend_rejects_unknown_name():
    env = {**os.environ, "CRYOLIVE_BACKEND": "torch"}
    code = "from cryolive import backend; backend.xp()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "must be 'numpy' or 'cupy'" in out.stderr


def test_cupy_requested_without_gpu_is_a_clear_error():
    if "cupy" in backend.available_backends():
        pytest.skip("a GPU is usable here")
    with pytest.raises(RuntimeError, match="CuPy cannot use a GPU"):
        backend.set_backend("cupy")
    backend.set_backend("numpy")


def test_scatter_add_accumulates_repeats(xp_backend):
    m = xp_backend
    t = m.zeros(5, dtype=m.complex64)
    backend.scatter_add(t, m.asarray([0, 2, 2, 4]), m.asarray([1 + 1j, 2, 3j, -1], dtype=m.complex64))
    assert np.allclose(backend.to_numpy(t), [1 + 1j, 0, 2 + 3j, 0, -1])
