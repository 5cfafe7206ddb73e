"""The AI result of one image as a PS3.16 TID 1500 Measurement Report (Comprehensive 3D SR), with highdicom.

See :mod:`medviewer.export.dicom_ai` for the content (per-label TID 1501 groups, the applicability group,
TID 1410 planar regions) and :class:`~medviewer.export.dicom_ai.DicomResultWriter` for writing many.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer import __version__
from medviewer.export.dicom_common import (
    MANUFACTURER,
    SR_SERIES_NUMBER,
    DicomExportError,
    _check_source,
    _codes,
    _frame_number,
    _quiet,
    as_applicability_dict,
    coding_scheme_identification,
    label_code,
    with_type2,
)
from medviewer.inference.applicability import Status

__all__ = ["build_sr"]

_MAX_POLYGON_POINTS = 200


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
    status: Status
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
    try:
        status = Status(str(applicability.get("status", "")))  # the serialised value back to the typed one
    except ValueError:
        raise DicomExportError(f"applicability status {applicability.get('status')!r} is not one of "
                               f"{', '.join(repr(s.value) for s in Status)}") from None
    reasons = [str(r) for r in applicability.get("reasons", []) or []]
    return _Applicability(status, reasons, _finite(applicability.get("ood_score")),
                          _finite(applicability.get("ood_threshold")), bool(applicability.get("overridden", False)))


def build_sr(source: Dataset, prediction: Any, card: Any, *, applicability: Any = None,
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
        :meth:`medviewer.inference.applicability.Assessment.to_dict` gives; such a typed assessment itself
        (anything with ``to_dict()``) is accepted and converted here. Default: the prediction's own
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
    app = _applicability(as_applicability_dict(applicability))
    withheld = app is not None and app.status is Status.OUT_OF_SCOPE and not app.overridden
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
        evaluations = [hd.sr.QualitativeEvaluation(name=c["applicability"], value=c[app.status.value])]
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
