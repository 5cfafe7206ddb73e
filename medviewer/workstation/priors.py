"""Compare with prior, Qt-free: find the same patient's earlier studies and choose the one to hang beside the current.

A radiologist reads a study against the patient's most recent comparable earlier one. :func:`find_priors` looks
for the patient's other studies

* among the studies opened in the workstation (scan results, :class:`medviewer.io.scan.Study`), matched by
  Patient ID (0010,0020), and
* on a PACS node, by a study-level C-FIND / QIDO-RS on Patient ID with Study Date range matching up to the
  current date and the current modality in Modalities in Study (PS3.4 C.6.2.1.2; through
  :mod:`medviewer.pacs`, whose :func:`~medviewer.pacs.model.check_matches` drops what a PACS that ignores a
  key returned),

and chooses the most recent **comparable** one: an earlier Study Date (0008,0020) (same day: an earlier Study
Time), the same modality, and the same Body Part Examined (0018,0015) when both studies record it (a PACS
study-level answer does not carry it: a remote study is checked once retrieved, :func:`fetch_prior`). Among
equally recent studies an opened one wins over one that must be retrieved. :func:`prior_series` then picks
the prior's series to hang beside the current series (same modality and body part, same Series Description,
else parallel slices, else the most images).

Nothing here talks to Qt; the workstation runs :func:`find_priors` and :func:`fetch_prior` in a worker task
(:mod:`medviewer.gui.priors`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StudyFacts", "PriorSearch", "body_part_of", "find_priors", "prior_series", "fetch_prior",
           "comparable_reason", "format_study_date"]

#: origin of a study opened in the workstation (else the PACS node it was found on)
LOCAL = "opened"


def format_study_date(da: str) -> str:
    """``YYYYMMDD`` (DA, PS3.5 6.2) as ``YYYY-MM-DD``; anything else as given (empty: ``"undated"``)."""
    da = (da or "").strip()
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if re.fullmatch(r"\d{8}", da) else (da or "undated")


def _header_text(inst: Any, keyword: str) -> str:
    ds = getattr(inst, "dataset", None)
    try:
        value = ds.get(keyword, "") if ds is not None else ""
    except Exception:  # noqa: BLE001 - a malformed value counts as absent
        return ""
    return "" if value is None else str(value).strip()


def body_part_of(series: Any) -> str:
    """Body Part Examined (0018,0015) of a series' first image, upper case, or ``""`` when not recorded."""
    insts = getattr(series, "instances", None) or []
    return _header_text(insts[0], "BodyPartExamined").upper() if insts else ""


@dataclass(frozen=True)
class StudyFacts:
    """What the choice of a prior needs to know about one study.

    Attributes
    ----------
    study_date, study_time
        DA ``YYYYMMDD`` and TM ``HHMMSS.FFFFFF`` (PS3.5 6.2), as recorded (may be empty).
    modalities
        Modalities of its series (or the PACS's Modalities in Study), upper case.
    body_parts
        Body Part Examined of its series, upper case; empty when unknown (a PACS study-level answer).
    origin
        :data:`LOCAL` for a study opened in the workstation, else the PACS node it was found on.
    """

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    origin: str = LOCAL

    @classmethod
    def from_study(cls, study: Any) -> StudyFacts:
        """From an opened :class:`medviewer.io.scan.Study`."""
        series = list(getattr(study, "series", []) or [])
        first = series[0].instances[0] if series and series[0].instances else None
        mods = tuple(dict.fromkeys(str(s.modality or "").upper() for s in series if s.modality))
        parts = tuple(dict.fromkeys(p for p in (body_part_of(s) for s in series) if p))
        return cls(str(study.study_instance_uid or ""), str(study.patient_id or ""), str(study.patient_name or ""),
                   str(study.study_date or ""), _header_text(first, "StudyTime") if first is not None else "",
                   str(study.study_description or ""), mods, parts, LOCAL)

    @classmethod
    def from_match(cls, match: Any, node: str) -> StudyFacts:
        """From a :class:`medviewer.pacs.StudyMatch` found on ``node``."""
        return cls(match.study_instance_uid, match.patient_id, match.patient_name, match.study_date, "",
                   match.study_description, tuple(m.upper() for m in match.modalities_in_study), (), node)

    @property
    def remote(self) -> bool:
        """True when the study is on a PACS, not opened."""
        return self.origin != LOCAL

    def label(self) -> str:
        """``2012-07-06 CT CHEST PANCREAS`` for messages."""
        bits = [format_study_date(self.study_date), "/".join(self.modalities), "/".join(self.body_parts),
                self.description]
        return " ".join(b for b in bits if b)


def comparable_reason(candidate: StudyFacts, current: StudyFacts, modality: str, body_part: str) -> str | None:
    """None when ``candidate`` can be hung as the prior of ``current`` (read as ``modality`` of ``body_part``),
    else why not, in a few words."""
    if candidate.study_instance_uid == current.study_instance_uid:
        return "the current study"
    if not candidate.study_date:
        return "no Study Date"
    same_day_before = (candidate.study_date == current.study_date and bool(candidate.study_time)
                       and bool(current.study_time) and candidate.study_time < current.study_time)
    if not (candidate.study_date < current.study_date or same_day_before):
        return "not earlier"
    if modality and candidate.modalities and modality not in candidate.modalities:
        return f"no {modality}"
    if body_part and candidate.body_parts and body_part not in candidate.body_parts:
        return f"other body part ({'/'.join(candidate.body_parts)})"
    return None


@dataclass
class PriorSearch:
    """The outcome of :func:`find_priors`.

    Attributes
    ----------
    current
        The current study.
    modality, body_part
        What the prior must show (the current series' Modality and Body Part Examined; ``""``: not checked).
    earlier
        The patient's other studies found (opened and on the PACS), newest first.
    candidates
        The comparable ones, best first (``candidates[0]`` is the choice).
    rejected
        ``(study, reason)`` for the others.
    notes
        One-line problems that did not stop the search (the PACS could not be queried, ...).
    """

    current: StudyFacts
    modality: str = ""
    body_part: str = ""
    earlier: list[StudyFacts] = field(default_factory=list)
    candidates: list[StudyFacts] = field(default_factory=list)
    rejected: list[tuple[StudyFacts, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> StudyFacts | None:
        """The prior to hang, or None."""
        return self.candidates[0] if self.candidates else None

    def message(self) -> str:
        """One line for the status bar: the prior chosen, or why there is none."""
        what = " ".join(x for x in (self.modality, self.body_part) if x) or "study"
        tail = ("; " + "; ".join(self.notes)) if self.notes else ""
        if self.chosen is not None:
            where = "" if not self.chosen.remote else f" (on {self.chosen.origin})"
            return f"Prior {self.chosen.label()}{where}, current {format_study_date(self.current.study_date)}" + tail
        if not self.current.patient_id:
            return "No prior: the current study has no Patient ID to match" + tail
        if not self.earlier:
            return f"No prior: no other study of patient {self.current.patient_id} found" + tail
        why = "; ".join(f"{s.label()}: {r}" for s, r in self.rejected[:3])
        return (f"No comparable prior ({what} before {format_study_date(self.current.study_date)}) among "
                f"{len(self.earlier)} other stud{'y' if len(self.earlier) == 1 else 'ies'} of patient "
                f"{self.current.patient_id}: {why}" + tail)


def _study_of(series: Any, studies: Iterable[Any]) -> Any | None:
    uid = getattr(series, "series_instance_uid", None)
    for st in studies:
        if any(s is series or (uid and s.series_instance_uid == uid) for s in st.series):
            return st
    return None


def find_priors(current_series: Any, studies: Iterable[Any], *, node: str | None = None,
                connect: Callable[[str], Any] | None = None, pacs_limit: int = 200) -> PriorSearch:
    """Find the prior studies of the study ``current_series`` belongs to and choose the one to hang.

    Parameters
    ----------
    current_series
        The series being read (:class:`medviewer.io.scan.Series`); its Modality and Body Part Examined are
        what the prior must show.
    studies
        The studies opened (:class:`medviewer.io.scan.Study`), the current one among them.
    node
        A PACS node (URL or saved name) to query by Patient ID as well; None: opened studies only.
    connect
        ``connect(node) -> PacsClient`` (default :func:`medviewer.pacs.connect`).
    pacs_limit
        Most studies asked of the PACS.

    Returns
    -------
    PriorSearch
        Never raises for a PACS that cannot be reached: the reason is in :attr:`PriorSearch.notes`.

    Raises
    ------
    ValueError
        ``current_series`` is not in ``studies``.
    """
    studies = list(studies)
    study = _study_of(current_series, studies)
    if study is None:
        raise ValueError("the current series is not among the opened studies")
    current = StudyFacts.from_study(study)
    search = PriorSearch(current, str(getattr(current_series, "modality", "") or "").upper(),
                         body_part_of(current_series))
    if not current.patient_id:
        return search
    if not current.study_date:
        search.notes.append("the current study has no Study Date: nothing can be called earlier")
        return search
    found: dict[str, StudyFacts] = {}
    for st in studies:
        if st is not study and str(st.patient_id or "") == current.patient_id and st.study_instance_uid:
            found.setdefault(str(st.study_instance_uid), StudyFacts.from_study(st))
    if node:
        for facts in _pacs_studies(node, current, search.modality, connect, pacs_limit, search.notes):
            found.setdefault(facts.study_instance_uid, facts)  # an opened copy wins over the PACS's
    found.pop(current.study_instance_uid, None)
    search.earlier = sorted(found.values(), key=lambda s: (s.study_date, s.study_time), reverse=True)
    for st in search.earlier:
        why = comparable_reason(st, current, search.modality, search.body_part)
        if why is None:
            search.candidates.append(st)
        else:
            search.rejected.append((st, why))
    search.candidates.sort(key=lambda s: (s.study_date, s.study_time, not s.remote), reverse=True)
    return search


def _pacs_studies(node: str, current: StudyFacts, modality: str, connect: Callable[[str], Any] | None,
                  limit: int, notes: list[str]) -> list[StudyFacts]:
    """The patient's studies up to the current date on ``node`` (problems go to ``notes``)."""
    from medviewer.errors import error_line
    from medviewer.pacs import StudyQuery
    from medviewer.pacs.model import check_matches

    if connect is None:
        from medviewer.pacs import connect as default_connect

        connect = default_connect
    query = StudyQuery(patient_id=current.patient_id, study_date=f"-{current.study_date}", modality=modality)
    try:
        with connect(node) as client:
            matches = client.find_studies(query, limit=limit)
    except Exception as exc:  # noqa: BLE001 - the opened studies are still searched; the reason is shown
        notes.append(f"PACS {node} not searched: {error_line(exc)}")
        return []
    kept, _ = check_matches(query, matches)
    # a PACS that ignores the Patient ID key would hand us other patients: never hang those
    return [StudyFacts.from_match(m, node) for m in kept if m.patient_id == current.patient_id]


def _normal(series: Any) -> np.ndarray | None:
    insts = getattr(series, "instances", None) or []
    iop = getattr(insts[0], "image_orientation_patient", None) if insts else None
    if iop is None or len(iop) != 6:
        return None
    n = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    norm = float(np.linalg.norm(n))
    return None if norm < 1e-6 else n / norm


def prior_series(current_series: Any, prior_study: Any) -> Any | None:
    """The series of ``prior_study`` (a :class:`medviewer.io.scan.Study`) to hang beside ``current_series``.

    Among its series of the same modality (and body part, when both record it): the one with the same Series
    Description (case-insensitive), else one whose slices are parallel to the current series' (Image
    Orientation (Patient), PS3.3 C.7.6.2.1.1), else the one with the most images. None when it has no series
    of that modality.
    """
    modality = str(getattr(current_series, "modality", "") or "").upper()
    part = body_part_of(current_series)
    same = [s for s in prior_study.series if str(s.modality or "").upper() == modality and s.instances]
    if part:
        same = [s for s in same if body_part_of(s) in ("", part)]
    if not same:
        return None
    desc = str(getattr(current_series, "series_description", "") or "").strip().lower()
    normal = _normal(current_series)

    def rank(s: Any) -> tuple[bool, bool, int]:
        n = _normal(s)
        parallel = normal is not None and n is not None and abs(float(np.dot(normal, n))) > 0.99
        return (bool(desc) and str(s.series_description or "").strip().lower() == desc, parallel, len(s.instances))

    return max(same, key=rank)


def fetch_prior(search: PriorSearch, out: str | Path, *, connect: Callable[[str], Any] | None = None,
                cancel: Any = None, progress: Callable[[int, int], None] | None = None,
                max_retrievals: int = 3) -> tuple[Any, StudyFacts]:
    """Settle the prior: walk :attr:`PriorSearch.candidates` best first; an opened study is the answer as it is,
    a study on the PACS is retrieved into ``out``, scanned and checked in its files (the study-level answer has
    no Body Part Examined) -- when it shows another body part, the walk goes on (at most ``max_retrievals``
    retrievals).

    Returns
    -------
    (ScanResult | None, StudyFacts)
        The scan of the retrieved study (None for an opened one) and the prior (facts from its files).

    Raises
    ------
    ValueError
        No candidate is comparable once checked (the reasons).
    medviewer.pacs.PacsError
        A retrieval failed.
    """
    from medviewer.io.scan import scan
    from medviewer.pacs import retrieve_study

    if connect is None:
        from medviewer.pacs import connect as default_connect

        connect = default_connect
    reasons: list[str] = []
    retrievals = 0
    for cand in search.candidates:
        if not cand.remote:
            return None, cand
        if retrievals >= max_retrievals:
            continue
        retrievals += 1
        with connect(cand.origin) as client:
            result = retrieve_study(client, cand.study_instance_uid, Path(out), cancel=cancel,
                                    progress=progress or False)
        scanned = scan(result.study_dir())
        study = next((st for st in scanned.studies if st.study_instance_uid == cand.study_instance_uid), None)
        if study is None:
            reasons.append(f"{cand.label()}: no image retrieved")
            continue
        facts = StudyFacts.from_study(study)
        why = comparable_reason(facts, search.current, search.modality, search.body_part)
        if why is None:
            return scanned, facts
        reasons.append(f"{facts.label()}: {why}")
    raise ValueError("no comparable prior once retrieved" + (": " + "; ".join(reasons) if reasons else ""))
