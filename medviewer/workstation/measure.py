"""Qt-free measurements: distance in mm and rectangle/ellipse ROI statistics.

Values are the modality values of the image (Hounsfield units on CT, after the modality LUT,
DICOM PS3.3 C.11.1), so a ROI mean on CT reads in HU. Points are continuous image coordinates
``(x, y)`` with the image spanning ``[0, W] x [0, H]`` (see :mod:`medviewer.workstation.viewport`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = ["Shape", "Measurement", "RoiStats", "distance", "roi_mask", "roi_stats", "describe"]


class Shape(str, Enum):
    """Measurement kinds."""

    DISTANCE = "distance"
    RECT = "rect"
    ELLIPSE = "ellipse"


@dataclass
class Measurement:
    """A measurement drawn on one image: its kind and two image points (ends / bounding corners)."""

    shape: Shape
    p0: tuple[float, float]
    p1: tuple[float, float]


@dataclass(frozen=True)
class RoiStats:
    """Statistics of the pixels whose centres lie inside a ROI.

    ``mean``, ``sd`` (sample SD, ddof=1), ``min``, ``max`` in modality units; ``n`` pixels;
    ``area_px`` the geometric area in pixels; ``area_mm2`` in mm^2 when the spacing is known.
    """

    mean: float
    sd: float
    min: float
    max: float
    n: int
    area_px: float
    area_mm2: float | None


def distance(p0: tuple[float, float], p1: tuple[float, float],
             spacing: tuple[float, float] | None) -> tuple[float, str]:
    """Length of the segment ``p0``-``p1``: ``(value, unit)``, unit ``"mm"`` with pixel spacing
    ``(row_mm, col_mm)``, else ``"px"``."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    if spacing is None:
        return math.hypot(dx, dy), "px"
    return math.hypot(dx * spacing[1], dy * spacing[0]), "mm"


def roi_mask(shape: Shape, p0: tuple[float, float], p1: tuple[float, float],
             image_shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels of a rectangle/ellipse ROI: ``(bounding-box slices, bool mask of that box)``."""
    h, w = image_shape
    x0, x1 = sorted((p0[0], p1[0]))
    y0, y1 = sorted((p0[1], p1[1]))
    c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)), w)
    r0, r1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)), h)
    if c1 <= c0 or r1 <= r0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    cx, cy = xx + 0.5, yy + 0.5
    if shape == Shape.ELLIPSE:
        a, b = max((x1 - x0) / 2, 1e-9), max((y1 - y0) / 2, 1e-9)
        mask = ((cx - (x0 + x1) / 2) / a) ** 2 + ((cy - (y0 + y1) / 2) / b) ** 2 <= 1.0
    else:
        mask = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
    return (slice(r0, r1), slice(c0, c1)), mask


def roi_stats(values: np.ndarray, shape: Shape, p0: tuple[float, float], p1: tuple[float, float],
              spacing: tuple[float, float] | None) -> RoiStats | None:
    """Statistics of ``values`` (float (H, W), modality units) inside a rectangle or ellipse.

    Returns None when no pixel centre lies inside the ROI.
    """
    if values.ndim == 3:  # colour: statistics of the luminance
        values = values[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    sl, mask = roi_mask(shape, p0, p1, values.shape[:2])
    if not mask.any():
        return None
    v = values[sl][mask].astype(np.float64)
    w, h = abs(p1[0] - p0[0]), abs(p1[1] - p0[1])
    area_px = w * h * (math.pi / 4 if shape == Shape.ELLIPSE else 1.0)
    area_mm2 = area_px * spacing[0] * spacing[1] if spacing is not None else None
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return RoiStats(float(v.mean()), sd, float(v.min()), float(v.max()), int(v.size), area_px, area_mm2)


def describe(m: Measurement, values: np.ndarray | None, spacing: tuple[float, float] | None,
             unit: str = "") -> list[str]:
    """Text lines shown next to a measurement (e.g. ``["42.3 mm"]`` or mean/SD/min/max/area)."""
    if m.shape == Shape.DISTANCE:
        d, u = distance(m.p0, m.p1, spacing)
        return [f"{d:.1f} {u}"]
    if values is None:
        return []
    s = roi_stats(values, m.shape, m.p0, m.p1, spacing)
    if s is None:
        return []
    u = f" {unit}" if unit else ""
    area = f"{s.area_mm2:.1f} mm²" if s.area_mm2 is not None else f"{s.area_px:.0f} px²"
    return [f"Mean {s.mean:.1f}{u}  SD {s.sd:.1f}", f"Min {s.min:.0f}  Max {s.max:.0f}", f"Area {area}"]
