"""Flagged regions: connected areas of a class activation map above a fraction of its peak.

A region is what a reader can check on the image: its outline, its bounding box in pixels and, when
the pixel spacing is known (DICOM PS3.3 C.7.6.2.1.1 Pixel Spacing, or Imager Pixel Spacing), in mm, its
area, and how strongly the network's evidence for the label peaks and averages there.

Example
-------
>>> import numpy as np
>>> cam = np.zeros((100, 200), np.float32); cam[10:30, 50:90] = 1.0
>>> [r.bbox for r in find_regions(cam, "PNEUMONIA", pixel_spacing=(0.5, 0.25))]
[(50, 10, 90, 30)]
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Region", "find_regions", "DEFAULT_FRACTION", "DEFAULT_MIN_AREA_FRACTION"]

#: a region is where the CAM is at least this fraction of its peak
DEFAULT_FRACTION = 0.5
#: regions smaller than this fraction of the image area are dropped (when min_area_px is not given)
DEFAULT_MIN_AREA_FRACTION = 0.002


@dataclass(frozen=True)
class Region:
    """One flagged region on the original image grid.

    Attributes
    ----------
    label
        The label whose CAM produced it.
    bbox
        ``(x0, y0, x1, y1)`` pixels, columns ``x0 <= x < x1`` and rows ``y0 <= y < y1`` (end exclusive).
    bbox_mm
        ``(x0, y0, x1, y1)`` in mm from the top-left corner of the image (``x * column spacing``,
        ``y * row spacing``), or None when the pixel spacing is unknown.
    area_px
        Number of pixels at or above the threshold in the region.
    area_mm2
        ``area_px * row spacing * column spacing`` (mm²), or None.
    peak, mean
        Maximum and mean of the normalised CAM (0..1, 1 = the label's strongest evidence anywhere in
        the image) over the region's pixels.
    contour
        int32 ``(M, 2)`` outline as ``(x, y)`` pixel coordinates (OpenCV ``findContours`` order).
    """

    label: str
    bbox: tuple[int, int, int, int]
    bbox_mm: tuple[float, float, float, float] | None
    area_px: int
    area_mm2: float | None
    peak: float
    mean: float
    contour: np.ndarray

    @property
    def size_mm(self) -> tuple[float, float] | None:
        """``(width, height)`` of the bounding box in mm, or None."""
        if self.bbox_mm is None:
            return None
        return self.bbox_mm[2] - self.bbox_mm[0], self.bbox_mm[3] - self.bbox_mm[1]

    def to_dict(self) -> dict:
        """JSON-ready summary (no contour)."""
        return {
            "label": self.label,
            "bbox": list(self.bbox),
            "bbox_mm": None if self.bbox_mm is None else [round(v, 3) for v in self.bbox_mm],
            "peak": round(self.peak, 4),
            "mean": round(self.mean, 4),
            "area_px": self.area_px,
            "area_mm2": None if self.area_mm2 is None else round(self.area_mm2, 3),
        }


def find_regions(cam01: np.ndarray, label: str, pixel_spacing: tuple[float, float] | None = None, *,
                 fraction: float = DEFAULT_FRACTION, min_area_px: int | None = None,
                 max_regions: int = 5) -> list[Region]:
    """Regions where ``cam01 >= fraction * max(cam01)``, largest evidence first.

    Parameters
    ----------
    cam01
        float ``(H, W)`` normalised CAM (0..1) on the original image grid.
    label
        Stored in each region.
    pixel_spacing
        ``(row, column)`` spacing in mm, or None.
    fraction
        Threshold as a fraction of the CAM's peak, in (0, 1].
    min_area_px
        Smallest region kept, in pixels; default :data:`DEFAULT_MIN_AREA_FRACTION` of the image, at
        least 1.
    max_regions
        Keep at most this many, ordered by peak then area.

    Returns
    -------
    list[Region]
        Empty when the CAM has no positive evidence.

    Raises
    ------
    ValueError
        ``fraction`` outside (0, 1] or a CAM that is not 2-D.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    cam = np.asarray(cam01, np.float32)
    if cam.ndim != 2:
        raise ValueError(f"find_regions expects an (H, W) map, got shape {cam.shape}")
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0.0:
        return []
    if min_area_px is None:
        min_area_px = max(1, int(round(DEFAULT_MIN_AREA_FRACTION * cam.size)))
    mask = (cam >= np.float32(fraction * peak)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    rs, cs = (float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing else (None, None)
    found: list[Region] = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area_px:
            continue
        sub_labels = labels[y : y + h, x : x + w]
        comp = sub_labels == i
        vals = cam[y : y + h, x : x + w][comp]
        contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.int32) + np.array([x, y], np.int32)
        bbox = (x, y, x + w, y + h)
        found.append(Region(
            label=label,
            bbox=bbox,
            bbox_mm=None if rs is None or cs is None else (x * cs, y * rs, (x + w) * cs, (y + h) * rs),
            area_px=area,
            area_mm2=None if rs is None or cs is None else area * rs * cs,
            peak=float(vals.max()),
            mean=float(vals.mean()),
            contour=outline,
        ))
    found.sort(key=lambda r: (-r.peak, -r.area_px))
    return found[:max_regions]
