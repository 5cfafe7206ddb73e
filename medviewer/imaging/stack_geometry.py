"""Whether a stack of slices forms a volume, from the headers alone, and the shear correction of a tilted stack.

Split from :mod:`medviewer.imaging.mpr` (which re-exports :func:`volume_problem` and :data:`MAX_TILT_DEG`);
the geometry rules are in that module's docstring (PS3.3 C.7.6.2.1.1: Image Orientation/Position (Patient),
Pixel Spacing; the spacing between slices from positions projected on the normal, never Slice Thickness).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["volume_problem", "shift_slice", "slice_name", "MAX_TILT_DEG"]

#: the largest gantry/detector tilt that is shear-corrected (degrees); a larger one is refused
MAX_TILT_DEG = 45.0


def slice_name(inst: Any) -> str:
    """A slice's file name (or its SOP Instance UID) for messages."""
    return getattr(getattr(inst, "path", None), "name", "") or str(getattr(inst, "sop_instance_uid", "?"))


def volume_problem(instances: Sequence[Any]) -> tuple[str | None, dict[str, Any]]:
    """Why `instances` (in display order) do not form a volume, from their headers alone (no pixels read).

    Returns
    -------
    (reason, geometry)
        ``reason`` is None when they do; ``geometry`` then holds ``order`` (indices in stacking order),
        ``origin``, ``directions`` and ``spacing`` as :class:`Volume` expects them, and ``tilt_deg`` and
        ``shifts`` (``(n, 2)`` in-plane shift in rows/columns per slice in stacking order, or None) for a
        sheared stack to be corrected (module docstring).
    """
    n = len(instances)
    if n < 2:
        return f"a volume needs at least 2 slices; this series has {n}", {}
    head = instances[0]
    for inst in instances:
        if not getattr(inst, "is_dicom", False):
            return f"{slice_name(inst)} is not a DICOM image (no patient geometry)", {}
        if inst.is_color:
            return f"{slice_name(inst)} is a colour image; reformats are for grayscale CT/MR", {}
        if int(getattr(inst, "number_of_frames", 1) or 1) != 1:
            return f"{slice_name(inst)} is a multi-frame image; reformats of multi-frame objects are not supported", {}
        if (inst.rows, inst.columns) != (head.rows, head.columns):
            return (f"slices differ in size ({head.columns}x{head.rows} in {slice_name(head)}, {inst.columns}x"
                    f"{inst.rows} in {slice_name(inst)})"), {}
        if inst.image_orientation_patient is None or inst.image_position_patient is None:
            return f"{slice_name(inst)} has no Image Orientation/Position (Patient); its place in a volume is unknown", {}
        if not np.allclose(inst.image_orientation_patient, head.image_orientation_patient, atol=1e-3):
            return (f"mixed orientation: {slice_name(inst)} is not parallel to {slice_name(head)} (Image Orientation "
                    f"(Patient) differs); not one volume"), {}
        if inst.pixel_spacing is None or not np.allclose(inst.pixel_spacing, head.pixel_spacing or (0, 0), rtol=1e-3):
            return (f"Pixel Spacing differs or is missing ({head.pixel_spacing} in {slice_name(head)}, "
                    f"{inst.pixel_spacing} in {slice_name(inst)})"), {}
        if inst.frame_of_reference_uid != head.frame_of_reference_uid:
            return f"{slice_name(inst)} is in another Frame of Reference than {slice_name(head)}; not one volume", {}
        if (inst.bits_allocated, inst.pixel_representation) != (head.bits_allocated, head.pixel_representation):
            return f"{slice_name(inst)} stores its pixels differently from {slice_name(head)} (bits, sign)", {}
    rs, cs = float(head.pixel_spacing[0]), float(head.pixel_spacing[1])
    if not (rs > 0 and cs > 0 and math.isfinite(rs) and math.isfinite(cs)):
        return f"invalid Pixel Spacing {head.pixel_spacing}", {}
    iop = np.asarray(head.image_orientation_patient, np.float64)
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-6:
        return "Image Orientation (Patient) is degenerate (row and column directions parallel)", {}
    normal /= np.linalg.norm(normal)
    pos = np.asarray([inst.image_position_patient for inst in instances], np.float64)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    if dist[0] > dist[-1]:  # keep the series' display order (e.g. head first on axial CT)
        order = order[::-1]
    d = dist[order]
    steps = np.abs(np.diff(d))
    spacing = float(np.median(steps))
    tol = max(0.02, 0.01 * spacing)
    same = np.flatnonzero(steps <= tol)
    if same.size:
        k = int(same[0])
        return (f"two slices at the same position {d[k]:.2f} mm along the normal ({slice_name(instances[order[k]])}, "
                f"{slice_name(instances[order[k + 1]])}): a second acquisition or a duplicate; not one volume"), {}
    wide = np.flatnonzero(steps > 1.5 * spacing)
    if wide.size:
        k = int(wide[0])
        missing = max(1, int(round(steps[k] / spacing)) - 1)
        return (f"{missing} slice(s) missing between {slice_name(instances[order[k]])} and "
                f"{slice_name(instances[order[k + 1]])} ({steps[k]:.2f} mm apart, spacing {spacing:.2f} mm); "
                f"reformats would be distorted"), {}
    if np.any(np.abs(steps - spacing) > tol):
        return (f"unequal slice spacing ({steps.min():.2f} to {steps.max():.2f} mm between slice positions); "
                f"resampling is not supported, refused"), {}
    along = pos[order[-1]] - pos[order[0]]
    drift = along - (along @ normal) * normal  # in-plane travel of the slice origin over the whole stack
    tilt, shifts = 0.0, None
    if np.linalg.norm(drift) > 0.5 * min(rs, cs):
        tilt = math.degrees(math.atan2(float(np.linalg.norm(drift)), abs(float(along @ normal))))
        if tilt > MAX_TILT_DEG:
            return (f"gantry/detector tilt of {tilt:.1f} degrees (more than {MAX_TILT_DEG:g}): the slices are "
                    f"sheared too far to be corrected; reformats refused"), {}
        rel = pos[order] - pos[order[0]]
        inplane = rel - np.outer(rel @ normal, normal)  # each slice origin's in-plane offset from the first
        # voxel (k, i, j) of the orthogonal grid is the file's pixel (i - di, j - dj) of slice k
        shifts = np.stack([inplane @ col_dir / rs, inplane @ row_dir / cs], axis=1)
        worst = np.abs(shifts).max(axis=0)
        if worst[0] > head.rows / 2 or worst[1] > head.columns / 2:
            return (f"gantry/detector tilt of {tilt:.1f} degrees shifts the last slice by {worst[0]:.0f} rows and "
                    f"{worst[1]:.0f} columns, more than half the field of view; reformats refused"), {}
    slice_dir = normal if d[-1] >= d[0] else -normal
    spacing_mean = abs(float(d[-1] - d[0])) / (n - 1)
    return None, {"order": [int(k) for k in order], "origin": pos[order[0]].copy(),
                  "directions": np.stack([slice_dir, col_dir, row_dir]),
                  "spacing": np.array([spacing_mean, rs, cs], np.float64), "tilt_deg": tilt, "shifts": shifts}


_CV_WARP_DTYPES = (np.uint8, np.int16, np.uint16, np.float32, np.float64)


def shift_slice(image: np.ndarray, rows: float, cols: float, pad: float) -> None:
    """Shift a 2-D slice in place by (`rows`, `cols`) pixels: ``out[i, j] = in[i - rows, j - cols]``,
    bilinear for fractional shifts (exact for whole pixels), `pad` where nothing is shifted in."""
    m = np.array([[1.0, 0.0, cols], [0.0, 1.0, rows]])
    src = image if image.dtype.type in _CV_WARP_DTYPES else image.astype(np.float64)
    out = cv2.warpAffine(np.ascontiguousarray(src), m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=pad)
    if image.dtype.kind in "iu" and out.dtype != image.dtype:
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    image[...] = out
