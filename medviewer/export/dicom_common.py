"""What the DICOM result writers share: MedViewer's private coding scheme (PS3.16 8.2), its declaration
(PS3.3 C.12.1.1.2), the Type 2 completion of a source header (PS3.5 7.4) and the error they raise.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset

from medviewer.errors import MedViewerError
from medviewer.inference.applicability import Status

__all__ = ["SCHEME", "MANUFACTURER", "SR_SERIES_NUMBER", "SC_SERIES_NUMBER", "DicomExportError", "label_code",
           "with_type2", "coding_scheme_identification", "as_applicability_dict"]

#: coding scheme designator of MedViewer's own codes (labels, flag, applicability), PS3.16 8.2 private scheme
SCHEME = "99MEDVIEWER"
MANUFACTURER = "MedViewer"
#: series numbers of the new series (chosen high so they sort after the acquired series)
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


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
        Status.IN_SCOPE.value: CodedConcept("IN_SCOPE", SCHEME, "In scope"),
        Status.OUT_OF_SCOPE.value: CodedConcept("OUT_OF_SCOPE", SCHEME, "Out of scope"),
        Status.UNKNOWN.value: CodedConcept("UNKNOWN_SCOPE", SCHEME, "Intended use not stated"),
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


def as_applicability_dict(applicability: Any) -> Mapping[str, Any] | None:
    """The applicability as the plain mapping the writers read: ``None`` stays ``None``; a typed assessment
    (anything with ``to_dict()``, e.g. :class:`medviewer.inference.applicability.Assessment`) is converted
    at this boundary; a mapping (``{"status": ..., "reasons": [...]}``) is passed through.

    Raises
    ------
    DicomExportError
        Neither a mapping nor an object with ``to_dict()``.
    """
    if applicability is None:
        return None
    to_dict = getattr(applicability, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(applicability, Mapping):
        return applicability
    raise DicomExportError(f"applicability must be a mapping or have to_dict(), not {type(applicability).__name__}")
