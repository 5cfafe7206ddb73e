"""The reading workstation (PySide6): the only part of MedViewer that imports Qt.

Entry point: :func:`medviewer.gui.app.run_app`. The widgets here are views: the application logic lives in
the Qt-free :mod:`medviewer.workstation` (reading session, AI controller, viewport model with its view
state and render cache, linking, the one AI overlay layer), whose psygnal events the widgets observe, and
in :mod:`medviewer.io`, :mod:`medviewer.imaging`, :mod:`medviewer.inference`. Qt-free modules kept here:
``measure`` (distance and ROI statistics), ``overlays`` (corner text, orientation labels) and
``keybindings``; ``series`` and ``viewstate`` only re-export :mod:`medviewer.workstation.frames` and
:mod:`medviewer.workstation.viewport` for old imports.

Importing this package refuses a Qt binding known to crash the workstation (:func:`check_qt_bindings`).
"""

from __future__ import annotations

import sys

from medviewer.errors import MedViewerError

__all__ = ["KNOWN_BAD_PYSIDE", "check_qt_bindings"]

#: (PySide6 version, the Python versions it breaks on, why). 6.12.0 returns ``None`` from void calls
#: without a new reference on CPython < 3.12 (where None is not immortal, PEP 683): a long session
#: drives None's reference count to zero and CPython aborts ("none_dealloc").
KNOWN_BAD_PYSIDE = (("6.12.0", (3, 12), "loses a reference to None per void call; long sessions abort"),)


def check_qt_bindings(pyside_version: str | None = None, python: tuple[int, int] | None = None) -> None:
    """Refuse a PySide6 release known to crash here, with one line saying what to install.

    Raises
    ------
    MedViewerError
        The installed PySide6 (``pyside_version``, default ``PySide6.__version__``) is listed in
        :data:`KNOWN_BAD_PYSIDE` for this Python (``python``, default ``sys.version_info[:2]``).
    """
    if pyside_version is None:
        import PySide6

        pyside_version = PySide6.__version__
    python = python or (sys.version_info[0], sys.version_info[1])
    for bad, below, why in KNOWN_BAD_PYSIDE:
        if pyside_version == bad and python < below:
            raise MedViewerError(
                f"PySide6 {bad} on Python {python[0]}.{python[1]} {why}; install another release "
                f"(pip install 'pyside6-essentials!={bad}') or use Python {below[0]}.{below[1]}+")


check_qt_bindings()
