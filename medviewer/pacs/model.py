"""What the PACS commands exchange: study matches, instance references, the client interface.

Both transports (:mod:`medviewer.pacs.dimse`, :mod:`medviewer.pacs.web`) implement :class:`PacsClient`;
everything above them (``get`` with resume and verification, the CLI, the GUI) uses only this interface.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydicom.dataset import Dataset

from medviewer.pacs.node import Node, PacsError

__all__ = ["StudyQuery", "StudyMatch", "InstanceRef", "PacsClient", "STUDY_KEYWORDS", "Sink", "dicom_date_range",
           "check_matches", "check_modalities", "MAX_SERIES_CHECKS"]

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

    def normalized(self) -> StudyQuery:
        """This query with ``study_date`` checked and written as DICOM wants it (:func:`dicom_date_range`).

        Raises
        ------
        PacsError
            ``study_date`` is not a date or a date range.
        """
        from dataclasses import replace

        return replace(self, study_date=dicom_date_range(self.study_date)) if self.study_date else self

    def filters(self) -> dict[str, str]:
        """The non-empty keys as ``{keyword: value}`` (modality as ``ModalitiesInStudy``)."""
        pairs = {"PatientID": self.patient_id, "PatientName": self.patient_name, "StudyDate": self.study_date,
                 "ModalitiesInStudy": self.modality, "AccessionNumber": self.accession_number,
                 "StudyInstanceUID": self.study_instance_uid}
        return {k: v for k, v in pairs.items() if v}


_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DA = re.compile(r"^\d{8}$")


def _one_date(text: str, whole: str) -> str:
    m = _ISO_DATE.match(text)
    if m:
        text = "".join(m.groups())
    if not _DA.match(text):
        raise PacsError(f"--study-date {whole!r}: not a date; use YYYYMMDD, YYYY-MM-DD or a range "
                        "YYYYMMDD-YYYYMMDD, -YYYYMMDD, YYYYMMDD-")
    from datetime import datetime

    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise PacsError(f"--study-date {whole!r}: {text} is not a calendar date") from None
    return text


def dicom_date_range(text: str) -> str:
    """A study-date matching value as DICOM range matching wants it (PS3.4 C.2.2.2.5, DA values PS3.5 6.2).

    Accepts ``YYYYMMDD``, ``YYYY-MM-DD`` (ISO 8601, converted), ``A-B``, ``-B``, ``A-`` with A, B in either
    form (ISO dates in a range are separated by ``..``/``/`` or written ``YYYYMMDD``); returns e.g.
    ``20040101`` or ``20040101-20041231``.

    Raises
    ------
    PacsError
        Anything else, an impossible date (20040231), or a range that ends before it starts.
    """
    whole = text.strip()
    if not whole:
        return ""
    if _ISO_DATE.match(whole):
        return _one_date(whole, whole)
    for sep in ("..", "/"):
        if sep in whole:
            lo, hi = whole.split(sep, 1)
            break
    else:
        if whole.count("-") != 1:
            raise PacsError(f"--study-date {whole!r}: not a date; use YYYYMMDD, YYYY-MM-DD or a range "
                            "YYYYMMDD-YYYYMMDD, -YYYYMMDD, YYYYMMDD-")
        lo, hi = whole.split("-")
    lo, hi = lo.strip(), hi.strip()
    if not lo and not hi:
        raise PacsError(f"--study-date {whole!r}: an empty range")
    a = _one_date(lo, whole) if lo else ""
    b = _one_date(hi, whole) if hi else ""
    if a and b and b < a:
        raise PacsError(f"--study-date {whole!r}: the range ends before it starts")
    return f"{a}-{b}"


def check_matches(query: StudyQuery, matches: list[StudyMatch]) -> tuple[list[StudyMatch], list[str]]:
    """Drop the matches that contradict ``query`` and say why: a PACS may ignore a matching key it does not
    support (Modalities in Study is optional for an SCP, PS3.4 C.6.2.1.2) and return every study.

    A match whose returned Modalities in Study lacks the modality asked for, or whose Study Date is outside
    the range asked for, is dropped; a match that does not return the attribute cannot be checked and is
    kept. Returns ``(kept, notes)``, one note per kind of problem (for a warning line).
    """
    notes: list[str] = []
    kept = list(matches)
    mod = query.modality.strip().upper()
    if mod and not any(c in mod for c in "*?\\"):
        wrong = [m for m in kept if m.modalities_in_study and mod not in {x.upper() for x in m.modalities_in_study}]
        unknown = [m for m in kept if not m.modalities_in_study]
        if wrong:
            notes.append(f"the PACS ignored the modality key: {len(wrong)} of {len(kept)} studies it returned "
                         f"have no {mod} and were left out")
            kept = [m for m in kept if m not in wrong]
        if unknown:
            notes.append(f"the PACS returned no Modalities in Study for {len(unknown)} studies: they may not "
                         f"contain {mod}")
    if query.study_date:
        lo, _, hi = query.study_date.partition("-") if "-" in query.study_date else (
            query.study_date, "", query.study_date)
        wrong = [m for m in kept if _DA.match(m.study_date) and ((lo and m.study_date < lo) or (hi and m.study_date > hi))]
        if wrong:
            notes.append(f"the PACS ignored the study date key: {len(wrong)} studies outside {query.study_date} "
                         "were left out")
            kept = [m for m in kept if m not in wrong]
    return kept, notes


#: at most this many studies without Modalities in Study get their series queried by :func:`check_modalities`
MAX_SERIES_CHECKS = 50


def check_modalities(query: StudyQuery, kept: list[StudyMatch], notes: list[str],
                     series_modalities: Callable[[list[str]], dict[str, set[str]]]) -> tuple[list[StudyMatch], list[str]]:
    """After :func:`check_matches`: the studies a PACS returned without Modalities in Study (an optional return
    key, PS3.4 C.6.2.1.2; dcmtk's dcmqrscp never fills it) are checked with a series-level query, whose
    Modality (0008,0060) is a required key: those without the modality asked for are dropped, the others get
    the modalities found. ``series_modalities(study_uids)`` returns ``{study uid: {modality, ...}}`` (studies it
    could not tell left out). Only for a plain modality (no wild card) and at most :data:`MAX_SERIES_CHECKS`
    studies; a failed series query leaves the studies kept and says so. Returns ``(kept, notes)``."""
    mod = query.modality.strip().upper()
    unknown = [m for m in kept if not m.modalities_in_study]
    if not mod or any(c in mod for c in "*?\\") or not unknown or len(unknown) > MAX_SERIES_CHECKS:
        return kept, notes
    try:
        found = series_modalities([m.study_instance_uid for m in unknown])
    except PacsError as exc:
        return kept, [*notes, f"the series query that checks them failed: {exc}"]
    checked = {uid: tuple(sorted(mods)) for uid, mods in found.items() if mods}
    out, dropped = [], 0
    for m in kept:
        mods = checked.get(m.study_instance_uid)
        if m.modalities_in_study or mods is None:
            out.append(m)
        elif mod in mods:
            out.append(replace(m, modalities_in_study=mods))
        else:
            dropped += 1
    still = sum(1 for m in out if not m.modalities_in_study)
    notes = [n for n in notes if not n.startswith("the PACS returned no Modalities in Study")]
    text = (f"the PACS returned no Modalities in Study for {len(unknown)} studies; their series were queried: "
            f"{dropped} without {mod} left out")
    if still:
        text += f", {still} could not be checked (they may not contain {mod})"
    return out, [*notes, text]


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
    #: warnings for the caller to show, one line each: from the last :meth:`find_studies` (the PACS ignored a
    #: matching key), and what :meth:`retrieve` and :meth:`store` add (a C-GET/C-MOVE that ended with failed
    #: sub-operations, a STOW-RS answered without a Store Instances Response). :meth:`find_studies` and
    #: :func:`~medviewer.pacs.retrieve.retrieve_study` start a new list; the caller clears it before a store.
    notes: list[str] = []

    def add_note(self, text: str) -> None:
        """Append one warning line to :attr:`notes` (a new list per client: the class default is shared)."""
        self.notes = [*self.notes, text]

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
