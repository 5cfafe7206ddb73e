"""Moved: the viewport's Qt-free geometry is :mod:`medviewer.workstation.viewstate` (re-exported here)."""

from __future__ import annotations

from medviewer.workstation.viewstate import ViewState, nice_scale_length_mm

__all__ = ["ViewState", "nice_scale_length_mm"]
