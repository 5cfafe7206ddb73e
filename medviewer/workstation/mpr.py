"""Qt-free model of the MPR layout: three planes of one volume, a linked crosshair, shared window and slab.

The crosshair is a point in patient coordinates (mm, LPS): each plane shows the plane through it (axial at its
z, coronal at its y, sagittal at its x), and the other two planes appear on it as reference lines through
the crosshair. Clicking or dragging on one plane moves the point within that plane, so the other two follow;
scrolling one plane moves the point along that plane's normal. Window/level, invert and the slab
(thickness in mm, MIP/MinIP/mean) are shared by the three planes. The Qt view
(:mod:`medviewer.gui.mpr_view`) observes :attr:`MprModel.changed` and repaints; the same model drives tests
without a window.

Display coordinates are those of :meth:`medviewer.imaging.mpr.Volume.render`'s image: ``(x, y)`` continuous,
the image spanning ``[0, width] x [0, height]`` square pixels of ``plane.display_mm`` each.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
from psygnal import Signal

from medviewer.imaging.mpr import PLANES, Plane, Projection, Volume
from medviewer.imaging.window import Window

__all__ = ["MprModel", "PLANE_COLOURS"]

#: colour of each plane's frame and of its reference line on the others (3D Slicer's convention), RGB
PLANE_COLOURS = {"axial": (230, 70, 70), "coronal": (90, 200, 90), "sagittal": (235, 200, 60)}
_CACHE = 6  # rendered images kept (three planes, a few windows while dragging)


class MprModel:
    """State of the three MPR planes of a :class:`~medviewer.imaging.mpr.Volume`.

    Parameters
    ----------
    volume
        The volume (shared, never copied).

    Attributes
    ----------
    crosshair
        ``(3,)`` float64 patient position in mm (LPS); starts at the volume's centre.
    window
        The shared VOI window (modality units, HU on CT); starts at the volume's default window.
    slab_mm, projection
        Slab thickness in mm (0: single planes) and how it is projected.
    invert
        Show the grey scale inverted.
    changed
        psygnal ``Signal(str)``: ``"crosshair"``, ``"window"`` or ``"slab"`` after a change.
    """

    changed = Signal(str)

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.planes: dict[str, Plane] = {name: volume.plane(name) for name in PLANES}
        self.crosshair = volume.to_patient(np.floor((np.asarray(volume.shape) - 1) / 2))
        self.window: Window | None = volume.default_window
        self.slab_mm = 0.0
        self.projection = Projection.MIP
        self.invert = False
        self._images: OrderedDict[tuple, np.ndarray] = OrderedDict()

    # ------------------------------------------------------------------ where the planes are
    def voxel(self) -> np.ndarray:
        """The crosshair as a continuous volume index ``(k, i, j)``."""
        return self.volume.to_voxel(self.crosshair)

    def index(self, name: str) -> int:
        """Index of the plane `name` shown: the one through the crosshair."""
        plane = self.planes[name]
        return int(min(plane.count - 1, max(0, round(float(self.voxel()[plane.axis])))))

    def crosshair_display(self, name: str) -> tuple[float, float]:
        """The crosshair in plane `name`'s display pixels ``(x, y)``: where the other planes' reference lines
        cross (the vertical line is the plane whose axis runs left-right here, the horizontal one the other).
        Snapped to the planes shown: each line is where the plane the other view shows lies."""
        v = np.empty(3)
        for plane in self.planes.values():
            v[plane.axis] = self.index(plane.name)
        return self.planes[name].to_display(v)

    def reference_lines(self, name: str) -> list[tuple[str, str, float]]:
        """The other planes as lines on plane `name`: ``(other plane, "v" or "h", x or y in display pixels)``."""
        here = self.planes[name]
        x, y = self.crosshair_display(name)
        out = []
        for other in PLANES:
            if other == name:
                continue
            axis = self.planes[other].axis
            out.append((other, "v", x) if axis == here.h_axis else (other, "h", y))
        return out

    def position_mm(self, name: str) -> float:
        """Patient coordinate (mm) of plane `name` along its normal (z for axial, y coronal, x sagittal)."""
        return self.volume.position_of(self.planes[name], self.index(name))

    def labels(self, name: str) -> dict[str, str]:
        """Orientation letters at the edges of plane `name` (``left``, ``right``, ``top``, ``bottom``)."""
        return dict(self.planes[name].labels)

    # ------------------------------------------------------------------ moving
    def set_crosshair(self, point: Any) -> None:
        """Move the crosshair to a patient position (mm), clipped into the volume."""
        p = self.volume.to_patient(self.volume.clamp_voxel(self.volume.to_voxel(point)))
        if not np.allclose(p, self.crosshair):
            self.crosshair = p
            self.changed.emit("crosshair")

    def click(self, name: str, x: float, y: float) -> None:
        """A click or drag at display point ``(x, y)`` of plane `name`: the crosshair moves there within the
        plane (its position along the plane's normal is kept), the other two planes follow."""
        v = self.planes[name].to_voxel(x, y, float(self.voxel()[self.planes[name].axis]))
        self.set_crosshair(self.volume.to_patient(v))

    def step(self, name: str, delta: int) -> None:
        """Scroll plane `name` by `delta` planes (moves the crosshair along its normal)."""
        plane = self.planes[name]
        v = self.voxel()
        v[plane.axis] = min(plane.count - 1, max(0, self.index(name) + delta))
        self.set_crosshair(self.volume.to_patient(v))

    def set_window(self, center: float, width: float) -> None:
        """Set the shared window (modality units)."""
        self.window = Window(center, max(1.0, width), self.volume.pipeline.voi_function)
        self.changed.emit("window")

    def drag_window(self, dx: float, dy: float, sensitivity: float | None = None) -> None:
        """Window/level drag: right = wider, down = higher centre, scaled to the current width."""
        w = self.window or Window(0, 400)
        s = sensitivity if sensitivity is not None else max(w.width, 10.0) / 256.0
        self.set_window(w.center + dy * s, max(1.0, w.width + dx * s))

    def set_slab(self, slab_mm: float, projection: str | Projection | None = None) -> None:
        """Set the shared slab thickness (mm; 0 for single planes) and projection (mip, minip, mean)."""
        if not math.isfinite(slab_mm) or slab_mm < 0:
            raise ValueError(f"slab thickness {slab_mm} mm: must be 0 or more")
        self.slab_mm = float(slab_mm)
        if projection is not None:
            self.projection = Projection(str(getattr(projection, "value", projection)).lower())
        self.changed.emit("slab")

    def set_invert(self, on: bool) -> None:
        """Show the shared grey scale inverted or not."""
        self.invert = bool(on)
        self.changed.emit("window")

    # ------------------------------------------------------------------ what is shown
    def image(self, name: str) -> np.ndarray:
        """uint8 ``(height, width)`` display image of plane `name` at the crosshair: exactly
        :meth:`Volume.render` (what ``medviewer render --plane`` writes), cached by everything it depends on."""
        plane = self.planes[name]
        key = (name, self.index(name), self.window, self.slab_mm, self.projection, self.invert)
        img = self._images.get(key)
        if img is None:
            img = self.volume.render(plane, key[1], self.window, self.slab_mm, self.projection, self.invert)
            self._images[key] = img
            while len(self._images) > _CACHE:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(key)
        return img

    def value_at_crosshair(self) -> float:
        """Modality value (HU on CT) of the voxel at the crosshair."""
        return self.volume.hu_at(self.voxel())

    def distance_mm(self, name: str, p0: tuple[float, float], p1: tuple[float, float]) -> float:
        """Distance in mm between two display points of plane `name` (square pixels of ``display_mm``)."""
        return float(math.hypot(p1[0] - p0[0], p1[1] - p0[1]) * self.planes[name].display_mm)

    def caption(self, name: str) -> str:
        """One line for the plane's corner: name, index, position in mm and the slab."""
        plane = self.planes[name]
        axis = "xyz"[{"sagittal": 0, "coronal": 1, "axial": 2}[name]]
        text = f"{name.capitalize()} {self.index(name) + 1}/{plane.count}  {axis} = {self.position_mm(name):.1f} mm"
        first, stop = self.volume.slab_range(plane, self.index(name), self.slab_mm)
        if stop - first > 1:
            text += f"  {self.projection.value.upper()} {(stop - first) * plane.spacing:.1f} mm"
        return text
