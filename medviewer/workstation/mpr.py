"""Qt-free model of the MPR layout: three planes of one volume (and the acquired plane of the 2x2 layout), a
linked crosshair, shared window and slab.

The crosshair is a point in patient coordinates (mm, LPS): each plane shows the plane through it (axial at its
z, coronal at its y, sagittal at its x), and the other two planes appear on it as reference lines through
the crosshair. The acquired plane (:data:`~medviewer.imaging.mpr.ACQUIRED`: the slices as stored, shown in
the 2x2 layout) is a fourth plane through the same point; it coincides with the reformat whose normal is
closest to the slice normal, so it gets no reference line of its own.
Clicking or dragging on one plane moves the point within that plane, so the other two follow;
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psygnal import Signal

from medviewer.imaging.mpr import ACQUIRED, PLANES, Plane, Projection, Volume
from medviewer.imaging.window import Window

__all__ = ["MprModel", "MprMeasurement", "PLANE_COLOURS"]

#: colour of each plane's frame and of its reference line on the others (3D Slicer's convention), RGB
PLANE_COLOURS = {"axial": (230, 70, 70), "coronal": (90, 200, 90), "sagittal": (235, 200, 60),
                 ACQUIRED: (190, 190, 190)}
_CACHE = 6  # rendered images kept (three planes, a few windows while dragging)


@dataclass
class MprMeasurement:
    """A measurement drawn on a reformatted plane, kept in patient coordinates (mm, LPS).

    Attributes
    ----------
    kind
        ``"distance"`` (a line from `p0` to `p1`) or ``"ellipse"`` (the ellipse inscribed in the in-plane
        rectangle with corners `p0` and `p1`).
    plane, index
        The plane it was drawn on and its index (it is shown there only).
    p0, p1
        ``(3,)`` float64 patient positions of the two points, in mm.
    stats
        For an ellipse: ``mean``, ``sd`` (sample SD), ``min``, ``max`` of the modality values (HU on CT) of
        the voxels shown whose centres lie inside it (a slab's projected values when a slab is shown), ``n``
        voxels and ``area_mm2`` (the ellipse's geometric area), as :func:`medviewer.gui.measure.roi_stats`
        computes them on acquired images; empty for a distance.
    """

    kind: str
    plane: str
    index: int
    p0: np.ndarray
    p1: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    units: str = ""  #: units of the ROI statistics ("HU" on CT)

    @property
    def length_mm(self) -> float:
        """Distance between the two points in mm (exact in 3-D patient space)."""
        return float(np.linalg.norm(np.asarray(self.p1) - np.asarray(self.p0)))

    def label(self) -> str:
        """The text shown next to it."""
        if self.kind == "distance":
            return f"{self.length_mm:.1f} mm"
        s = self.stats
        units = f" {self.units}" if self.units else ""
        return f"{s['mean']:.0f} ± {s['sd']:.0f}{units}, {s['area_mm2'] / 100:.2f} cm²"


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
        psygnal ``Signal(str)``: ``"crosshair"``, ``"window"``, ``"slab"`` or ``"measurements"`` after a change.
    measurements
        :class:`MprMeasurement` s drawn on the planes (patient mm), each shown on the plane it was drawn on.
    """

    changed = Signal(str)

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        #: the three reformats and the acquired plane, by name
        self.planes: dict[str, Plane] = {name: volume.plane(name) for name in (*PLANES, ACQUIRED)}
        self.crosshair = volume.to_patient(np.floor((np.asarray(volume.shape) - 1) / 2))
        self.window: Window | None = volume.default_window
        self.slab_mm = 0.0
        self.projection = Projection.MIP
        self.invert = False
        self.measurements: list[MprMeasurement] = []
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
        """The other planes as lines on plane `name`: ``(other plane, "v" or "h", x or y in display pixels)``
        (a reformat parallel to `name` -- the acquired plane's twin -- has none)."""
        here = self.planes[name]
        x, y = self.crosshair_display(name)
        out = []
        for other in PLANES:
            if other == name or self.planes[other].axis == here.axis:
                continue
            axis = self.planes[other].axis
            out.append((other, "v", x) if axis == here.h_axis else (other, "h", y))
        return out

    def position_mm(self, name: str) -> float:
        """Patient coordinate (mm) of plane `name` along its normal (z for axial, y coronal, x sagittal; for the
        acquired plane the patient axis closest to the slice normal)."""
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

    # ------------------------------------------------------------------ measurements
    def patient_at(self, name: str, x: float, y: float) -> np.ndarray:
        """Patient position (mm) of display point ``(x, y)`` on the plane `name` shown."""
        return self.volume.to_patient(self.planes[name].to_voxel(x, y, self.index(name)))

    def display_of(self, name: str, point: Any) -> tuple[float, float]:
        """Display point ``(x, y)`` of a patient position on plane `name`."""
        return self.planes[name].to_display(self.volume.to_voxel(point))

    def add_distance(self, name: str, a: tuple[float, float], b: tuple[float, float]) -> MprMeasurement:
        """A distance between display points `a` and `b` of plane `name` (kept in patient mm)."""
        m = MprMeasurement("distance", name, self.index(name), self.patient_at(name, *a), self.patient_at(name, *b))
        self.measurements.append(m)
        self.changed.emit("measurements")
        return m

    def add_ellipse(self, name: str, a: tuple[float, float], b: tuple[float, float]) -> MprMeasurement:
        """An elliptical ROI inscribed in the display rectangle with corners `a`, `b` on plane `name`, with the
        statistics of the modality values (HU on CT) shown there (see :class:`MprMeasurement`).

        Raises
        ------
        ValueError
            The ellipse holds no voxel centre.
        """
        plane = self.planes[name]
        idx = self.index(name)
        values = self.volume.pipeline.modality_values(self.volume.slab(plane, idx, self.slab_mm, self.projection))
        h, w = plane.shape
        sy, sx = plane.size[0] / h, plane.size[1] / w  # display pixels per voxel
        cx, cy = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
        rx, ry = abs(b[0] - a[0]) / 2, abs(b[1] - a[1]) / 2
        if rx <= 0 or ry <= 0:
            raise ValueError("the ellipse has no area")
        cols = (np.arange(w) + 0.5) * sx
        rows = (np.arange(h) + 0.5) * sy
        inside = ((cols[None, :] - cx) / rx) ** 2 + ((rows[:, None] - cy) / ry) ** 2 <= 1.0
        if not inside.any():
            raise ValueError("the ellipse holds no voxel centre; draw it larger")
        v = values[inside].astype(np.float64)
        mm_x = w * plane.pixel_mm[1] / plane.size[1]  # mm per display pixel (square to within rounding)
        mm_y = h * plane.pixel_mm[0] / plane.size[0]
        stats = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                 "min": float(v.min()), "max": float(v.max()), "n": float(v.size),
                 "area_mm2": float(math.pi * rx * mm_x * ry * mm_y)}
        m = MprMeasurement("ellipse", name, idx, self.patient_at(name, *a), self.patient_at(name, *b), stats,
                           self.volume.pipeline.units.label or "")
        self.measurements.append(m)
        self.changed.emit("measurements")
        return m

    def measurements_on(self, name: str) -> list[MprMeasurement]:
        """Measurements drawn on the plane `name` shows now."""
        idx = self.index(name)
        return [m for m in self.measurements if m.plane == name and m.index == idx]

    def clear_measurements(self) -> None:
        """Delete every measurement."""
        self.measurements.clear()
        self.changed.emit("measurements")

    def distance_mm(self, name: str, p0: tuple[float, float], p1: tuple[float, float]) -> float:
        """Distance in mm between two display points of plane `name`, in patient space (exact: display pixels
        are square only to within the rounding of the image size)."""
        return float(np.linalg.norm(self.patient_at(name, *p1) - self.patient_at(name, *p0)))

    def caption(self, name: str) -> str:
        """One line for the plane's corner: name, index, position in mm and the slab."""
        plane = self.planes[name]
        axis = "xyz"[self.volume.normal_axis(plane)]
        text = f"{name.capitalize()} {self.index(name) + 1}/{plane.count}  {axis} = {self.position_mm(name):.1f} mm"
        first, stop = self.volume.slab_range(plane, self.index(name), self.slab_mm)
        if stop - first > 1:
            text += f"  {self.projection.value.upper()} {(stop - first) * plane.spacing:.1f} mm"
        return text
