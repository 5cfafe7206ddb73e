"""Work-around for a reference-count bug of the installed PySide6 on CPython < 3.12.

With PySide6/shiboken6 6.12 on CPython 3.11, every Qt method returning ``void`` hands ``None`` back
without a new reference, so each call lowers ``None``'s reference count by one (measured: -1 per
``QWidget.update()``, about -80 per viewport repaint). After enough calls the count reaches zero and
CPython aborts with "Fatal Python error: none_dealloc: deallocating None". CPython 3.12 made ``None``
immortal (PEP 683), which is what the bindings assume; on older interpreters we give ``None`` the same
property by raising its count far beyond reach, but only when the bug is detected.

``pyproject.toml`` excludes PySide6-Essentials 6.12.0 (6.11.3 was measured not to lose references), so a
normal install never needs this; the guard protects an environment that installed 6.12.0 regardless.
"""

from __future__ import annotations

import sys

__all__ = ["guard_none_refcount"]

_APPLIED = False


def guard_none_refcount() -> bool:
    """Detect the bug with a cheap void Qt call; if present, make ``None`` effectively immortal.

    Returns True when the guard was applied (once per process).
    """
    global _APPLIED
    if _APPLIED:
        return True
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(16):
        probe.setObjectName("probe")
    lost = before - sys.getrefcount(None)
    if lost < 8:  # the bindings keep None's count right: nothing to do
        return False
    import ctypes

    ctypes.c_ssize_t.from_address(id(None)).value += 1 << 40  # ob_refcnt is the first field
    _APPLIED = True
    return True
