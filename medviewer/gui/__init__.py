"""The reading workstation (PySide6): the only part of MedViewer that imports Qt.

Entry point: :func:`medviewer.gui.app.run_app`. Widgets stay thin and call the Qt-free APIs of
:mod:`medviewer.io`, :mod:`medviewer.imaging`, :mod:`medviewer.inference`; the viewport's geometry,
measurements, overlays and key bindings are Qt-free modules here too (``viewstate``, ``measure``,
``overlays``, ``keybindings``).
"""

from __future__ import annotations

from medviewer.gui._pyside_fix import guard_none_refcount

__all__ = ["guard_none_refcount"]

guard_none_refcount()
