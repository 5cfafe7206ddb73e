"""AI results as DICOM: a TID 1500 Measurement Report (Comprehensive 3D SR) and a Secondary Capture.

Written with highdicom, so any PACS or viewer can read them (OHIF, 3D Slicer, Weasis show TID 1500
findings and their regions). Per scored image:

* **SR** (:func:`build_sr`): Comprehensive 3D SR Storage, PS3.16 TID 1500 "Measurement Report", in the
  source study, in its own series. Its observer is the model as a device (TID 1004: name, version,
  the SHA-256 of ``model.onnx`` as the device UID's entropy and serial number). Imaging Measurements hold

  - per label a TID 1501 group (tracking identifier = the label; finding type = the label as a code of
    the private scheme ``99MEDVIEWER``; TID 4019 algorithm identification = model name, version and
    parameters ``sha256=...``, ``threshold[LABEL]=...``): Measurement "Probability" (DCM 122157, unit
    ``1``), the operating point's threshold, and -- for labels that can be flagged -- the qualitative
    evaluation "Flagged at operating point" = Present (SCT 52101004) / Absent (SCT 272519000);
  - with an applicability result (the intended-use policy's), a TID 1501 group "Model applicability" =
    In scope / Out of scope / Intended use not stated, the out-of-distribution score and threshold, whether
    the reader overrode it, and one TEXT item per reason;
  - per flagged region a TID 1410 planar ROI group: the region's outline as a closed SCOORD POLYLINE on the
    source image (PS3.3 C.18.6.1.1 pixel coordinates: ``(0, 0)`` is the top-left corner of the top-left
    pixel, so pixel centres are at ``+0.5``), its area in mm² when the pixel spacing is known, and the
    peak of the class activation map in it.

The private scheme is declared in the SR's Coding Scheme Identification Sequence (0008,0110) (PS3.3
C.12.1.1.2). Type 2 attributes of the Patient and General Study modules that the source lacks (as
converted and de-identified files often do) are written empty, as PS3.5 7.4 allows (:func:`with_type2`).

* **Secondary Capture** (:func:`build_overlay_sc`): SC Image Storage of the RGB overlay as the reader saw
  it (Burned In Annotation ``YES``), in the same study, its own series, referencing the source image.

:class:`DicomResultWriter` writes both for many images, one SR series and one SC series per study.

Example
-------
>>> writer = DicomResultWriter(out / "dicom", card)  # doctest: +SKIP
>>> paths = writer.write(header, prediction, overlay_rgb, applicability={"status": "in_scope", "reasons": []})
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer import __version__
from medviewer.errors import MedViewerError

__all__ = [
    "SCHEME",
    "MANUFACTURER",
    "DicomExportError",
    "label_code",
    "with_type2",
    "coding_scheme_identification",
    "build_sr",
    "build_overlay_sc",
    "DicomResultWriter",
    "read_sr_findings",
    "deidentified_source",
    "header_only",
    "SR_SERIES_NUMBER",
    "SC_SERIES_NUMBER",
]

#: coding scheme designator of MedViewer's own codes (labels, flag, applicability), PS3.16 8.2 private scheme
SCHEME = "99MEDVIEWER"
MANUFACTURER = "MedViewer"
#: series numbers of the new series (chosen high so they sort after the acquired series)
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_MAX_POLYGON_POINTS = 200


class DicomExportError(MedViewerError, ValueError):
    """The source header or the inputs cannot make a valid DICOM object (one line: what is missing)."""


def label_code(label: str):
    """The label as a coded concept of the private scheme :data:`SCHEME` (value = label, max 64 chars)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=label[:64], scheme_designator=SCHEME, meaning=label[:64])


def _codes():
    from highdicom.sr import CodedConcept

    return {
        "no_units": CodedConcept("1", "UCUM", "no units"),
        "mm2": CodedConcept("mm2", "UCUM", "square millimeter"),
        "flag": CodedConcept("FLAGGED", SCHEME, "Flagged at operating point"),
        "threshold": CodedConcept("THRESHOLD", SCHEME, "Operating point threshold"),
        "peak": CodedConcept("CAMPEAK", SCHEME, "Peak class activation in region"),
        "applicability": CodedConcept("APPLICABILITY", SCHEME, "Model applicability"),
        "in_scope": CodedConcept("IN_SCOPE", SCHEME, "In scope"),
        "out_of_scope": CodedConcept("OUT_OF_SCOPE", SCHEME, "Out of scope"),
        "unknown": CodedConcept("UNKNOWN_SCOPE", SCHEME, "Intended use not stated"),
        "ood_score": CodedConcept("OOD_SCORE", SCHEME, "Out-of-distribution score"),
        "ood_threshold": CodedConcept("OOD_THRESHOLD", SCHEME, "Out-of-distribution threshold"),
        "overridden": CodedConcept("OVERRIDDEN", SCHEME, "Intended use overridden"),
        "reason": CodedConcept("APPL_REASON", SCHEME, "Applicability reason"),
        "not_assessed": CodedConcept("NOT_ASSESSED", SCHEME, "Not assessed: outside intended use"),
        "procedure": CodedConcept("363679005", "SCT", "Imaging procedure"),
    }


@contextmanager
def _quiet():
    """highdicom warns about odd values in the source header (e.g. a one-component person name); they
    are copied unchanged, so the warning says nothing about what we wrote."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


#: Type 2 attributes of the Patient (PS3.3 C.7.1.1) and General Study (C.7.2.1) modules that highdicom copies
#: from the source onto the SR and SC
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def with_type2(source: Dataset) -> Dataset:
    """``source`` itself when it has every Type 2 attribute the results copy, else a shallow copy with the
    missing ones present and empty (zero length, PS3.5 7.4: "known to be unknown") -- converted and
    de-identified files often lack Patient's Birth Date or Accession Number."""
    missing = [kw for kw in _TYPE2 if kw not in source]
    if not missing:
        return source
    out = Dataset()
    for elem in source:
        if elem.tag != 0x7FE00010:  # the header is enough to reference the image
            out.add(elem)
    out.file_meta = getattr(source, "file_meta", Dataset())
    for kw in missing:
        setattr(out, kw, "")
    return out


def coding_scheme_identification() -> list[Dataset]:
    """Coding Scheme Identification Sequence (0008,0110) items (PS3.3 C.12.1.1.2.1) declaring :data:`SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "MedViewer AI result codes"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    item.CodingSchemeVersion = "1"
    return [item]


def _check_source(source: Dataset) -> None:
    missing = [k for k in _REQUIRED if not source.get(k)]
    if missing:
        raise DicomExportError(f"source header lacks {', '.join(missing)}: cannot reference it from DICOM results")


def _frame_number(source: Dataset, frame: int | None) -> list[int] | None:
    n = int(source.get("NumberOfFrames", 1) or 1)
    if n <= 1:
        return None
    return [int(frame or 0) + 1]  # Referenced Frame Number is 1-based (PS3.3 C.4.11)


def _outline(region: Any, rows: int, cols: int) -> np.ndarray:
    """Closed polyline ``(N, 2)`` float32 (column, row) in SCOORD pixel coordinates."""
    import cv2

    pts = np.asarray(region.contour, np.float32).reshape(-1, 2)
    if len(pts) >= 3:
        if len(pts) > _MAX_POLYGON_POINTS:
            eps = 0.5
            while True:
                simple = cv2.approxPolyDP(pts.reshape(-1, 1, 2), eps, True).reshape(-1, 2)
                if len(simple) <= _MAX_POLYGON_POINTS or eps > max(rows, cols):
                    break
                eps *= 2
            pts = simple.astype(np.float32)
        pts = pts + 0.5  # pixel centres
    if len(np.unique(pts, axis=0)) < 3:  # a line or a dot: use the bounding box
        x0, y0, x1, y1 = region.bbox
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    pts[:, 0] = np.clip(pts[:, 0], 0, cols)
    pts[:, 1] = np.clip(pts[:, 1], 0, rows)
    return np.vstack([pts, pts[:1]])


@dataclass(frozen=True)
class _Applicability:
    status: str
    reasons: list[str]
    ood_score: float | None
    ood_threshold: float | None
    overridden: bool


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


_PUNCTUATION = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                              "\u201d": '"', "\u2264": "<=", "\u2265": ">=", "\u00d7": "x", "\u2026": "..."})


def _ascii_punctuation(text: str) -> str:
    """Typographic punctuation as ASCII: the SR copies the source's Specific Character Set (often ISO_IR 100
    or none), in which an en dash cannot be encoded (pydicom would write '?')."""
    return text.translate(_PUNCTUATION)


def _applicability(applicability: Mapping[str, Any] | None) -> _Applicability | None:
    if applicability is None:
        return None
    status = str(applicability.get("status", ""))
    if status not in ("in_scope", "out_of_scope", "unknown"):
        raise DicomExportError(f"applicability status {status!r} is not 'in_scope', 'out_of_scope' or 'unknown'")
    reasons = [str(r) for r in applicability.get("reasons", []) or []]
    return _Applicability(status, reasons, _finite(applicability.get("ood_score")),
                          _finite(applicability.get("ood_threshold")), bool(applicability.get("overridden", False)))


def build_sr(source: Dataset, prediction: Any, card: Any, *, applicability: Mapping[str, Any] | None = None,
             frame: int | None = None, series_instance_uid: str | None = None, series_number: int = SR_SERIES_NUMBER,
             sop_instance_uid: str | None = None, instance_number: int = 1):
    """A TID 1500 Measurement Report (Comprehensive 3D SR) of one prediction on one image.

    Parameters
    ----------
    source
        The scored image's header (pixel data not needed): patient, study, series and SOP attributes.
    prediction
        A :class:`medviewer.inference.session.Prediction` (``scores``, ``flagged``, ``regions`` with bbox
        and contour in pixels of the source image).
    card
        The model's :class:`medviewer.inference.card.ModelCard` (name, version, sha256, operating points).
    applicability
        ``{"status": "in_scope" | "out_of_scope" | "unknown", "reasons": [str, ...]}``, optionally with
        ``"ood_score"``, ``"ood_threshold"`` (numbers) and ``"overridden"`` (bool) -- what
        :meth:`medviewer.workstation.intended_use.Assessment.to_dict` gives. Default: the prediction's own
        ``applicability`` attribute when it has one, else none is recorded.
    frame
        0-based frame of a multi-frame source (referenced as frame ``frame + 1``); ignored otherwise.
    series_instance_uid, series_number, sop_instance_uid, instance_number
        Identity of the new SR; UIDs are generated when not given.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        A pydicom Dataset; ``save_as(path)`` writes it.

    Raises
    ------
    DicomExportError
        The header lacks the UIDs to reference, or a bad applicability status.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _check_source(source)
    source = with_type2(source)
    c = _codes()
    if applicability is None:
        applicability = getattr(prediction, "applicability", None)
    app = _applicability(applicability)
    withheld = app is not None and app.status == "out_of_scope" and not app.overridden
    rows, cols = int(source.get("Rows", 0) or 0), int(source.get("Columns", 0) or 0)
    frames = _frame_number(source, frame)

    params = {"sha256": card.sha256}
    for op in card.operating_points:
        params[f"threshold[{op.label}]"] = f"{op.threshold:.6g} ({op.criterion})"
    algo = hd.sr.AlgorithmIdentification(name=card.name, version=card.version, parameters=
                                         [f"{k}={v}" for k, v in params.items()])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[card.sha256, card.name, card.version]),
        name=card.name, manufacturer_name=MANUFACTURER, model_name=f"{card.name} {card.version}",
        serial_number=card.sha256[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))

    src_group = hd.sr.SourceImageForMeasurementGroup.from_source_image(source, referenced_frame_numbers=frames)
    groups: list[Any] = []
    positive = set(card.positive_labels)
    for label in prediction.labels:
        measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=float(prediction.scores[label]),
                                          unit=c["no_units"])]
        op = card.operating_point(label)
        if op is not None:
            measurements.append(hd.sr.Measurement(name=c["threshold"], value=float(op.threshold),
                                                  unit=c["no_units"]))
        evaluations = []
        if label in positive:
            if withheld:  # outside intended use: neither present nor absent
                value = c["not_assessed"]
            else:
                value = codes.SCT.Present if label in prediction.flagged else codes.SCT.Absent
            evaluations.append(hd.sr.QualitativeEvaluation(name=c["flag"], value=value))
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{label} score"),
            finding_type=label_code(label), algorithm_id=algo, measurements=measurements,
            qualitative_evaluations=evaluations or None, source_images=[src_group])
        if withheld and label in positive:
            for reason in app.reasons:  # type: ignore[union-attr]
                group[0].ContentSequence.append(hd.sr.TextContentItem(
                    name=c["reason"], value=_ascii_punctuation(reason)[:1024],
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        groups.append(group)
    if app is not None:
        measurements = [hd.sr.Measurement(name=c[key], value=value, unit=c["no_units"])
                        for key, value in (("ood_score", app.ood_score), ("ood_threshold", app.ood_threshold))
                        if value is not None]
        evaluations = [hd.sr.QualitativeEvaluation(name=c["applicability"], value=c[app.status])]
        if app.overridden:
            evaluations.append(hd.sr.QualitativeEvaluation(name=c["overridden"], value=codes.SCT.Present))
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="applicability"),
            finding_type=c["applicability"], algorithm_id=algo, measurements=measurements or None,
            qualitative_evaluations=evaluations, source_images=[src_group])
        for reason in app.reasons:
            group[0].ContentSequence.append(hd.sr.TextContentItem(
                name=c["reason"], value=_ascii_punctuation(reason)[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        groups.append(group)
    for i, region in enumerate(prediction.regions, 1):
        if not rows or not cols:
            raise DicomExportError("source header lacks Rows/Columns: cannot place regions")
        image_region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_outline(region, rows, cols),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source, referenced_frame_numbers=frames))
        measurements = [hd.sr.Measurement(name=c["peak"], value=float(region.peak), unit=c["no_units"])]
        if region.area_mm2 is not None:
            measurements.append(hd.sr.Measurement(name=codes.SCT.Area, value=float(region.area_mm2),
                                                  unit=c["mm2"]))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                         identifier=f"{region.label} region {i}"),
            referenced_region=image_region, finding_type=label_code(region.label), algorithm_id=algo,
            measurements=measurements))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=c["procedure"],
                                     imaging_measurements=groups)
    with _quiet():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source], content=report[0], series_instance_uid=series_instance_uid or generate_uid(),
            series_number=series_number, sop_instance_uid=sop_instance_uid or generate_uid(),
            instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
            is_verified=False, series_description=f"AI results {card.name} {card.version}"[:64],
            institution_name=source.get("InstitutionName") or None)
    sr.SoftwareVersions = f"medviewer {__version__}"
    sr.CodingSchemeIdentificationSequence = coding_scheme_identification()
    return sr


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


@dataclass
class _StudySeries:
    sr_uid: str = field(default_factory=generate_uid)
    sc_uid: str = field(default_factory=generate_uid)
    sr_count: int = 0
    sc_count: int = 0


#: De-identification attributes copied from the de-identified source onto the SR/SC (PS3.3 C.7.1.1, PS3.15 E.1)
_DEID_KEYWORDS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                  "LongitudinalTemporalInformationModified")


def header_only(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` without Pixel Data (and float/double pixel data): cheap to de-identify."""
    out = Dataset()
    for elem in ds:
        if elem.tag not in (0x7FE00010, 0x7FE00008, 0x7FE00009):
            out.add(elem)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    out.preamble = getattr(ds, "preamble", None)
    return out


def deidentified_source(source: Dataset, options: Any = None, key: bytes | None = None) -> Dataset:
    """The source header as ``medviewer anonymize`` would write it (PS3.15 E.1 Basic Profile + ``options``).

    With the same ``key`` the Study, Series and SOP Instance UIDs and the patient pseudonym are the ones in
    an anonymized copy of the source, so results built on it reference that copy.

    Raises
    ------
    medviewer.deid.BurnedInAnnotationError
        The source declares Burned In Annotation YES (its pixels may show identifying text).
    """
    from medviewer.deid import DeidOptions, anonymize_dataset

    return anonymize_dataset(header_only(source), options or DeidOptions(), key)


def _redact_reason(reason: str) -> str:
    """An applicability reason without the patient's age (Patient's Age is removed by the Basic Profile)."""
    if reason.startswith("patient age "):
        rest = reason.split(";", 1)
        return "patient age outside the model's range" + (f";{rest[1]}" if len(rest) > 1 else "")
    return reason


class DicomResultWriter:
    """Writes an SR (and an SC when an overlay is given) per scored image into one folder.

    All objects of one study from one writer share two new series (SR and SC), numbered
    :data:`SR_SERIES_NUMBER` and :data:`SC_SERIES_NUMBER`, with instance numbers counting up. Files are
    ``OUT/SR_<source SOP Instance UID>[_f<frame>].dcm`` and ``OUT/SC_...dcm``.

    Parameters
    ----------
    out_dir
        Destination folder (created on the first write).
    card
        The model card.
    deidentify
        A :class:`medviewer.deid.DeidOptions` (or ``True`` for the Basic Profile) to write de-identified
        results: each source header is de-identified first (:func:`deidentified_source`, with ``key``), so the
        SR/SC carry the patient pseudonym, the keyed Study Instance UID, reference the keyed SOP Instance UID
        of the source, are named after it, and say Patient Identity Removed YES with the method used. A patient
        age in an applicability reason is left out. ``None``: as the source.
    key
        The pseudonym key (:func:`medviewer.deid.load_key`); ``None`` uses the process's random key.
    """

    def __init__(self, out_dir: str | Path, card: Any, *, deidentify: Any = None, key: bytes | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.card = card
        if deidentify is True:
            from medviewer.deid import DeidOptions

            deidentify = DeidOptions()
        self.deidentify = deidentify or None
        self.key = key
        self._studies: dict[str, _StudySeries] = {}

    def write(self, source: Dataset, prediction: Any, overlay_rgb: np.ndarray | None = None, *,
              applicability: Mapping[str, Any] | None = None, frame: int | None = None) -> list[Path]:
        """Write the SR (and the SC) of one prediction; returns the files written.

        Raises
        ------
        DicomExportError
            Bad header or inputs (nothing is written then).
        medviewer.deid.BurnedInAnnotationError
            With ``deidentify``: the source declares burned-in annotation (nothing is written).
        """
        _check_source(source)
        if self.deidentify is not None:
            source = deidentified_source(source, self.deidentify, self.key)
            if applicability is None:
                applicability = getattr(prediction, "applicability", None)
            if applicability is not None:
                applicability = {**applicability,
                                 "reasons": [_redact_reason(r) for r in applicability.get("reasons") or []]}
        series = self._studies.setdefault(str(source.StudyInstanceUID), _StudySeries())
        stem = str(source.SOPInstanceUID) + (f"_f{int(frame)}" if _frame_number(source, frame) else "")
        objects: list[tuple[str, Dataset]] = []
        sr = build_sr(source, prediction, self.card, applicability=applicability, frame=frame,
                      series_instance_uid=series.sr_uid, instance_number=series.sr_count + 1)
        objects.append((f"SR_{stem}.dcm", sr))
        if overlay_rgb is not None:
            sc = build_overlay_sc(source, overlay_rgb, self.card, series_instance_uid=series.sc_uid,
                                  instance_number=series.sc_count + 1, frame=frame)
            objects.append((f"SC_{stem}.dcm", sc))
        if self.deidentify is not None:
            for _, ds in objects:
                for kw in _DEID_KEYWORDS:
                    if kw in source:
                        setattr(ds, kw, source[kw].value)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, ds in objects:
            path = self.out_dir / name
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        series.sr_count += 1
        series.sc_count += overlay_rgb is not None
        return paths


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
