"""De-identified results: the source header as ``medviewer anonymize`` writes it (PS3.15 E.1), on which the
SR and SC are built, and an applicability reason without what the Basic Profile removes."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

__all__ = ["header_only", "deidentified_source"]


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
