"""The reading state of images as a DICOM Grayscale Softcopy Presentation State (GSPS), and back (Qt-free).

What a reader did to a series -- window/level, zoom, rotation and flip, the measurements drawn (distance,
rectangle and ellipse ROI) with their labels, free text -- is written as a GSPS (PS3.3 A.33.1) with highdicom:

- VOI: Softcopy VOI LUT Module (C.11.8), window centre/width in modality units (HU on CT);
- measurements: Graphic Annotation Module (C.10.5) on one Graphic Layer (C.10.7), in PIXEL units -- the
  origin at the top-left corner of the top-left pixel, ``(column, row)``, exactly MedViewer's continuous image
  coordinates; a distance is a two-point POLYLINE, a rectangle a closed five-point POLYLINE, an ellipse an
  ELLIPSE (major axis end points, then minor axis end points); the label of each is a Text Object anchored at
  its second point (a rectangle's or ellipse's bottom-right corner);
- rotation and flip: Spatial Transformation Module (C.10.6: Image Rotation clockwise, then Image Horizontal
  Flip "after any rotation has been applied" -- the order dciodvfy checks);
- zoom: Displayed Area Module (C.10.4): the part of the image on screen, SCALE TO FIT; its top-left and
  bottom-right corners are the image pixels shown at the display's corners *after* the spatial
  transformation (so a rotated or flipped area has them swapped).

:func:`read_presentation_state` reads any GSPS back into a :class:`ReadingState` -- ours or another vendor's
(DISPLAY units converted through the displayed area, CIRCLE as an ellipse, other graphics kept as polylines
or points) -- so a viewer can apply it to the images it references.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer.errors import MedViewerError

__all__ = ["Annotation", "ReadingState", "PresentationStateError", "build_presentation_state",
           "read_presentation_state", "GSPS_SOP_CLASS", "LAYER"]

#: Grayscale Softcopy Presentation State Storage (PS3.4 B.5)
GSPS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
#: the graphic layer MedViewer writes its measurements on
LAYER = "MEASUREMENTS"
_KINDS = ("distance", "rect", "ellipse", "text", "polyline", "point")


class PresentationStateError(MedViewerError, ValueError):
    """A presentation state cannot be written from these inputs, or read from this dataset (one line why)."""


@dataclass
class Annotation:
    """One graphic or text on one image, in image pixel coordinates.

    Attributes
    ----------
    kind
        ``"distance"`` (2 points), ``"rect"`` (2 corners), ``"ellipse"`` (2 corners of its bounding box),
        ``"text"`` (1 anchor point), or, read from other software, ``"polyline"`` / ``"point"``.
    points
        ``[(x, y), ...]`` continuous image coordinates: the image spans ``[0, columns] x [0, rows]``.
    sop_instance_uid
        The image it belongs to.
    frame
        0-based frame within a multi-frame image (0 for single frames).
    text
        Its label (e.g. ``"42.3 mm"``), or the text of a text annotation.
    """

    kind: str
    points: list[tuple[float, float]]
    sop_instance_uid: str
    frame: int = 0
    text: str = ""


@dataclass
class ReadingState:
    """How a set of images is shown: shared window, geometry and the annotations on them.

    Attributes
    ----------
    window
        ``(center, width)`` in modality units (HU on CT), or None to keep each image's own.
    rotation
        Clockwise rotation in degrees: 0, 90, 180 or 270, applied first (PS3.3 C.10.6).
    flip_h
        Mirrored left-right after the rotation (PS3.3 C.10.6; note that MedViewer's viewport flips first:
        :mod:`medviewer.workstation.presentation` converts).
    displayed_area
        ``(x0, y0, x1, y1)`` with ``x0 < x1``, ``y0 < y1``: the part of the image on screen, in image pixel
        coordinates of the untransformed image, or None for the whole image.
    annotations
        :class:`Annotation` s, each on its image.
    label, description, creator
        Content Label (a DICOM CS: upper case), Content Description and Content Creator's Name.
    created
        ``YYYYMMDDHHMMSS`` of the Presentation Creation Date/Time (read back; set when written).
    """

    window: tuple[float, float] | None = None
    rotation: int = 0
    flip_h: bool = False
    displayed_area: tuple[float, float, float, float] | None = None
    annotations: list[Annotation] = field(default_factory=list)
    label: str = "MEASUREMENTS"
    description: str = ""
    creator: str = ""
    created: str = ""


# ---------------------------------------------------------------------- writing
def _graphics(a: Annotation) -> tuple[list[Any], list[Any]]:
    """highdicom graphic and text objects of one annotation."""
    import highdicom as hd

    pts = np.asarray(a.points, np.float64).reshape(-1, 2)
    if not np.isfinite(pts).all():
        raise PresentationStateError(f"{a.kind} on {a.sop_instance_uid}: its points are not finite")
    objects: list[Any] = []
    units = hd.pr.AnnotationUnitsValues.PIXEL
    if a.kind == "distance":
        if len(pts) != 2:
            raise PresentationStateError("a distance needs 2 points")
        objects.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, pts, units))
    elif a.kind in ("rect", "ellipse"):
        if len(pts) != 2:
            raise PresentationStateError(f"a {a.kind} needs its 2 corners")
        (x0, x1), (y0, y1) = sorted(pts[:, 0]), sorted(pts[:, 1])
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise PresentationStateError(f"the {a.kind} has no area")
        if a.kind == "rect":
            ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
            objects.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, ring, units))
        else:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            horizontal = [[x0, cy], [x1, cy]]
            vertical = [[cx, y0], [cx, y1]]
            axes = horizontal + vertical if x1 - x0 >= y1 - y0 else vertical + horizontal  # major axis first
            objects.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.ELLIPSE, np.array(axes), units))
    elif a.kind not in ("text", "polyline", "point"):
        raise PresentationStateError(f"unknown annotation kind {a.kind!r} (one of {', '.join(_KINDS)})")
    elif a.kind == "polyline":
        objects.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, pts, units))
    elif a.kind == "point":
        objects.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POINT, pts[:1], units))
    texts: list[Any] = []
    if a.text:
        if a.kind in ("rect", "ellipse"):  # the bottom-right corner, whichever way it was drawn
            anchor = (float(pts[:, 0].max()), float(pts[:, 1].max()))
        else:
            anchor = tuple(float(v) for v in pts[-1 if a.kind != "text" else 0])
        texts.append(hd.pr.TextObject(a.text[:1024], units, anchor_point=anchor,  # type: ignore[arg-type]
                                      anchor_point_visible=a.kind == "text"))
    return objects, texts


def build_presentation_state(images: Sequence[Dataset], state: ReadingState, *, series_number: int = 9001,
                             instance_number: int = 1, manufacturer: str = "MedViewer",
                             software_version: str | None = None) -> Dataset:
    """A GSPS of `state` over `images` (PS3.3 A.33.1), written with highdicom.

    Parameters
    ----------
    images
        The headers of the images it presents (one series or several of one study), pixel data not needed.
    state
        What to save; each annotation must reference one of `images` (by SOP Instance UID).
    series_number, instance_number
        Of the new presentation state (a series of its own, in the images' study).
    manufacturer, software_version
        Of the equipment writing it (default: MedViewer and its version).

    Returns
    -------
    pydicom.dataset.Dataset
        Explicit VR Little Endian, ready for ``save_as`` or a C-STORE.

    Raises
    ------
    PresentationStateError
        No image, images of several studies, an annotation on an image not among `images`, bad geometry or
        window.
    """
    import highdicom as hd

    from medviewer import __version__

    if not images:
        raise PresentationStateError("a presentation state needs at least one image to reference")
    studies = {str(getattr(ds, "StudyInstanceUID", "")) for ds in images}
    if len(studies) != 1:
        raise PresentationStateError(f"the images belong to {len(studies)} studies; a presentation state "
                                     f"references one")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    if state.rotation not in (0, 90, 180, 270):
        raise PresentationStateError(f"rotation {state.rotation}: must be 0, 90, 180 or 270 degrees")
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="MedViewer measurements")
    grouped: dict[tuple[str, int], tuple[list[Any], list[Any]]] = {}
    for a in state.annotations:
        if a.sop_instance_uid not in by_uid:
            raise PresentationStateError(f"an annotation is on image {a.sop_instance_uid}, which is not among "
                                         f"the referenced images")
        objs, texts = _graphics(a)
        g = grouped.setdefault((a.sop_instance_uid, a.frame), ([], []))
        g[0].extend(objs)
        g[1].extend(texts)
    annotations = []
    for (uid, frame), (objs, texts) in grouped.items():
        source = by_uid[uid]
        frames = int(source.get("NumberOfFrames", 1) or 1)
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[source], graphic_layer=layer,
            referenced_frame_number=frame + 1 if frames > 1 else None,
            graphic_objects=objs or None, text_objects=texts or None))
    voi = None
    if state.window is not None:
        center, width = (float(v) for v in state.window)
        if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
            raise PresentationStateError(f"window {center}/{width}: the width must be at least 1 (PS3.3 C.11.2.1.2)")
        voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=width,
                                                  window_explanation="MedViewer")]
    label = "".join(c if c.isalnum() else "_" for c in (state.label or "MEASUREMENTS").upper())[:16]
    with warnings.catch_warnings():  # highdicom's notes on odd source values: copied unchanged
        warnings.simplefilter("ignore", UserWarning)
        ds = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=list(images), series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer=manufacturer,
            manufacturer_model_name="MedViewer", software_versions=software_version or __version__,
            device_serial_number="0", content_label=label,
            content_description=(state.description or "Reading state saved by MedViewer")[:64],
            graphic_annotations=annotations or None, graphic_layers=[layer] if annotations else None,
            content_creator_name=state.creator or None, voi_lut_transformations=voi)
    _laterality(ds, images[0])
    if state.rotation or state.flip_h:
        ds.ImageRotation = int(state.rotation)
        ds.ImageHorizontalFlip = "Y" if state.flip_h else "N"
    if state.displayed_area is not None:
        _set_displayed_area(ds, images, state.displayed_area, state.rotation, state.flip_h)
    return ds


def _laterality(ds: Dataset, source: Dataset) -> None:
    """General Series Laterality (Type 2C, PS3.3 C.7.3.1), as the AI exports write it: the source's, absent for
    an unpaired Body Part Examined (copied too), else empty (unknown) -- dciodvfy asks for it otherwise."""
    from medviewer.export.dicom_ai import _UNPAIRED

    lat = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "")
    body = str(source.get("BodyPartExamined", "") or "").upper()
    if body:
        ds.BodyPartExamined = body
    if lat in ("R", "L"):
        ds.Laterality = lat
    elif body in _UNPAIRED:
        if "Laterality" in ds:
            del ds.Laterality
    else:
        ds.Laterality = ""


def _screen_corners(rotation: int, flip_h: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Which bounding-box corners (0: low, 1: high, per axis ``(x, y)``) end up at the display's top-left and
    bottom-right after rotating clockwise by `rotation` and then flipping horizontally."""
    def screen(cx: int, cy: int) -> tuple[float, float]:
        x, y = (1.0 if cx else -1.0), (1.0 if cy else -1.0)
        for _ in range((rotation // 90) % 4):
            x, y = -y, x  # 90 degrees clockwise on a y-down screen
        return (-x if flip_h else x), y
    corners = [(cx, cy) for cx in (0, 1) for cy in (0, 1)]
    top_left = min(corners, key=lambda c: sum(screen(*c)))
    return top_left, (1 - top_left[0], 1 - top_left[1])


def _set_displayed_area(ds: Dataset, images: Sequence[Dataset], area: tuple[float, float, float, float],
                        rotation: int = 0, flip_h: bool = False) -> None:
    """Displayed Area Selection Sequence (C.10.4): one item for all images, SCALE TO FIT of `area`, its corners
    given as the pixels shown at the display's corners after the spatial transformation."""
    x0, y0, x1, y1 = area
    if not all(math.isfinite(v) for v in area) or x1 <= x0 or y1 <= y0:
        raise PresentationStateError(f"displayed area {area}: must be finite with x1 > x0 and y1 > y0")
    # 1-based indices of the first and last pixel columns/rows shown (may lie outside the image)
    cols = (int(math.floor(x0)) + 1, int(math.ceil(x1)))
    rows = (int(math.floor(y0)) + 1, int(math.ceil(y1)))
    tl, br = _screen_corners(rotation, flip_h)
    item = Dataset()
    item.DisplayedAreaTopLeftHandCorner = [cols[tl[0]], rows[tl[1]]]
    item.DisplayedAreaBottomRightHandCorner = [cols[br[0]], rows[br[1]]]
    item.PresentationSizeMode = "SCALE TO FIT"
    spacing = images[0].get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        item.PresentationPixelSpacing = [float(spacing[0]), float(spacing[1])]
    else:
        item.PresentationPixelAspectRatio = [1, 1]
    ds.DisplayedAreaSelectionSequence = [item]


# ---------------------------------------------------------------------- reading
def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "")


def read_presentation_state(ds: Dataset) -> ReadingState:
    """The :class:`ReadingState` of a Grayscale Softcopy Presentation State (ours or another vendor's).

    Graphics in DISPLAY units (fractions of the displayed area, PS3.3 C.10.5.1.1) are converted to image
    pixels through the Displayed Area Selection of the image (the whole image when absent). POLYLINE with 2
    points is a distance; a closed axis-aligned 5-point POLYLINE a rectangle; an axis-aligned ELLIPSE or a
    CIRCLE an ellipse; other polylines and points are kept as ``polyline`` / ``point``; Text Objects become
    ``text`` annotations at their anchor point (or their bounding box's top-left corner).

    Raises
    ------
    PresentationStateError
        Not a presentation state, or its annotations reference no image.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != GSPS_SOP_CLASS and "GraphicAnnotationSequence" not in ds \
            and "SoftcopyVOILUTSequence" not in ds:
        raise PresentationStateError(f"SOP Class {sop_class or '(none)'} is not a Grayscale Softcopy Presentation "
                                     f"State")
    state = ReadingState(label=_text(ds, "ContentLabel"), description=_text(ds, "ContentDescription"),
                         creator=_text(ds, "ContentCreatorName"),
                         created=_text(ds, "PresentationCreationDate") + _text(ds, "PresentationCreationTime")[:6])
    for item in ds.get("SoftcopyVOILUTSequence", []) or []:
        c, w = item.get("WindowCenter"), item.get("WindowWidth")
        if c is not None and w is not None:
            c = c[0] if isinstance(c, Sequence) and not isinstance(c, str) else c
            w = w[0] if isinstance(w, Sequence) and not isinstance(w, str) else w
            state.window = (float(c), float(w))
            break
    rotation = int(ds.get("ImageRotation", 0) or 0)
    state.rotation = rotation if rotation in (0, 90, 180, 270) else 0
    state.flip_h = _text(ds, "ImageHorizontalFlip").upper() == "Y"
    area_item = (ds.get("DisplayedAreaSelectionSequence") or [None])[0]
    if area_item is not None and "DisplayedAreaTopLeftHandCorner" in area_item:
        tl = [float(v) for v in area_item.DisplayedAreaTopLeftHandCorner]
        br = [float(v) for v in area_item.DisplayedAreaBottomRightHandCorner]  # swapped when rotated/flipped
        state.displayed_area = (min(tl[0], br[0]) - 1, min(tl[1], br[1]) - 1, max(tl[0], br[0]), max(tl[1], br[1]))
    for group in ds.get("GraphicAnnotationSequence", []) or []:
        refs = group.get("ReferencedImageSequence") or []
        if not refs:
            raise PresentationStateError("a Graphic Annotation Sequence item references no image")
        for ref in refs:
            uid = str(ref.ReferencedSOPInstanceUID)
            frames = ref.get("ReferencedFrameNumber")
            frame_list = [int(f) - 1 for f in (frames if isinstance(frames, Sequence) and not isinstance(frames, str)
                                                 else [frames])] if frames else [0]
            for frame in frame_list:
                state.annotations.extend(_annotations(group, uid, frame, state.displayed_area))
    return state


def _to_pixels(points: np.ndarray, units: str, area: tuple[float, float, float, float] | None) -> np.ndarray | None:
    if units != "DISPLAY":
        return points
    if area is None:
        return None  # fractions of an unknown area: cannot be placed
    x0, y0, x1, y1 = area
    return np.column_stack([x0 + points[:, 0] * (x1 - x0), y0 + points[:, 1] * (y1 - y0)])


def _annotations(group: Dataset, uid: str, frame: int,
                 area: tuple[float, float, float, float] | None) -> list[Annotation]:
    out: list[Annotation] = []
    for obj in group.get("GraphicObjectSequence", []) or []:
        data = np.asarray([float(v) for v in obj.get("GraphicData", [])], np.float64).reshape(-1, 2)
        pts = _to_pixels(data, _text(obj, "GraphicAnnotationUnits").upper(), area)
        if pts is None or not len(pts):
            continue
        kind = _text(obj, "GraphicType").upper()
        out.append(_shape(kind, pts, uid, frame))
    for obj in group.get("TextObjectSequence", []) or []:
        text = _text(obj, "UnformattedTextValue")
        if "AnchorPoint" in obj:
            pts = _to_pixels(np.asarray([[float(v) for v in obj.AnchorPoint]]),
                             _text(obj, "AnchorPointAnnotationUnits").upper(), area)
        elif "BoundingBoxTopLeftHandCorner" in obj:
            pts = _to_pixels(np.asarray([[float(v) for v in obj.BoundingBoxTopLeftHandCorner]]),
                             _text(obj, "BoundingBoxAnnotationUnits").upper(), area)
        else:
            pts = None
        if pts is not None:
            out.append(Annotation("text", [(float(pts[0, 0]), float(pts[0, 1]))], uid, frame, text))
    # a label written at a shape's last point belongs to that shape (as MedViewer writes them)
    shapes = [a for a in out if a.kind != "text"]
    for t in [a for a in out if a.kind == "text"]:
        for s in shapes:
            if not s.text and np.allclose(s.points[-1] if s.kind in ("distance", "polyline", "point")
                                          else _last_written(s), t.points[0], atol=1e-3):
                s.text = t.text
                out.remove(t)
                break
    return out


def _last_written(a: Annotation) -> tuple[float, float]:
    """The point MedViewer anchors a rect/ellipse label at: the second corner as given (bottom-right)."""
    (x0, y0), (x1, y1) = a.points
    return max(x0, x1), max(y0, y1)


def _shape(kind: str, pts: np.ndarray, uid: str, frame: int) -> Annotation:
    as_list = [(float(x), float(y)) for x, y in pts]
    if kind == "POLYLINE" and len(pts) == 2:
        return Annotation("distance", as_list, uid, frame)
    if kind == "POLYLINE" and len(pts) == 5 and np.allclose(pts[0], pts[-1]):
        xs, ys = np.unique(np.round(pts[:4, 0], 6)), np.unique(np.round(pts[:4, 1], 6))
        if len(xs) == 2 and len(ys) == 2:
            return Annotation("rect", [(float(xs[0]), float(ys[0])), (float(xs[1]), float(ys[1]))], uid, frame)
    if kind == "ELLIPSE" and len(pts) == 4:
        (a0, a1, b0, b1) = pts
        centre = (a0 + a1) / 2
        ra, rb = np.linalg.norm(a1 - a0) / 2, np.linalg.norm(b1 - b0) / 2
        axis_aligned = abs(a0[0] - a1[0]) < 1e-6 or abs(a0[1] - a1[1]) < 1e-6
        if axis_aligned:
            rx, ry = (ra, rb) if abs(a0[1] - a1[1]) < 1e-6 else (rb, ra)
            return Annotation("ellipse", [(float(centre[0] - rx), float(centre[1] - ry)),
                                          (float(centre[0] + rx), float(centre[1] + ry))], uid, frame)
    if kind == "CIRCLE" and len(pts) == 2:
        r = float(np.linalg.norm(pts[1] - pts[0]))
        cx, cy = (float(v) for v in pts[0])
        return Annotation("ellipse", [(cx - r, cy - r), (cx + r, cy + r)], uid, frame)
    if kind == "POINT":
        return Annotation("point", as_list[:1], uid, frame)
    return Annotation("polyline", as_list, uid, frame)
