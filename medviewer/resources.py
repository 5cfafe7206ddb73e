"""Files MedViewer ships with: built-in model packages, the application icon and the demo data.

They live in the repository's top-level ``resources/`` folder (``resources/models/<name>/``,
``resources/icons/medviewer.svg``, ``resources/demo/``). A wheel or ``pip install .`` carries that folder
as package data of ``medviewer`` (``setup.py`` maps the data-only package ``medviewer._resources`` onto
``resources/``) and the PyInstaller bundle puts it at the same place, so an installed copy finds it with
:mod:`importlib.resources`; a source checkout or an editable install reads ``resources/`` beside the
``medviewer`` package.

No Qt, no torch: the CLI, the GUI and the tests all use these functions.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["resources_root", "builtin_models_dir", "icon_path", "demo_dir"]

#: name of the data-only subpackage an installed ``medviewer`` carries ``resources/`` as
PACKAGED = "_resources"


def resources_root() -> Path:
    """The folder holding ``models/``, ``icons/`` and ``demo/``.

    ``importlib.resources.files("medviewer") / "_resources"`` when MedViewer is installed from a wheel or
    bundled by PyInstaller; otherwise the source tree's ``resources/`` (checkout, editable install). The
    folder may be missing (a broken install): callers check what they need and say so.
    """
    packaged = importlib.resources.files("medviewer") / PACKAGED
    if isinstance(packaged, Path) and packaged.is_dir():  # a zipped install has no real paths: not supported
        return packaged
    return Path(__file__).resolve().parent.parent / "resources"


def builtin_models_dir() -> Path:
    """Built-in model packages, ``<resources>/models`` (one ``<name>/model.{onnx,json}`` each)."""
    return resources_root() / "models"


def icon_path() -> Path:
    """The application icon, ``<resources>/icons/medviewer.svg`` (scalable; used for windows and launchers)."""
    return resources_root() / "icons" / "medviewer.svg"


def demo_dir() -> Path:
    """The demo data folder, ``<resources>/demo`` (what ``medviewer --demo`` opens)."""
    return resources_root() / "demo"
