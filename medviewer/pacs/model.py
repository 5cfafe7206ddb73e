"""What the PACS commands exchange: study matches, instance references, the client interface.

Both transports (:mod:`medviewer.pacs.dimse`, :mod:`medviewer.pacs.web`) implement :class:`PacsClient`;
everything above them (``get`` with resume and verification, the CLI, the GUI) uses only this interface.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from medviewer.pacs.node import Node

__all__ = ["StudyQuery", "StudyMatch", "InstanceRef", "PacsClient", "STUDY_KEYWORDS", "Sink"]

#: the attributes a study-level query returns, as DICOM keywords (PS3.4 C.6.2.1.2 Study level keys)
STUDY_KEYWORDS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyDescription",
                  "ModalitiesInStudy", "AccessionNumber", "NumberOfStudyRelatedInstances")

#: called with each received instance (a dataset with its file meta), returns nothing
Sink = Callable[[Dataset], None]


@dataclass(frozen=True)
class StudyQuery:
    """Study-level matching keys (PS3.4 C.2.2.2): empty fields match everything.

    ``patient_name`` and ``patient_id`` may hold ``*``/``?`` wild cards (PS3.4 C.2.2.2.4);
    ``study_date`` is ``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``-YYYYMMDD`` or ``YYYYMMDD-`` (range matching,
    C.2.2.2.5); ``study_instance_uid`` is single-value UID matching.
    """

    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    modality: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""

    def filters(self) -> dict[str, str]:
        """The non-empty keys as ``{keyword: value}`` (modality as ``ModalitiesInStudy``)."""
        pairs = {"PatientID": self.patient_id, "PatientName": self.patient_name, "StudyDate": self.study_date,
                 "ModalitiesInStudy": self.modality, "AccessionNumber": self.accession_number,
                 "StudyInstanceUID": self.study_instance_uid}
        return {k: v for k, v in pairs.items() if v}


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


@dataclass(frozen=True)
class StudyMatch:
    """One study a query matched; :meth:`to_json` uses the DICOM keywords of :data:`STUDY_KEYWORDS`."""

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_description: str = ""
    modalities_in_study: tuple[str, ...] = ()
    accession_number: str = ""
    number_of_study_related_instances: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyMatch:
        """From a C-FIND identifier or a QIDO-RS result (converted to a pydicom Dataset)."""
        mods = ds.get("ModalitiesInStudy", [])
        if isinstance(mods, str):
            mods = [m for m in mods.split("\\") if m]
        count = ds.get("NumberOfStudyRelatedInstances", None)
        try:
            count = None if count in (None, "") else int(count)
        except (TypeError, ValueError):
            count = None
        return cls(_text(ds, "StudyInstanceUID"), _text(ds, "PatientID"), _text(ds, "PatientName"),
                   _text(ds, "StudyDate"), _text(ds, "StudyDescription"), tuple(str(m) for m in mods or ()),
                   _text(ds, "AccessionNumber"), count)

    def to_json(self) -> dict[str, Any]:
        """``{StudyInstanceUID, PatientID, PatientName, StudyDate, StudyDescription, ModalitiesInStudy (list),
        AccessionNumber, NumberOfStudyRelatedInstances (int or null)}``."""
        return dict(zip(STUDY_KEYWORDS, (
            self.study_instance_uid, self.patient_id, self.patient_name, self.study_date,
            self.study_description, list(self.modalities_in_study), self.accession_number,
            self.number_of_study_related_instances), strict=True))


@dataclass(frozen=True)
class InstanceRef:
    """One instance of a study, as a query lists it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""


@dataclass
class StoreOutcome:
    """What a C-STORE / STOW-RS of several instances did: stored SOP Instance UIDs and failures."""

    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, reason)


class PacsClient(ABC):
    """One PACS node, over DIMSE or DICOMweb. Every method raises
    :class:`~medviewer.pacs.node.PacsError` (one line) on failure."""

    node: Node

    @abstractmethod
    def echo(self) -> float:
        """Check the node answers (C-ECHO, or a QIDO-RS query with limit 1); returns seconds taken."""

    @abstractmethod
    def find_studies(self, query: StudyQuery, limit: int | None = None) -> list[StudyMatch]:
        """Study-level query (C-FIND, or QIDO-RS ``/studies``)."""

    @abstractmethod
    def list_instances(self, study_instance_uid: str, series_instance_uid: str | None = None
                       ) -> list[InstanceRef]:
        """Every instance of a study (or of one of its series), from series- and image-level queries."""

    @abstractmethod
    def retrieve(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uids: Sequence[str] | None,
                 sink: Sink, sop_class_uids: Iterable[str] = (), cancel: threading.Event | None = None) -> None:
        """Retrieve a whole series (``sop_instance_uids`` None) or some of its instances, passing each
        received dataset to ``sink`` (C-GET, or WADO-RS). ``sop_class_uids``: the SOP classes to expect
        (DIMSE proposes storage contexts for them). Stops early when ``cancel`` is set."""

    @abstractmethod
    def store(self, datasets: Sequence[Dataset]) -> StoreOutcome:
        """Store instances (C-STORE, or STOW-RS)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release network resources."""

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
