"""Multiplanar reformats (MPR) of a CT/MR series: a volume, its axial/coronal/sagittal planes and slabs (Qt-free).

A series whose slices form a volume -- one orientation, one size and pixel spacing, one frame of reference,
a position on every slice and the same distance between consecutive slice positions -- is stacked once into
a ``(slices, rows, columns)`` array of *stored* values (:class:`Volume`). Each plane shown is a NumPy view
of that array (a strided slice, transposed and flipped as the plane's orientation asks), never a copy of the
volume; a thick slab is one reduction (max, min, mean) over a few neighbouring planes.

Geometry (PS3.3 C.7.6.2.1.1): Image Orientation (Patient) gives the unit row direction (along which the
column index grows) and column direction (along which the row index grows); Pixel Spacing is
``(row spacing, column spacing)`` -- the distance between rows, then between columns. The distance between
slices is measured from Image Position (Patient) projected on the slice normal, never from Slice Thickness
(which is the reconstructed thickness, not the spacing, and often differs from it).

Gantry/detector tilt: a stack whose slice positions do not move along the slice normal (a tilted CT gantry:
Image Orientation (Patient) tilted while the table moves along z; or untilted slices whose Image Position
(Patient) moves in-plane) is sheared. It is shear-corrected: each slice is shifted in-plane by its own
offset (bilinear, ``cv2.warpAffine``; exact for whole-pixel offsets) so that the volume is an orthogonal grid
of the acquired slice planes, spaced by the distance along the normal (3 mm table steps at 15 degrees:
2.898 mm). Every voxel then sits at its true patient position, so reformats, crosshair and measurements in
mm are right; the edge shifted in is padded with the lowest stored value of the first slice (outside the
field of view), and :attr:`Volume.notes` says so. A tilt over :data:`MAX_TILT_DEG`, or one that shifts the
last slice by more than half the field of view, is refused with the angle.

Patient coordinates are DICOM LPS millimetres (x to the patient's Left, y to Posterior, z to Superior).
Planes are oriented as radiologists read them: axial seen from the feet (patient's right on the screen's
left, anterior up), coronal seen from the front (right on the left, superior up), sagittal seen from the
patient's left (anterior on the left, superior up).

Display: a plane's stored values go through the series' own :class:`~medviewer.imaging.DisplayPipeline`
(Modality LUT to HU, VOI window, Presentation LUT) -- the one renderer of the viewer and ``medviewer
render`` -- and the 8-bit result is resampled (bilinear) to square display pixels, so that a coronal image
of 134 slices 3 mm apart over 512 columns of 1.074 mm is 374 x 512 pixels: aspect in mm is right.

Example
-------
>>> from medviewer.io import scan                                   # doctest: +SKIP
>>> vol = build_volume(scan("ct-folder").series[0])                 # doctest: +SKIP
>>> image = vol.render(vol.plane("coronal"), index=256)             # doctest: +SKIP
>>> image.shape                                                     # doctest: +SKIP
(374, 512)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import cv2
import numpy as np

from medviewer.errors import MedViewerError
from medviewer.imaging.pipeline import DisplayPipeline
from medviewer.imaging.stack_geometry import MAX_TILT_DEG, shift_slice, slice_name, volume_problem
from medviewer.imaging.window import Window
from medviewer.limits import get_limits

__all__ = ["Volume", "VolumeError", "Plane", "PlaneName", "Projection", "build_volume", "volume_problem",
           "orientation_label", "PLANES", "ACQUIRED", "MAX_TILT_DEG", "Point"]

#: a point or voxel index as 3 numbers (x, y, z in mm, or volume indices): a sequence or a ``(3,)`` array
Point = Sequence[float] | np.ndarray

#: patient axis (LPS) normal to each plane
_NORMALS = {"axial": 2, "coronal": 1, "sagittal": 0}
#: (screen right, screen down) as patient directions, per plane (the reading conventions above)
_SCREEN = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),      # right of screen = patient left, down = posterior
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),   # right = left, down = inferior
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # right = posterior, down = inferior
}
PLANES = ("axial", "coronal", "sagittal")
#: name of the plane of the slices as acquired (volume axis 0, rows down and columns right as in the files)
ACQUIRED = "acquired"
_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # negative, positive direction of x, y, z (PS3.3 C.7.6.1.1.1)


class PlaneName(str, Enum):
    """The three reformatted planes."""

    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


class Projection(str, Enum):
    """How a thick slab is reduced to one plane."""

    MIP = "mip"      #: maximum intensity projection (bone, contrast-filled vessels)
    MINIP = "minip"  #: minimum intensity projection (airways, emphysema)
    MEAN = "mean"    #: average (a thick reconstruction, less noise)


class VolumeError(MedViewerError, ValueError):
    """A series cannot be reformatted; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def orientation_label(direction: Sequence[float]) -> str:
    """Patient orientation letters of a direction in LPS (PS3.3 C.7.6.1.1.1), strongest component first.

    ``(1, 0, 0)`` -> ``"L"``, ``(0, 0, -1)`` -> ``"F"`` (feet) ... shown as ``"I"``/``"S"`` by viewers;
    this function uses the radiology letters R/L, A/P, S/I. Components under 0.25 of the unit vector are
    left out, so an oblique plane reads e.g. ``"LP"``.
    """
    v = np.asarray(direction, dtype=np.float64)
    n = float(np.linalg.norm(v))
    if n == 0:
        return ""
    v = v / n
    letters = []
    for axis in np.argsort(-np.abs(v)):
        if abs(v[axis]) < 0.25:
            break
        neg, pos = _LETTERS[axis]
        letters.append(pos if v[axis] > 0 else neg)
    return "".join(letters).replace("F", "I").replace("H", "S")


@dataclass(frozen=True)
class Plane:
    """One reformatted plane of a :class:`Volume`: which volume axis is fixed, how the others map to the screen.

    Attributes
    ----------
    name
        ``"axial"``, ``"coronal"`` or ``"sagittal"`` (the patient plane it is closest to), or ``"acquired"``
        (:meth:`Volume.acquired_plane`: the slices as stored).
    axis
        Volume axis (0 slices, 1 rows, 2 columns) held fixed; the plane's index runs along it.
    h_axis, v_axis
        Volume axes shown left-to-right and top-to-bottom.
    h_flip, v_flip
        Those axes run backwards on screen (a negative-stride view, still no copy).
    count
        Number of planes along ``axis`` (valid indices ``0 .. count - 1``).
    spacing
        Distance in mm between planes along ``axis``.
    shape
        ``(height, width)`` of the plane in voxels (before resampling to square pixels).
    pixel_mm
        ``(vertical, horizontal)`` voxel size in mm on the screen.
    size
        ``(height, width)`` of the rendered image in display pixels (square, ``display_mm`` each).
    display_mm
        Edge of one (square) display pixel in mm: the finer of the two in-plane spacings.
    labels
        Orientation letters at the ``"left"``, ``"right"``, ``"top"`` and ``"bottom"`` edges.
    """

    name: str
    axis: int
    h_axis: int
    v_axis: int
    h_flip: bool
    v_flip: bool
    count: int
    spacing: float
    shape: tuple[int, int]
    pixel_mm: tuple[float, float]
    size: tuple[int, int]
    display_mm: float
    labels: dict[str, str] = field(hash=False, compare=False)

    def to_display(self, voxel: Point) -> tuple[float, float]:
        """Continuous volume index ``(k, i, j)`` -> display point ``(x, y)`` in rendered-image pixels
        (pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``)."""
        h, w = self.shape
        u = float(voxel[self.h_axis])
        v = float(voxel[self.v_axis])
        if self.h_flip:
            u = w - 1 - u
        if self.v_flip:
            v = h - 1 - v
        return (u + 0.5) * self.size[1] / w, (v + 0.5) * self.size[0] / h

    def to_voxel(self, x: float, y: float, index: float) -> np.ndarray:
        """Display point ``(x, y)`` on plane `index` -> continuous volume index ``(k, i, j)``, float64 ``(3,)``."""
        h, w = self.shape
        u = x * w / self.size[1] - 0.5
        v = y * h / self.size[0] - 0.5
        if self.h_flip:
            u = w - 1 - u
        if self.v_flip:
            v = h - 1 - v
        out = np.zeros(3)
        out[self.axis] = index
        out[self.h_axis] = u
        out[self.v_axis] = v
        return out


@dataclass(eq=False)
class Volume:
    """A stack of equally spaced parallel slices: stored values and their patient geometry.

    Build it with :func:`build_volume`.

    Attributes
    ----------
    stored
        ``(slices, rows, columns)`` stored values (dtype of the files, e.g. uint16/int16), C-contiguous, in the
        series' display order. Modality values are ``pipeline.modality_values(stored)``; when the slices'
        Rescale Slope/Intercept differ this holds float32 modality values and the pipeline's Modality LUT is
        the identity.
    pipeline
        The display pipeline of the series (first slice's Modality LUT, windows, Presentation LUT).
    origin
        ``(3,)`` patient position (mm, LPS) of voxel ``(0, 0, 0)``'s centre: Image Position (Patient) of the
        first slice.
    directions
        ``(3, 3)`` unit vectors (rows) along volume axes 0 (slice to slice), 1 (row to row = the column
        direction cosines) and 2 (column to column = the row direction cosines).
    spacing
        ``(3,)`` mm between slices, rows (Pixel Spacing[0]) and columns (Pixel Spacing[1]).
    default_window
        The window every plane starts with (the file's first window, else an automatic window of the middle
        slice), shared by all planes.
    source
        What it was built from (list of instances), for names in messages.
    tilt_deg
        Gantry/detector tilt that was shear-corrected (degrees; 0 for an orthogonal stack).
    shifts
        ``(slices, 2)`` float64 in-plane shift (rows, columns) applied to each slice by the shear correction;
        ``None`` when there was none. Voxel ``(k, i, j)`` holds the file's pixel ``(i - shifts[k, 0],
        j - shifts[k, 1])`` of slice ``k``.
    notes
        Lines for the user about how the volume was made (shear correction).
    """

    stored: np.ndarray
    pipeline: DisplayPipeline
    origin: np.ndarray
    directions: np.ndarray
    spacing: np.ndarray
    default_window: Window | None = None
    source: list[Any] = field(default_factory=list, repr=False)
    tilt_deg: float = 0.0
    shifts: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)
    _planes: dict[str, Plane] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        return tuple(self.stored.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> np.ndarray:
        """``(3,)`` extent in mm along the volume axes (voxels x spacing)."""
        return np.asarray(self.shape, np.float64) * self.spacing

    @property
    def center_mm(self) -> np.ndarray:
        """Patient position (mm) of the volume's centre."""
        return self.to_patient((np.asarray(self.shape, np.float64) - 1) / 2)

    # ------------------------------------------------------------------ coordinates
    def to_patient(self, voxel: Point) -> np.ndarray:
        """Continuous volume index ``(k, i, j)`` -> patient position (mm, LPS), float64 ``(3,)``."""
        v = np.asarray(voxel, np.float64)
        return self.origin + (v * self.spacing) @ self.directions

    def to_voxel(self, point: Point) -> np.ndarray:
        """Patient position (mm, LPS) -> continuous volume index ``(k, i, j)`` (float64 ``(3,)``; may lie
        outside the volume)."""
        d = np.asarray(point, np.float64) - self.origin
        return (self.directions @ d) / self.spacing

    def clamp_voxel(self, voxel: Point) -> np.ndarray:
        """A volume index clipped into the volume."""
        return np.clip(np.asarray(voxel, np.float64), 0, np.asarray(self.shape, np.float64) - 1)

    # ------------------------------------------------------------------ planes
    def plane(self, name: str | PlaneName) -> Plane:
        """The :class:`Plane` named ``axial``, ``coronal`` or ``sagittal``.

        The fixed volume axis is the one closest to the plane's patient normal; the other two are put on the
        screen's horizontal and vertical by the reading conventions of the module docstring.

        Raises
        ------
        ValueError
            Unknown name.
        """
        text = str(getattr(name, "value", name)).lower()
        key = ACQUIRED if text == ACQUIRED else PlaneName(text).value
        got = self._planes.get(key)
        if got is not None:
            return got
        if key == ACQUIRED:  # the slices as stored: rows down, columns right, no flip
            axis, h_axis, v_axis, h_flip, v_flip = 0, 2, 1, False, False
        else:
            normal = _NORMALS[key]
            axis = int(np.argmax(np.abs(self.directions[:, normal])))
            right, down = (np.asarray(d) for d in _SCREEN[key])
            rest = [a for a in range(3) if a != axis]
            scores = [abs(self.directions[a] @ right) for a in rest]
            h_axis = rest[int(np.argmax(scores))]
            v_axis = rest[1 - int(np.argmax(scores))]
            h_flip = bool(self.directions[h_axis] @ right < 0)
            v_flip = bool(self.directions[v_axis] @ down < 0)
        shape = (self.shape[v_axis], self.shape[h_axis])
        pixel_mm = (float(self.spacing[v_axis]), float(self.spacing[h_axis]))
        display_mm = min(pixel_mm)
        size = (max(1, round(shape[0] * pixel_mm[0] / display_mm)), max(1, round(shape[1] * pixel_mm[1] / display_mm)))
        sign_h = -1.0 if h_flip else 1.0
        sign_v = -1.0 if v_flip else 1.0
        labels = {"right": orientation_label(sign_h * self.directions[h_axis]),
                  "left": orientation_label(-sign_h * self.directions[h_axis]),
                  "bottom": orientation_label(sign_v * self.directions[v_axis]),
                  "top": orientation_label(-sign_v * self.directions[v_axis])}
        got = Plane(key, axis, h_axis, v_axis, h_flip, v_flip, self.shape[axis], float(self.spacing[axis]),
                    shape, pixel_mm, size, display_mm, labels)
        self._planes[key] = got
        return got

    def acquired_plane(self) -> Plane:
        """The plane of the slices as acquired (volume axis 0), oriented as the files store them -- what the
        2-D viewer shows of each slice (after shear correction, when the stack was tilted)."""
        return self.plane(ACQUIRED)

    def normal_axis(self, plane: Plane) -> int:
        """Patient axis (0 x, 1 y, 2 z) a plane's position is given along: x sagittal, y coronal, z axial; for
        the acquired plane the one closest to its normal."""
        return _NORMALS.get(plane.name, int(np.argmax(np.abs(self.directions[plane.axis]))))

    def index_at(self, plane: Plane, position_mm: float) -> int:
        """Plane index at `position_mm` along the plane's patient normal (x for sagittal, y for coronal, z for
        axial, mm LPS -- what Slice Location reads on axial CT).

        Raises
        ------
        VolumeError
            The position lies outside the volume (the message gives the range).
        """
        normal = self.normal_axis(plane)
        step = float(self.directions[plane.axis, normal] * self.spacing[plane.axis])
        first = float(self.origin[normal])
        last = first + step * (plane.count - 1)
        k = (position_mm - first) / step
        if not -0.5 <= k <= plane.count - 0.5:
            lo, hi = sorted((first, last))
            raise VolumeError(f"--position {position_mm:g} mm is outside the {plane.name} range of this series "
                              f"({lo:.1f} .. {hi:.1f} mm)")
        return int(min(plane.count - 1, max(0, round(k))))

    def position_of(self, plane: Plane, index: int) -> float:
        """Patient coordinate (mm) along the plane's normal of plane `index` (inverse of :meth:`index_at`)."""
        normal = self.normal_axis(plane)
        return float(self.origin[normal] + self.directions[plane.axis, normal] * self.spacing[plane.axis] * index)

    def slab_range(self, plane: Plane, index: int, slab_mm: float = 0.0) -> tuple[int, int]:
        """``(first, stop)`` plane indices of a slab `slab_mm` thick centred on `index`, clipped to the volume:
        ``round(slab_mm / spacing)`` planes (at least one)."""
        n = max(1, int(round(slab_mm / plane.spacing))) if slab_mm > 0 else 1
        first = index - (n - 1) // 2
        stop = first + n
        return max(0, first), min(plane.count, stop)

    def view(self, plane: Plane, index: int) -> np.ndarray:
        """Stored values of plane `index` as a ``(height, width)`` view into :attr:`stored` (no copy).

        Raises
        ------
        IndexError
            `index` outside ``0 .. plane.count - 1``.
        """
        if not 0 <= index < plane.count:
            raise IndexError(f"{plane.name} index {index} out of range 0..{plane.count - 1}")
        sl: list[Any] = [slice(None)] * 3
        sl[plane.axis] = index
        return self._oriented(self.stored[tuple(sl)], plane)

    def _oriented(self, arr: np.ndarray, plane: Plane) -> np.ndarray:
        """A 2-D array over the two in-plane axes (in volume order) -> screen order, as a view."""
        rest = [a for a in range(3) if a != plane.axis]
        if rest.index(plane.v_axis) != 0:
            arr = arr.T
        return arr[:: -1 if plane.v_flip else 1, :: -1 if plane.h_flip else 1]

    def slab(self, plane: Plane, index: int, slab_mm: float = 0.0,
             projection: Projection | str = Projection.MIP) -> np.ndarray:
        """Stored values of a thick slab centred on plane `index`, reduced along the plane normal.

        Parameters
        ----------
        slab_mm
            Slab thickness in mm; 0 (or thinner than one plane) gives :meth:`view` itself.
        projection
            ``mip`` (max), ``minip`` (min) or ``mean``. The mean is rounded to the stored dtype (an error of
            at most half a stored unit, i.e. half a Rescale Slope in HU), so it renders through the same
            lookup table as a single plane.

        Returns
        -------
        np.ndarray
            ``(height, width)``, the dtype of :attr:`stored`; a view when the slab is one plane, else a new
            array of one plane's size (never a copy of the volume).
        """
        first, stop = self.slab_range(plane, index, slab_mm)
        if not 0 <= index < plane.count:
            raise IndexError(f"{plane.name} index {index} out of range 0..{plane.count - 1}")
        if stop - first <= 1:
            return self.view(plane, index)
        how = Projection(str(getattr(projection, "value", projection)).lower())
        sl: list[Any] = [slice(None)] * 3
        if plane.axis == 2:  # planes across the contiguous axis: one reduction over the block is 2-3x faster
            sl[2] = slice(first, stop)
            block = self.stored[tuple(sl)]
            if how == Projection.MEAN:
                acc = np.add.reduce(block, axis=2, dtype=np.float32 if block.dtype.kind == "f" else np.int32)
            else:
                acc = (np.maximum if how == Projection.MIP else np.minimum).reduce(block, axis=2)
            return self._oriented(self._mean(acc, stop - first) if how == Projection.MEAN else acc, plane)
        sl[plane.axis] = first
        out = self.stored[tuple(sl)]
        if how == Projection.MEAN:
            acc = out.astype(np.float32 if self.stored.dtype.kind == "f" else np.int32)
        else:
            acc = out.copy()
        op = {Projection.MIP: np.maximum, Projection.MINIP: np.minimum, Projection.MEAN: np.add}[how]
        for k in range(first + 1, stop):  # one 2-D pass per plane: contiguous enough on every axis
            sl[plane.axis] = k
            op(acc, self.stored[tuple(sl)], out=acc)
        return self._oriented(self._mean(acc, stop - first) if how == Projection.MEAN else acc, plane)

    def _mean(self, total: np.ndarray, n: int) -> np.ndarray:
        """A slab's sum over `n` planes -> mean in the stored dtype (rounded) or float32."""
        out = total / np.float32(n)
        return out if self.stored.dtype.kind == "f" else np.rint(out).astype(self.stored.dtype)

    def render(self, plane: Plane, index: int, window: Window | None = None, slab_mm: float = 0.0,
               projection: Projection | str = Projection.MIP, invert: bool = False) -> np.ndarray:
        """The display image of plane `index` (or of a slab around it): uint8 ``plane.size`` (height, width).

        Stored values -> the series' display pipeline (Modality LUT to HU, `window` or
        :attr:`default_window`, Presentation LUT, `invert`) -> bilinear resampling to square pixels of
        ``plane.display_mm``. This is what the MPR view shows and ``medviewer render --plane`` writes.
        """
        values = self.slab(plane, index, slab_mm, projection)
        image = self.pipeline.render(values, window if window is not None else self.default_window, invert)
        h, w = plane.size
        if image.shape != (h, w):
            image = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
        return image

    def hu_at(self, voxel: Point) -> float:
        """Modality value (HU on CT) of the voxel nearest to the continuous index ``(k, i, j)``."""
        k, i, j = (int(round(float(c))) for c in self.clamp_voxel(voxel))
        return float(self.pipeline.modality_values(self.stored[k:k + 1, i, j])[0])


# ---------------------------------------------------------------------- building
def build_volume(series: Any, pixels: Callable[[int], np.ndarray] | None = None,
                 progress: Callable[[int, int], Any] | None = None) -> Volume:
    """Stack a series into a :class:`Volume`.

    Parameters
    ----------
    series
        A :class:`medviewer.io.Series`, a :class:`medviewer.workstation.frames.FrameSource` or a list of
        :class:`medviewer.io.Instance` in display order.
    pixels
        ``pixels(k)`` -> stored values of instance ``k`` (e.g. a viewer's decoded-frame cache); by default
        ``instances[k].stored_pixels(0)``.
    progress
        Called as ``progress(done, total)`` after each slice.

    Raises
    ------
    VolumeError
        The series is not a volume (see :func:`volume_problem`), it is too large for
        :func:`medviewer.limits.get_limits`'s ``max_series_pixels``, or the slices' Modality LUTs cannot be
        combined.
    ReadError
        A slice cannot be decoded.
    """
    instances = list(getattr(series, "instances", series))
    if pixels is None and hasattr(series, "decode") and hasattr(series, "frames"):
        pixels = series.decode  # a FrameSource: reuse (and fill) its cache
    reason, geo = volume_problem(instances)
    if reason is not None:
        raise VolumeError(reason)
    head = instances[0]
    n = len(instances)
    if n * head.rows * head.columns > get_limits().max_series_pixels:
        raise VolumeError(f"{n} x {head.rows} x {head.columns} voxels exceed the series limit "
                          f"({get_limits().max_series_pixels}); reformats refused")
    pipes = [DisplayPipeline.from_instance(inst) for inst in instances]
    first = pipes[0]
    ml = first.modality_lut
    same_lut = all(p.modality_lut.lut is None and ml.lut is None and p.modality_lut.slope == ml.slope
                   and p.modality_lut.intercept == ml.intercept for p in pipes) or all(p is first for p in pipes)
    get = pixels or (lambda k: instances[k].stored_pixels(0))
    order = geo["order"]
    sample = np.asarray(get(order[0]))
    dtype = sample.dtype if same_lut else np.dtype(np.float32)
    stored = np.empty((n, head.rows, head.columns), dtype)
    shifts = geo.get("shifts")
    pad = float(np.min(sample)) if same_lut else float(np.min(pipes[order[0]].modality_values(sample)))
    for done, k in enumerate(order):
        a = sample if done == 0 else np.asarray(get(k))
        if a.shape != stored.shape[1:]:
            raise VolumeError(f"{slice_name(instances[k])} decodes to {a.shape}, expected {stored.shape[1:]}")
        stored[done] = a if same_lut else pipes[k].modality_values(a)
        if shifts is not None and np.any(shifts[done]):
            shift_slice(stored[done], float(shifts[done, 0]), float(shifts[done, 1]), pad)
        if progress is not None:
            progress(done + 1, n)
    pipeline = first
    if not same_lut:  # float32 modality values: the pipeline's Modality LUT becomes the identity
        from medviewer.imaging.lut import ModalityLut

        pipeline = DisplayPipeline(modality=first.modality, modality_lut=ModalityLut(
            rescale_type=ml.rescale_type, units=ml.units), windows=list(first.windows), inverse=first.inverse,
            notes=list(first.notes) + ["slices have different Rescale Slope/Intercept: volume kept in modality "
                                       "values (float32)"])
    mid = stored[n // 2]
    window = first.windows[0] if first.windows else (None if first.voi_luts else pipeline.auto_window(mid))
    notes = []
    if shifts is not None:
        worst = np.abs(shifts).max(axis=0)
        notes.append(f"gantry/detector tilt of {geo['tilt_deg']:.1f} degrees shear-corrected: slices shifted in-plane "
                     f"by up to {worst[0]:.1f} rows and {worst[1]:.1f} columns (edges padded), "
                     f"{geo['spacing'][0]:.3f} mm between slice planes")
    return Volume(stored=stored, pipeline=pipeline, origin=geo["origin"], directions=geo["directions"],
                  spacing=geo["spacing"], default_window=window, source=[instances[k] for k in order],
                  tilt_deg=float(geo.get("tilt_deg", 0.0)), shifts=shifts, notes=notes)
