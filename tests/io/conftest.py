"""Fixtures for the file-format tests: the interop samples (skipped when absent) and input-file guards."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parents[3] / "shared" / "data" / "interop"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interop_hashes() -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(INTEROP.iterdir()) if p.is_file()}


@pytest.fixture(scope="session")
def interop() -> Path:
    """The folder of real sample files (``/work/shared/data/interop``)."""
    if not INTEROP.is_dir():
        pytest.skip(f"interop sample files not found at {INTEROP}")
    return INTEROP


@pytest.fixture(scope="session")
def interop_hashes() -> dict[str, str]:
    return _interop_hashes() if INTEROP.is_dir() else {}


@pytest.fixture(autouse=True)
def interop_unchanged(interop_hashes: dict[str, str]) -> Iterator[None]:
    """Every test leaves the sample files byte-identical."""
    yield
    if interop_hashes:
        assert _interop_hashes() == interop_hashes, "a test modified the interop sample files"


@pytest.fixture
def guard() -> Iterator[Callable[..., None]]:
    """``guard(path, ...)`` records files whose bytes must be unchanged when the test ends."""
    recorded: dict[Path, str] = {}

    def add(*paths: Path) -> None:
        for p in paths:
            recorded[Path(p)] = sha256(Path(p))

    yield add
    for p, digest in recorded.items():
        assert sha256(p) == digest, f"{p} was modified"


@pytest.fixture
def relion31_copy(interop: Path, tmp_path: Path) -> Path:
    """relion31.star + relion31.mrcs copied to ``tmp_path/in`` (for tests that make modified variants)."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("relion31.star", "relion31.mrcs"):
        shutil.copy(interop / name, d / name)
    return d / "relion31.star"


def _quiet(fn: Callable, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture
def quiet() -> Callable:
    """``quiet(fn, *args, **kw)`` calls ``fn`` with warnings silenced (expected warnings are tested elsewhere)."""
    return _quiet
