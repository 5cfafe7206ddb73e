"""One viewport's geometry and grey-scale state: image <-> screen mapping, zoom, pan, rotation, flips,
window and frame (Qt-free; owned by :class:`medviewer.workstation.viewport.ViewportModel`).

Coordinates: image coordinates are continuous ``(x, y)`` with the image spanning ``[0, W] x [0, H]``
(pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``); screen coordinates are view pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ViewState", "nice_scale_length_mm"]


@dataclass
class ViewState:
    """Geometry and grey-scale state of one viewport.

    Attributes
    ----------
    image_w, image_h
        Image size in pixels (columns, rows).
    aspect
        Physical pixel aspect ``column spacing / row spacing`` (1.0 when unknown), so that
        anisotropic pixels are shown with their true proportions.
    zoom
        Screen pixels per image pixel along x.
    center
        Image point ``(x, y)`` shown at the centre of the viewport.
    rotation
        Clockwise rotation in degrees, one of 0, 90, 180, 270.
    flip_h, flip_v
        Mirror the image left-right / up-down (applied before the rotation).
    center_w, width_w
        VOI window centre and width in modality units (HU on CT); None until an image is shown.
    invert
        Show the grey scale inverted (on top of what the photometric interpretation asks for).
    preset
        Name of the window preset last applied (``""`` for the file's window or a dragged one).
    frame
        Index of the shown image within the series (0-based).
    """

    image_w: int = 1
    image_h: int = 1
    aspect: float = 1.0
    zoom: float = 1.0
    center: tuple[float, float] = (0.5, 0.5)
    rotation: int = 0
    flip_h: bool = False
    flip_v: bool = False
    center_w: float | None = None
    width_w: float | None = None
    invert: bool = False
    preset: str = ""
    frame: int = 0
    n_frames: int = 1
    fitted: bool = field(default=True)

    # -- geometry -------------------------------------------------------------------------------
    def set_image_size(self, w: int, h: int, aspect: float = 1.0) -> bool:
        """New image geometry; recentres and returns True when the size or aspect changed."""
        if (w, h) != (self.image_w, self.image_h) or aspect != self.aspect:
            self.image_w, self.image_h, self.aspect = int(w), int(h), float(aspect)
            self.center = (w / 2.0, h / 2.0)
            self.fitted = True
            return True
        return False

    def matrix(self, view_w: float, view_h: float) -> np.ndarray:
        """3x3 affine matrix mapping homogeneous image ``(x, y, 1)`` to screen coordinates."""
        cx, cy = self.center
        t1 = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], float)
        sx = self.zoom * (-1.0 if self.flip_h else 1.0)
        sy = self.zoom / self.aspect * (-1.0 if self.flip_v else 1.0)
        s = np.diag([sx, sy, 1.0])
        a = math.radians(self.rotation)
        c, si = round(math.cos(a), 12), round(math.sin(a), 12)
        r = np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]], float)
        t2 = np.array([[1, 0, view_w / 2.0], [0, 1, view_h / 2.0], [0, 0, 1]], float)
        return t2 @ r @ s @ t1

    def to_screen(self, x: float, y: float, view_w: float, view_h: float) -> tuple[float, float]:
        """Image point -> screen point."""
        p = self.matrix(view_w, view_h) @ np.array([x, y, 1.0])
        return float(p[0]), float(p[1])

    def to_image(self, sx: float, sy: float, view_w: float, view_h: float) -> tuple[float, float]:
        """Screen point -> image point (continuous; ``floor`` gives the pixel's column/row)."""
        p = np.linalg.solve(self.matrix(view_w, view_h), np.array([sx, sy, 1.0]))
        return float(p[0]), float(p[1])

    def rotated_size(self) -> tuple[float, float]:
        """Image extent on screen at zoom 1 (width, height), after aspect and rotation."""
        w, h = float(self.image_w), self.image_h / self.aspect
        return (h, w) if self.rotation in (90, 270) else (w, h)

    def fit(self, view_w: float, view_h: float, margin: float = 0.98) -> None:
        """Zoom so the whole image fits the viewport, centred."""
        rw, rh = self.rotated_size()
        self.zoom = max(1e-3, margin * min(view_w / max(rw, 1e-6), view_h / max(rh, 1e-6)))
        self.center = (self.image_w / 2.0, self.image_h / 2.0)
        self.fitted = True

    def actual_size(self) -> None:
        """1 image pixel = 1 screen pixel (1:1), keeping the centre."""
        self.zoom = 1.0
        self.fitted = False

    def zoom_by(self, factor: float, anchor: tuple[float, float] | None = None,
                view: tuple[float, float] | None = None) -> None:
        """Multiply the zoom by ``factor`` (clamped to 1/64..64), keeping the image point under the
        screen point ``anchor`` fixed when given (``view`` = viewport size)."""
        new = float(np.clip(self.zoom * factor, 1 / 64, 64))
        if anchor is not None and view is not None:
            ix, iy = self.to_image(anchor[0], anchor[1], *view)
            self.zoom = new
            sx, sy = self.to_screen(ix, iy, *view)
            self.pan_by(anchor[0] - sx, anchor[1] - sy, *view)
        else:
            self.zoom = new
        self.fitted = False

    def pan_by(self, dx: float, dy: float, view_w: float, view_h: float) -> None:
        """Move the image by ``(dx, dy)`` screen pixels."""
        x0, y0 = self.to_image(view_w / 2.0, view_h / 2.0, view_w, view_h)
        x1, y1 = self.to_image(view_w / 2.0 - dx, view_h / 2.0 - dy, view_w, view_h)
        self.center = (self.center[0] + (x1 - x0), self.center[1] + (y1 - y0))
        self.fitted = False

    def centre_on(self, bbox: tuple[float, float, float, float], view_w: float, view_h: float,
                  fill: float = 0.6) -> None:
        """Centre on an image box ``(x0, y0, x1, y1)`` and zoom so it fills ``fill`` of the viewport."""
        x0, y0, x1, y1 = bbox
        self.center = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        bw, bh = max(x1 - x0, 8.0), max((y1 - y0) / self.aspect, 8.0)
        if self.rotation in (90, 270):
            bw, bh = bh, bw
        self.zoom = float(np.clip(fill * min(view_w / bw, view_h / bh), 1 / 64, 64))
        self.fitted = False

    def rotate(self, degrees: int) -> None:
        """Rotate clockwise by a multiple of 90 degrees."""
        self.rotation = (self.rotation + int(degrees)) % 360

    def screen_mm_per_pixel(self, spacing: tuple[float, float] | None) -> float | None:
        """Millimetres per screen pixel along the screen's x axis (None without pixel spacing)."""
        if spacing is None:
            return None
        row_mm, col_mm = spacing
        along = row_mm if self.rotation in (90, 270) else col_mm
        per_image_px = self.zoom if self.rotation in (0, 180) else self.zoom / self.aspect
        return along / per_image_px

    # -- grey scale -------------------------------------------------------------------------------
    def drag_window(self, dx: float, dy: float, sensitivity: float) -> None:
        """Left-drag window/level: right widens, left narrows; down raises the centre (conventional).

        ``sensitivity`` is modality units per screen pixel (e.g. window width / 500).
        """
        if self.center_w is None or self.width_w is None:
            return
        self.width_w = max(1.0, self.width_w + dx * sensitivity)
        self.center_w = self.center_w + dy * sensitivity

    def step_frame(self, delta: int) -> bool:
        """Move ``delta`` images (clamped); True if the frame changed."""
        new = int(np.clip(self.frame + delta, 0, max(self.n_frames - 1, 0)))
        changed = new != self.frame
        self.frame = new
        return changed


def nice_scale_length_mm(mm_per_screen_px: float, target_px: float) -> float:
    """A round length (1, 2, 5 x 10^k mm) whose on-screen size is close to ``target_px`` pixels."""
    want = mm_per_screen_px * target_px
    if want <= 0 or not math.isfinite(want):
        return 0.0
    k = 10 ** math.floor(math.log10(want))
    for m in (5, 2, 1):
        if m * k <= want:
            return float(m * k)
    return float(k)
