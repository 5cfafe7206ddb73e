"""The overlay as the reader saw it, as a DICOM Secondary Capture (PS3.3 A.8.1) in the source study."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer import __version__
from medviewer.export.dicom_common import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    DicomExportError,
    _check_source,
    _frame_number,
    _quiet,
    with_type2,
)

__all__ = ["build_overlay_sc"]


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """Patient Orientation (PS3.3 C.7.6.1.1.1) of the rows and columns: the source's, else the dominant
    axis of Image Orientation (Patient) per direction; None when neither is known."""
    po = [str(v) for v in (source.get("PatientOrientation") or [])]
    if len(po) == 2 and all(v and v[0] in "APRLHF" for v in po):
        return po[0][0], po[1][0]
    iop = source.get("ImageOrientationPatient")
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):  # enhanced objects
        if not iop and source.get(seq):
            plane = source.get(seq)[0].get("PlaneOrientationSequence")
            iop = plane[0].get("ImageOrientationPatient") if plane else None
    if not iop or len(iop) != 6:
        return None
    letters = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z (LPS)
    out = []
    for vec in (np.asarray(iop[:3], float), np.asarray(iop[3:], float)):
        axis = int(np.argmax(np.abs(vec)))
        out.append(letters[axis][0 if vec[axis] > 0 else 1])
    return out[0], out[1]


def build_overlay_sc(source: Dataset, overlay_rgb: np.ndarray, card: Any, *, series_instance_uid: str | None = None,
                     series_number: int = SC_SERIES_NUMBER, sop_instance_uid: str | None = None,
                     instance_number: int = 1, frame: int | None = None):
    """A Secondary Capture of the overlay as the reader saw it, in the source study.

    Parameters
    ----------
    source
        The scored image's header.
    overlay_rgb
        uint8 ``(H, W, 3)`` RGB (e.g. :func:`medviewer.export.render_overlay`), any size.
    card
        The model card (name and version go into the series and derivation descriptions).
    frame
        0-based frame of a multi-frame source (for the Source Image Sequence reference).

    Returns
    -------
    highdicom.sc.SCImage
        Burned In Annotation ``YES``, Image Type ``DERIVED\\SECONDARY``, Source Image Sequence -> the source.

    Raises
    ------
    DicomExportError
        Not an ``(H, W, 3)`` uint8 image, or a header without the UIDs to reference.
    """
    import highdicom as hd

    _check_source(source)
    source = with_type2(source)
    rgb = np.asarray(overlay_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DicomExportError(f"overlay must be uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    orientation = _patient_orientation(source)
    with _quiet():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=np.ascontiguousarray(rgb), photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid or generate_uid(), series_number=series_number,
            sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=instance_number,
            manufacturer=MANUFACTURER, patient_orientation=orientation or ("L", "P"),
            series_description=f"AI overlay {card.name} {card.version}"[:64])

    if orientation is None:  # highdicom insists on one; Patient Orientation is Type 2: empty = unknown
        sc.PatientOrientation = None
    # General Series Laterality (Type 2C, PS3.3 C.7.3.1): the source's, else its Image Laterality, else
    # empty (unknown) -- dciodvfy requires it whenever Image Laterality is absent, which it is in SC
    # -- unless the source names an unpaired body part (copied as Body Part Examined), where it is absent
    lat = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "")
    body = str(source.get("BodyPartExamined", "") or "").upper()
    if body:
        sc.BodyPartExamined = body
    if lat in ("R", "L"):
        sc.Laterality = lat
    elif body in _UNPAIRED:
        if "Laterality" in sc:
            del sc.Laterality
    else:
        sc.Laterality = ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"class activation map and flagged regions of {card.name} {card.version}"[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    frames = _frame_number(source, frame)
    if frames:
        ref.ReferencedFrameNumber = frames[0]
    sc.SourceImageSequence = [ref]
    sc.SoftwareVersions = f"medviewer {__version__}"
    return sc


#: Body Part Examined defined terms (PS3.16 Annex L) of unpaired structures: no Laterality (PS3.3 C.7.3.1)
_UNPAIRED = frozenset({"CHEST", "ABDOMEN", "PELVIS", "HEAD", "BRAIN", "NECK", "SKULL", "CSPINE", "TSPINE", "LSPINE",
                       "SSPINE", "SPINE", "COCCYX", "SACRUM", "HEART", "THORAX", "ABDOMENPELVIS", "CHESTABDOMEN",
                       "CHESTABDPELVIS", "HEADNECK", "WHOLEBODY", "STERNUM", "LIVER", "PANCREAS", "SPLEEN"})
