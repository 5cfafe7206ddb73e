"""Moved: this Qt-free module is :mod:`medviewer.workstation.text_overlays` (re-exported here for old imports)."""

from __future__ import annotations

from medviewer.workstation.text_overlays import (  # noqa: F401 - re-exported
    corner_text,
    format_date,
    format_person_name,
    orientation_labels,
)

__all__ = ["corner_text", "orientation_labels", "format_person_name", "format_date"]
