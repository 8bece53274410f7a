"""Layering: the numerical core imports no Qt, napari or jobs; the GUI is optional; the backend switch behaves.

Layers (docs/architecture.md): the core packages never import ``cryolive.jobs`` (which runs the core and writes job
folders), and nothing but ``cryolive.plugin`` imports Qt, napari, magicgui, vispy, superqt or psygnal (the ``gui``
extra); ``cryolive.cli`` reaches napari only through ``cryolive.plugin`` for its ``gui`` command. The engines never
import one another: what they share (the pose search and score terms) lives in ``cryolive.alignment``, below them.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cryolive
from cryolive import backend

GUI_PACKAGES = ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "vispy", "magicgui", "superqt", "psygnal")
#: may import cryolive.jobs (the job layer itself, and what runs jobs)
JOB_USERS = ("cryolive.jobs", "cryolive.cli", "cryolive.plugin")
#: the engines (docs/architecture.md): each uses the layers below it, never another engine
ENGINES = ("cryolive.refinement", "cryolive.classification", "cryolive.class2d", "cryolive.motion",
           "cryolive.simulator")
SRC = Path(cryolive.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package (pkgutil walk), by dotted name."""
    found = {"cryolive": SRC / "__init__.py"}
    for info in pkgutil.walk_packages([str(SRC)], prefix="cryolive."):
        spec = info.module_finder.find_spec(info.name, None)  # type: ignore[union-attr]
        assert spec is not None and spec.origin, info.name
        found[info.name] = Path(spec.origin)
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at the top or inside functions (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _within(name: str, owners: tuple[str, ...]) -> bool:
    return any(name == o or name.startswith(o + ".") for o in owners)


MODULES = _modules()


def test_the_walk_finds_the_layers():
    for name in ("cryolive.cli", "cryolive.jobs.reconstruct", "cryolive.reconstruction.halves",
                 "cryolive.alignment.search", "cryolive.refinement.refine", "cryolive.motion.polish",
                 "cryolive.io.preflight", "cryolive.plugin"):
        assert name in MODULES


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not _within(n, JOB_USERS)))
def test_core_never_imports_jobs_or_gui(name):
    imported = _imports(name, MODULES[name])
    jobs = sorted(m for m in imported if _within(m, ("cryolive.jobs", "cryolive.plugin")))
    assert not jobs, f"{name} (core) imports the job/GUI layer: {jobs}"
    gui = sorted(m for m in imported if m.split(".")[0] in GUI_PACKAGES)
    assert not gui, f"{name} (core) imports GUI packages: {gui}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _within(n, ("cryolive.jobs", "cryolive.cli"))))
def test_jobs_and_cli_import_gui_only_through_the_plugin(name):
    imported = _imports(name, MODULES[name])
    gui = sorted(m for m in imported if m.split(".")[0] in GUI_PACKAGES)
    assert not gui, f"{name} imports GUI packages directly: {gui}"
    if name.startswith("cryolive.jobs"):
        assert not any(_within(m, ("cryolive.plugin",)) for m in imported), f"{name} imports cryolive.plugin"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _within(n, ENGINES)))
def test_engines_never_import_one_another(name):
    own = next(e for e in ENGINES if _within(name, (e,)))
    others = sorted(m for m in _imports(name, MODULES[name]) if _within(m, ENGINES) and not _within(m, (own,)))
    assert not others, f"{name} imports another engine: {others} (shared code belongs in a layer below)"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _within(n, ("cryolive.alignment",))))
def test_alignment_sits_below_the_engines(name):
    above = ENGINES + ("cryolive.reconstruction",) + JOB_USERS
    up = sorted(m for m in _imports(name, MODULES[name]) if _within(m, above))
    assert not up, f"{name} (alignment) imports a layer above it: {up}"


def test_core_imports_no_qt_or_napari():
    """At run time too: importing every module outside the plugin loads no GUI package."""
    core = sorted(n for n in MODULES if not _within(n, ("cryolive.plugin",)))
    code = (
        "import sys\n"
        f"for m in {core!r}: __import__(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {GUI_PACKAGES!r})\n"
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
