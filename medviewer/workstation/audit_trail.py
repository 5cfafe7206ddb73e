"""The workstation's audit trail, Qt-free: reading-session and AI events become :mod:`medviewer.audit` records.

:class:`AuditTrail` observes a :class:`~medviewer.workstation.session.ReadingSession` (``study_opened``) and an
:class:`~medviewer.workstation.ai.AiController` (``prediction_ready``, ``failed``) and records

* ``study-opened`` -- the Study Instance UID and its Series Instance UIDs, with counts;
* ``ai-run`` -- the model (name, version, SHA-256), the SOP Instance UID scored, the provider, the outcome
  (:func:`medviewer.audit.record_ai_run`);

and the GUI calls :meth:`AuditTrail.exported` and :meth:`AuditTrail.sent` for ``results-exported`` and ``sent``.
Objects are identified by DICOM UID only (a PNG/JPEG opened from a file has none and is recorded without
objects); no patient name, ID, date or file path is ever written. Records are appended on one background
thread (the log is fsync'ed), in the order the events came; an audit log that cannot be written is reported
once through ``on_error`` and never stops the reading.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["AuditTrail", "uids_only"]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def uids_only(values: Iterable[Any]) -> list[str]:
    """The values that are DICOM UIDs (PS3.5 9.1: digits and dots, at most 64 characters), in order; ``file:...``
    keys of PNG/JPEG images and empty values are dropped."""
    out = []
    for v in values:
        s = str(v or "")
        if s and len(s) <= 64 and _UID_RE.match(s) and s not in out:
            out.append(s)
    return out


def _model(package: Any) -> dict[str, Any]:
    card = package.card
    return {"name": card.name, "version": card.version, "sha256": card.sha256}


class AuditTrail:
    """Records a reading session's audit events (see the module doc).

    Parameters
    ----------
    reading
        The :class:`ReadingSession` whose ``study_opened`` events are recorded (None: not observed).
    ai
        The :class:`AiController` whose runs are recorded (None: not observed).
    on_error
        Called (from the background thread) with a one-line message the first time a record cannot be written.
    """

    def __init__(self, reading: Any = None, ai: Any = None, on_error: Callable[[str], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medviewer-audit")
        self._futures: list[Future] = []
        self._on_error = on_error
        self._error_reported = False
        self.study_of_sop: dict[str, str] = {}  #: SOP Instance UID -> Study Instance UID of the opened studies
        if reading is not None:
            reading.events.study_opened.connect(self.study_opened)
        if ai is not None:
            ai.events.prediction_ready.connect(self._prediction_ready)
            ai.events.failed.connect(self._failed)

    # -- writing ---------------------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], Any]) -> Future:
        def work() -> Any:
            from medviewer.errors import MedViewerError

            try:
                return fn()
            except (MedViewerError, ValueError, OSError) as exc:
                if not self._error_reported and self._on_error is not None:
                    self._error_reported = True
                    self._on_error(f"audit record not written: {' '.join(str(exc).split())}")
                return None

        try:
            fut = self._pool.submit(work)
        except RuntimeError:  # shut down (application closing): written here rather than lost
            fut = Future()
            fut.set_result(work())
        self._futures = [f for f in self._futures if not f.done()] + [fut]
        return fut

    def wait(self, timeout: float | None = 10.0) -> None:
        """Wait until every record submitted so far is written (tests, closing)."""
        for f in list(self._futures):
            f.result(timeout)

    def shutdown(self) -> None:
        """Write what is queued, then stop the background thread."""
        self._pool.shutdown(wait=True)

    # -- events ----------------------------------------------------------------------------------------
    def study_opened(self, study: Any) -> Future:
        """``study-opened`` for a :class:`medviewer.io.Study` (its UID, its series' UIDs, counts)."""
        from medviewer import audit

        series = list(getattr(study, "series", []) or [])
        study_uid = str(getattr(study, "study_instance_uid", "") or "")
        for se in series:
            for inst in getattr(se, "instances", []) or []:
                sop = str(getattr(inst, "sop_instance_uid", "") or "")
                if sop and study_uid:
                    self.study_of_sop[sop] = study_uid
        refs = audit.object_refs(uids_only([study_uid]),
                                 uids_only(getattr(se, "series_instance_uid", "") for se in series))
        detail = {"series": len(series), "instances": sum(len(getattr(se, "instances", []) or []) for se in series)}
        return self._submit(lambda: audit.record(audit.AuditEvent.STUDY_OPENED, objects=refs, detail=detail))

    def _prediction_ready(self, entry: Any) -> None:
        self.ai_run(entry.package, entry.key.sop_instance_uid, provider=entry.provider, ok=True)

    def _failed(self, job: Any, reason: str) -> None:  # the reason may name a file: not recorded
        self.ai_run(job.package, job.key.sop_instance_uid, ok=False)

    def ai_run(self, package: Any, sop_instance_uid: str, *, provider: str | None = None, ok: bool = True) -> Future:
        """``ai-run`` of ``package`` on one SOP Instance (success, or serious failure when ``ok`` is False)."""
        from medviewer import audit

        sops = uids_only([sop_instance_uid])
        studies = uids_only(self.study_of_sop.get(s, "") for s in sops)

        def work() -> Any:
            rec = audit.record_ai_run(_model(package), sops, study_uids=studies, scored=int(ok), failed=int(not ok),
                                      provider=provider)
            if rec is None:
                raise ValueError("see the warning on stderr")
            return rec

        return self._submit(work)

    def exported(self, what: str, sop_instance_uids: Iterable[str], *, deidentified: bool, ok: bool = True,
                 model: Any = None, detail: dict[str, Any] | None = None) -> Future:
        """``results-exported``: ``what`` (e.g. ``"png"``, ``"dicom-sr-sc"``), the source SOP Instance UIDs (as they
        went out: the keyed ones when de-identified), whether the output was de-identified, the model if any."""
        from medviewer import audit

        sops = uids_only(sop_instance_uids)
        studies = [] if deidentified else uids_only(self.study_of_sop.get(s, "") for s in sops)
        refs = audit.object_refs(studies, (), sops)
        info = {"format": what, "de-identified": bool(deidentified), **(detail or {})}
        outcome = audit.Outcome.SUCCESS if ok else audit.Outcome.SERIOUS_FAILURE
        return self._submit(lambda: audit.record(audit.AuditEvent.RESULTS_EXPORTED, outcome=outcome, objects=refs,
                                                 model=_model(model) if model is not None else None, detail=info))

    def sent(self, destination: str, study_uids: Iterable[str], sop_instance_uids: Iterable[str], *, stored: int,
             failed: int, deidentified: bool) -> Future:
        """``sent``: objects stored on ``destination`` (a node's URL, never credentials), by UID as they went out."""
        from medviewer import audit

        refs = audit.object_refs(uids_only(study_uids), (), uids_only(sop_instance_uids))
        outcome = (audit.Outcome.SUCCESS if not failed else
                   audit.Outcome.MINOR_FAILURE if stored else audit.Outcome.SERIOUS_FAILURE)
        info = {"instances": stored, "failed": failed, "de-identified": bool(deidentified),
                "destination": str(destination)}
        return self._submit(lambda: audit.record(audit.AuditEvent.SENT, outcome=outcome, objects=refs, detail=info))
