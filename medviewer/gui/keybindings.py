"""Moved: this Qt-free module is :mod:`medviewer.workstation.keybindings` (re-exported here for old imports)."""

from __future__ import annotations

from medviewer.workstation.keybindings import (  # noqa: F401 - re-exported
    KEYS,
    MOUSE,
    PRESET_KEYS,
    Binding,
    Command,
    key_for,
    shortcut_table,
)

__all__ = ["Command", "Binding", "KEYS", "MOUSE", "PRESET_KEYS", "key_for", "shortcut_table"]
