"""The scripting API: ``import cryolive`` is lazy and Qt-free, every name resolves to the function the CLI runs,
and the example in docs/scripting.md runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import cryolive

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scripting.md"

EXPECTED = {
    "read_particles": "cryolive.io.read_particles",
    "read_map": "cryolive.io.mrc.read_map",
    "write_map": "cryolive.io.mrc.write_map",
    "write_star": "cryolive.io.star.write_star",
    "simulate": "cryolive.simulator.dataset.simulate_dataset",
    "reconstruct": "cryolive.reconstruction.halves.reconstruct",
    "fsc": "cryolive.resolution.fsc.gold_standard_fsc",
    "refine": "cryolive.refinement.refine.refine",
    "classify": "cryolive.classification.classify.classify",
    "classify2d": "cryolive.class2d.classify2d.classify2d",
    "correct_motion": "cryolive.motion.polish.motion",
    "RefineParams": "cryolive.refinement.refine.RefineParams",
    "ClassifyParams": "cryolive.classification.classify.ClassifyParams",
    "Class2DParams": "cryolive.class2d.classify2d.Class2DParams",
    "MotionParams": "cryolive.motion.polish.MotionParams",
    "SimulationParams": "cryolive.simulator.dataset.SimulationParams",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_names_resolve_to_the_core_functions(name):
    obj = getattr(cryolive, name)
    assert f"{obj.__module__}.{obj.__qualname__}" == EXPECTED[name]
    assert name in cryolive.__all__ and name in dir(cryolive)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        cryolive.nonsense  # noqa: B018


def test_subpackages_keep_their_names():
    import cryolive.class2d
    import cryolive.motion

    assert cryolive.classify2d is cryolive.class2d.classify2d
    assert cryolive.correct_motion is cryolive.motion.motion


def test_import_cryolive_is_lazy_and_qt_free():
    code = ("import sys, cryolive\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'scipy', 'pandas', 'qtpy', 'PyQt5', "
            "'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'vispy', 'superqt') "
            "or m.startswith('cryolive.')]\n"
            "print(heavy)\n"
            "cryolive.refine\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt6', 'napari', 'magicgui')])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "[]"], out.stdout


@pytest.mark.slow
def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    """The example of docs/scripting.md (box 32, 400 particles, 2 iterations), exactly as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(DOCS), "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out
    assert "known poses:" in printed and "iteration 2 (" in printed and "refined:" in printed
    out = tmp_path / "scripting_example"
    for name in ("known_poses.mrc", "refined.mrc", "refined.star"):
        assert (out / name).is_file()
    known = float(re.search(r"known poses: ([\d.]+) Å", printed).group(1))
    assert known < 10.0  # 400 particles at SNR 0.5 with their true poses


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    """The README's scripting example on the bundled sample, exactly as written: the refined map is written and its
    unmasked GSFSC is close to the known-pose reconstruction's (not better by much: that would be reference bias)."""
    readme = DOCS.parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(readme), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    known, refined = (float(x) for x in re.search(r"([\d.]+) Å from the known poses, ([\d.]+) Å refined",
                                                  printed).groups())
    assert (tmp_path / "refined.mrc").is_file()
    assert 0.9 * known <= refined <= 1.3 * known, printed
