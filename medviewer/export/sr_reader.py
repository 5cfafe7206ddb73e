"""Reading TID 1500 Measurement Reports -- ours or another vendor's -- back into plain findings (highdicom)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["read_sr_findings"]


def read_sr_findings(ds: Dataset) -> list[dict[str, Any]]:
    """The measurement groups of a TID 1500 Measurement Report, ours or another vendor's.

    Reads Comprehensive 3D, Comprehensive and Enhanced SR (PS3.3 A.35.13, A.35.3, A.35.2) with highdicom:
    planar ROI groups (TID 1410) first, then image-level groups (TID 1501). A planar region is an SCOORD
    (2-D, on a referenced image) or an SCOORD3D (patient coordinates in a frame of reference).

    Returns
    -------
    list[dict]
        Per group: ``{"tracking_identifier": str or None, "finding": meaning or None,
        "measurements": {meaning: float}, "evaluations": {meaning: value meaning}, "graphic_type": str or
        None (POINT, MULTIPOINT, POLYLINE, CIRCLE, ELLIPSE, POLYGON, ELLIPSOID), "polyline": float (N, 2)
        (column, row) SCOORD pixel coordinates or None, "coordinates_3d": float (N, 3) mm or None,
        "referenced_sop_instance_uid": str or None, "referenced_frame_numbers": [int] or None}``.

    Raises
    ------
    ValueError
        Not a structured report holding a TID 1500 Measurement Report (highdicom's message).
    """
    import highdicom as hd
    from pydicom.uid import UID

    classes = {UID("1.2.840.10008.5.1.4.1.1.88.34"): hd.sr.Comprehensive3DSR,
               UID("1.2.840.10008.5.1.4.1.1.88.33"): hd.sr.ComprehensiveSR,
               UID("1.2.840.10008.5.1.4.1.1.88.22"): hd.sr.EnhancedSR}
    if isinstance(ds, tuple(classes.values())):
        sr = ds
    else:
        cls = classes.get(UID(str(ds.get("SOPClassUID", ""))))
        if cls is None:
            raise ValueError(f"SOP class {ds.get('SOPClassUID', '(none)')} is not a Comprehensive 3D, "
                             "Comprehensive or Enhanced SR")
        sr = cls.from_dataset(ds)
    content = sr.content
    out: list[dict[str, Any]] = []
    for group in content.get_planar_roi_measurement_groups() + content.get_image_measurement_groups():
        item: dict[str, Any] = {
            "tracking_identifier": group.tracking_identifier,
            "finding": group.finding_type.meaning if group.finding_type else None,
            "measurements": {m.name.meaning: float(m.value) for m in group.get_measurements()},
            "evaluations": {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()},
            "graphic_type": None,
            "polyline": None,
            "coordinates_3d": None,
            "referenced_sop_instance_uid": None,
            "referenced_frame_numbers": None,
        }
        region = getattr(group, "roi", None)
        if region is not None:
            item["graphic_type"] = str(region.GraphicType)
            if str(region.ValueType) == "SCOORD3D":
                item["coordinates_3d"] = np.asarray(region.value, float).reshape(-1, 3)
            else:
                item["polyline"] = np.asarray(region.value, float).reshape(-1, 2)
                image = region.ContentSequence[0] if "ContentSequence" in region else None  # SELECTED FROM
                if image is not None and "ReferencedSOPSequence" in image:
                    ref = image.ReferencedSOPSequence[0]
                    item["referenced_sop_instance_uid"] = str(ref.ReferencedSOPInstanceUID)
                    if "ReferencedFrameNumber" in ref:
                        item["referenced_frame_numbers"] = [int(v) for v in np.atleast_1d(ref.ReferencedFrameNumber)]
        out.append(item)
    return out
