"""napari integration (the only part of cryolive that may import napari or Qt).

It needs the ``gui`` extra (``pip install 'cryolive[gui]'``: napari, magicgui, qtpy, superqt, vispy, psygnal) and a Qt
binding (``cryolive[all]`` adds PyQt6). Importing this package without them raises :class:`GuiNotInstalled`, one
line that says what to install; the ``cryolive gui`` command gets napari from here (``cryolive.plugin.napari``) so
that it fails with that line too.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from cryolive.io.errors import InputError

#: what the docks need, by import name (the ``gui`` extra of pyproject.toml)
GUI_MODULES = ("napari", "magicgui", "qtpy", "superqt", "vispy", "psygnal")
QT_BINDINGS = ("PyQt6", "PyQt5", "PySide6", "PySide2")


class GuiNotInstalled(ImportError, InputError):
    """The GUI packages are missing (an ImportError, and an InputError so the CLI prints it as one line)."""


def missing_gui_modules() -> list[str]:
    """The GUI packages that cannot be imported here (``"a Qt binding"`` when none of PyQt6/5, PySide6/2 is)."""
    missing = [m for m in GUI_MODULES if not _installed(m)]
    if not any(_installed(b) for b in QT_BINDINGS):
        missing.append("a Qt binding (PyQt6, PyQt5, PySide6 or PySide2)")
    return missing


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a broken half-imported module
        return False


_missing = missing_gui_modules()
if _missing:
    raise GuiNotInstalled(f"the cryolive GUI needs {', '.join(_missing)}: install cryolive[gui] "
                          "(pip install 'cryolive[all]' also installs PyQt6)")


def __getattr__(name: str) -> Any:
    if name == "napari":
        import napari

        return napari
    raise AttributeError(f"module 'cryolive.plugin' has no attribute {name!r}")
