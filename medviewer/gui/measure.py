"""Moved: this Qt-free module is :mod:`medviewer.workstation.measure` (re-exported here for old imports)."""

from __future__ import annotations

from medviewer.workstation.measure import (  # noqa: F401 - re-exported
    Measurement,
    RoiStats,
    Shape,
    describe,
    distance,
    roi_mask,
    roi_stats,
)

__all__ = ["Shape", "Measurement", "RoiStats", "distance", "roi_mask", "roi_stats", "describe"]
