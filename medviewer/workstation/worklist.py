"""Triage worklist: studies scored in the background, listed by their highest in-scope finding probability.

This is what the "CADt" (computer-aided triage) columns of a PACS worklist do: every study of a folder (or
retrieved from a PACS query) is scored with every installed model (or the chosen ones), each (image, model)
result is checked against that model's intended use
(:class:`~medviewer.inference.applicability.IntendedUsePolicy`), and the study is ranked by the highest
probability of a positive label over its *in-scope* results, whichever model gave it (the entry names the
model: :attr:`StudyTriage.top_model`). Studies with no in-scope result are listed after all the others -- no
model has anything to say about them -- with the reasons; a study that could not be scored comes last with
its error. Read/unread is the reader's own state, kept per
Study Instance UID in a small JSON file.

Qt-free: the GUI shows :meth:`Worklist.rows` in a table and calls :func:`triage_folder` /
:func:`triage_pacs` from a worker thread.

Example
-------
>>> wl = triage_folder(open_session(default_model()), ["incoming/"])  # doctest: +SKIP
>>> [(e.patient_id, e.top_label, round(e.top_probability, 2), e.applicability) for e in wl.sorted()]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medviewer.inference.applicability import Assessment, Status

__all__ = ["StudyTriage", "Worklist", "triage_folder", "triage_pacs", "read_state_file", "NOT_SCORED"]

#: :attr:`StudyTriage.applicability` of a study with no scored image (beside the :class:`Status` values)
NOT_SCORED = "not_scored"


def read_state_file() -> Path:
    """Where read/unread is kept: ``platformdirs.user_data_dir("medviewer")/worklist_read.json``."""
    import platformdirs

    return Path(platformdirs.user_data_dir("medviewer")) / "worklist_read.json"


@dataclass
class StudyTriage:
    """One study on the worklist.

    Attributes
    ----------
    study_instance_uid, patient_id, patient_name, study_date, study_description
        From the images' headers.
    folder
        Where the study's (first) files are.
    paths, modalities
        The study's image files (to open it) and its modalities, in the order met.
    images, scored, failed
        Images seen; (image, model) results scored, and that could not be scored (with one model: images).
    in_scope, out_of_scope, unknown
        Scored (image, model) results per applicability status (``unknown``: the card states no intended use).
    top_probability, top_label, top_sop_instance_uid, top_model
        The highest positive-label probability over the results that are not withheld (out of scope), its
        label, image and model name; None when no result is in scope.
    flagged
        Labels flagged (at each card's operating points) on in-scope results.
    flagged_by
        label -> the names of the models that flagged it (in-scope results only).
    reasons
        The out-of-scope reasons met (each once; prefixed by the model's name when given).
    read
        The reader has opened / marked it.
    error
        The first error when nothing could be scored.
    """

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_description: str = ""
    folder: Path | None = None
    paths: list[Path] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    images: int = 0
    scored: int = 0
    failed: int = 0
    in_scope: int = 0
    out_of_scope: int = 0
    unknown: int = 0
    top_probability: float | None = None
    top_label: str | None = None
    top_sop_instance_uid: str | None = None
    top_model: str | None = None
    flagged: list[str] = field(default_factory=list)
    flagged_by: dict[str, list[str]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    read: bool = False
    error: str | None = None

    @property
    def applicability(self) -> Status | str:
        """:attr:`Status.IN_SCOPE` when any result is in scope, :attr:`Status.UNKNOWN` when none is but some
        are unknown, :attr:`Status.OUT_OF_SCOPE` when every scored result is out of scope (withheld),
        :data:`NOT_SCORED` otherwise. (``Status`` is a ``str`` enum: it equals its value.)"""
        if self.in_scope:
            return Status.IN_SCOPE
        if self.unknown:
            return Status.UNKNOWN
        if self.out_of_scope:
            return Status.OUT_OF_SCOPE
        return NOT_SCORED

    def add(self, scores: dict[str, float], flagged: Iterable[str],
            applicability: Assessment | dict[str, Any] | None, positive_labels: Sequence[str],
            sop_instance_uid: str | None = None, model: str | None = None) -> None:
        """Count one scored (image, model) result: ``applicability`` is the policy's
        :class:`~medviewer.inference.applicability.Assessment` (None: not assessed, counted as unknown);
        ``model`` the model's name."""
        self.scored += 1
        app = Assessment.coerce(applicability)
        if app is not None and app.withheld:  # the one withhold rule
            self.out_of_scope += 1
            for r in app.reasons:
                r = f"{model}: {r}" if model else str(r)
                if r not in self.reasons:
                    self.reasons.append(r)
            return
        if app is not None and app.status == Status.IN_SCOPE:
            self.in_scope += 1
        else:
            self.unknown += 1
        for label in positive_labels:
            p = float(scores.get(label, float("nan")))
            if p == p and (self.top_probability is None or p > self.top_probability):
                self.top_probability, self.top_label, self.top_sop_instance_uid = p, label, sop_instance_uid
                self.top_model = model
        for label in flagged:
            if label not in self.flagged:
                self.flagged.append(label)
            by = self.flagged_by.setdefault(label, [])
            if model and model not in by:
                by.append(model)

    def sort_key(self) -> tuple:
        """Scored with in-scope results first, by descending top probability (over all models); then out of
        scope; then failed / not scored. Ties: newer study first."""
        groups: dict[str, int] = {Status.IN_SCOPE: 0, Status.UNKNOWN: 0, Status.OUT_OF_SCOPE: 1}
        group = groups.get(self.applicability, 2)
        prob = -(self.top_probability if self.top_probability is not None else -1.0)
        return group, prob, _neg_date(self.study_date), self.study_instance_uid

    def row(self) -> dict[str, Any]:
        """JSON-ready summary (for a table or ``--json``)."""
        return {
            "StudyInstanceUID": self.study_instance_uid, "PatientID": self.patient_id,
            "PatientName": self.patient_name, "StudyDate": self.study_date,
            "StudyDescription": self.study_description, "folder": None if self.folder is None else str(self.folder),
            "paths": [str(p) for p in self.paths], "ModalitiesInStudy": list(self.modalities),
            "top_probability": None if self.top_probability is None else round(self.top_probability, 4),
            "top_label": self.top_label, "top_sop_instance_uid": self.top_sop_instance_uid,
            "top_model": self.top_model, "flagged": list(self.flagged),
            "flagged_by": {k: list(v) for k, v in self.flagged_by.items()},
            "applicability": str(getattr(self.applicability, "value", self.applicability)),
            "reasons": list(self.reasons),
            "images": self.images, "scored": self.scored, "failed": self.failed, "read": self.read,
            "error": self.error,
        }


def _neg_date(text: str) -> int:
    return -int(text) if text.isdigit() else 0


class Worklist:
    """Studies and their triage, with read/unread kept in ``state_file`` (default :func:`read_state_file`;
    None: not kept). Thread-safe: a worker adds results while the GUI reads :meth:`sorted`."""

    def __init__(self, state_file: Path | None | bool = True) -> None:
        self.state_file = read_state_file() if state_file is True else (state_file or None)
        self._entries: dict[str, StudyTriage] = {}
        self._lock = threading.Lock()
        self._read = self._load()

    def _load(self) -> set[str]:
        if self.state_file is None or not self.state_file.is_file():
            return set()
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            return {str(u) for u in data.get("read", [])}
        except (OSError, ValueError, AttributeError):
            return set()  # a damaged state file loses read marks, never the worklist

    def _save(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"read": sorted(self._read)}, indent=1), encoding="utf-8")
        tmp.replace(self.state_file)

    def entry(self, study_instance_uid: str) -> StudyTriage:
        """The study's entry (created on first use, with its read mark)."""
        with self._lock:
            e = self._entries.get(study_instance_uid)
            if e is None:
                e = self._entries[study_instance_uid] = StudyTriage(study_instance_uid,
                                                                     read=study_instance_uid in self._read)
            return e

    def mark_read(self, study_instance_uid: str, read: bool = True) -> None:
        """Mark a study read (or unread) and keep it in the state file."""
        with self._lock:
            (self._read.add if read else self._read.discard)(study_instance_uid)
            if study_instance_uid in self._entries:
                self._entries[study_instance_uid].read = read
            self._save()

    def sorted(self) -> list[StudyTriage]:
        """Entries in triage order (see :meth:`StudyTriage.sort_key`)."""
        with self._lock:
            return sorted(self._entries.values(), key=StudyTriage.sort_key)

    def rows(self) -> list[dict[str, Any]]:
        """:meth:`StudyTriage.row` of every entry, in triage order."""
        return [e.row() for e in self.sorted()]

    def __len__(self) -> int:
        return len(self._entries)

    def add_instances(self, session: Any, instances: Sequence[Any], *, policy: Any = None,
                      batch_size: int = 8, cancel: Callable[[], bool] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> None:
        """Score ``instances`` (from :func:`medviewer.io.scan`) and add them to their studies' entries.

        ``session``: one :class:`~medviewer.inference.Session`, or a sequence of them (one per model: every
        image is scored by each, and each result is judged by that model's intended use). ``policy``
        defaults to each card's :class:`~medviewer.inference.applicability.IntendedUsePolicy`. ``progress``
        gets (results done, images x models).
        """
        from medviewer.inference.applicability import IntendedUsePolicy
        from medviewer.inference.batch import score_instances

        sessions = list(session) if isinstance(session, (list, tuple)) else [session]
        by_path: dict[str, Any] = {}
        for inst in instances:
            study = str(getattr(inst, "study_instance_uid", "") or f"file:{inst.path}")
            e = self.entry(study)
            with self._lock:
                e.images += 1
                e.patient_id = e.patient_id or str(getattr(inst, "patient_id", "") or "")
                e.patient_name = e.patient_name or str(getattr(inst, "patient_name", "") or "")
                e.study_date = e.study_date or str(getattr(inst, "study_date", "") or "")
                e.study_description = e.study_description or str(getattr(inst, "study_description", "") or "")
                e.folder = e.folder or Path(inst.path).parent
                e.paths.append(Path(inst.path))
                modality = str(getattr(inst, "modality", "") or "")
                if modality and modality not in e.modalities:
                    e.modalities.append(modality)
            by_path[str(inst.path)] = e
        done = [0]
        total = len(instances) * len(sessions)

        def on_progress(outcome: Any) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        for sess in sessions:
            if cancel is not None and cancel():
                break
            card = sess.card
            outcomes = score_instances(sess, list(instances), batch_size=batch_size,
                                       policy=policy or IntendedUsePolicy(card), progress=on_progress, cancel=cancel)
            for out in outcomes:
                entry = by_path.get(str(out.path))
                if entry is None:
                    continue
                with self._lock:
                    if out.error is not None or out.prediction is None:
                        entry.failed += 1
                        entry.error = entry.error or (f"{card.name}: {out.error}" if len(sessions) > 1 else out.error)
                        continue
                    pred = out.prediction
                    entry.add(pred.scores, pred.flagged, pred.applicability, card.positive_labels,
                              out.sop_instance_uid, model=card.name)


def triage_folder(session: Any, paths: Sequence[str | Path], *, worklist: Worklist | None = None,
                  cancel: Callable[[], bool] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Worklist:
    """Score every image under ``paths`` (files or folders, scanned recursively) with ``session`` (one
    :class:`~medviewer.inference.Session` or a sequence, one per model) and return the worklist.

    Raises
    ------
    medviewer.errors.MedViewerError
        Nothing readable under ``paths`` (from the scan), or the model cannot run.
    """
    from medviewer.io.scan import scan

    result = scan([Path(p) for p in paths])
    wl = worklist if worklist is not None else Worklist()
    instances = [inst for study in result.studies for series in study.series for inst in series.instances]
    wl.add_instances(session, instances, cancel=cancel, progress=progress)
    return wl


class _Stop:
    """The ``is_set()`` view of a ``cancel()`` callable that :func:`medviewer.pacs.retrieve_study` polls."""

    def __init__(self, cancel: Callable[[], bool]) -> None:
        self.is_set = cancel


def triage_pacs(session: Any, client: Any, study_instance_uids: Sequence[str], out: Path, *,
                worklist: Worklist | None = None, cancel: Callable[[], bool] | None = None,
                progress: Callable[[int, int], None] | None = None) -> Worklist:
    """Retrieve the studies (resuming, into ``out``, see :func:`medviewer.pacs.retrieve_study`), then score them.

    A study that cannot be retrieved gets an entry with its error; the others are scored. ``cancel``: polled,
    as in :func:`triage_folder` (e.g. ``threading.Event().is_set``).
    """
    from medviewer.errors import MedViewerError, error_line
    from medviewer.pacs import retrieve_study

    wl = worklist if worklist is not None else Worklist()
    folders = []
    stop: Any = _Stop(cancel) if cancel is not None else None  # what retrieve_study polls (is_set())
    for uid in study_instance_uids:
        if cancel is not None and cancel():
            break
        try:
            res = retrieve_study(client, uid, out, cancel=stop)
        except MedViewerError as exc:
            e = wl.entry(uid)
            e.error = error_line(exc)
            continue
        folders.append(res.study_dir())
    if folders:
        triage_folder(session, folders, worklist=wl, progress=progress, cancel=cancel)
    return wl
