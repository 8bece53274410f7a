"""The headless core: without napari, Qt, magicgui, vispy, superqt the core, the CLI and the scripting API import
and run; the GUI entry points fail with one line that says to install ``cryolive[gui]``."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy", "superqt")

#: run first in the subprocess: a meta-path finder that makes the GUI packages look uninstalled
BLOCKER = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120)


def test_core_and_cli_import_and_run_without_gui_packages():
    out = _run(
        "import cryolive, cryolive.refinement.refine, cryolive.classification.classify, cryolive.class2d, "
        "cryolive.motion, cryolive.cli, cryolive.jobs.refine, cryolive.jobs.classify, cryolive.jobs.motion\n"
        "for n in cryolive.__all__: getattr(cryolive, n)\n"
        "from cryolive.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] in {BLOCKED!r}]\n"
        "print('OK')\n"
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    assert "usage: cryolive" in out.stdout


def test_gui_command_without_napari_is_one_clear_line():
    out = _run("from cryolive.cli import main\nsys.exit(main(['gui']))\n")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "install cryolive[gui]" in lines[0] and "napari" in lines[0], out.stderr


def test_plugin_without_napari_says_what_to_install():
    out = _run(
        "try:\n"
        "    import cryolive.plugin._refine_widget\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("GuiNotInstalled") and "install cryolive[gui]" in out.stdout
