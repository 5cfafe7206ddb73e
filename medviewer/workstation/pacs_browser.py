"""The PACS browser, Qt-free: echo, study query and retrieval for the workstation's PACS dialog.

:class:`PacsBrowser` holds what the dialog shows -- the studies found, a status line, and the PACS client's
warnings (:attr:`PacsBrowser.notes`: a PACS that ignored a matching key, a C-GET/C-MOVE that ended with
failed sub-operations, instances missing after a retrieval) -- and tells its listeners when that changes.
The network work is split from the state so a GUI can run it off its own thread:

* ``run_echo`` / ``run_search`` / ``run_retrieve`` block on the network, touch no state, and may run on
  any thread; each returns an outcome (:class:`EchoOutcome`, :class:`SearchOutcome`,
  :class:`RetrieveOutcome`) or raises :class:`~medviewer.errors.MedViewerError` (one line);
* ``show(outcome)`` / ``show_failure(what, reason)`` apply it on the thread that owns the browser and
  call every listener with the outcome (or ``None`` for a failure).

Queries and retrievals are audited like ``medviewer pacs find`` / ``get`` (PS3.15 A.5: Query 110112,
DICOM Instances Transferred 110104; which keys were used, never their values; UIDs only).

Example
-------
>>> browser = PacsBrowser()                                           # doctest: +SKIP
>>> browser.subscribe(lambda outcome: print(browser.status, browser.notes))  # doctest: +SKIP
>>> browser.show(browser.run_search("dicom://ORTHANC@pacs:4242", "MEDVIEWER", StudyQuery(modality="MR")))  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medviewer.errors import MedViewerError
from medviewer.pacs import PacsClient, RetrieveResult, StudyMatch, StudyQuery, connect, retrieve_study

__all__ = ["PacsBrowser", "EchoOutcome", "SearchOutcome", "RetrieveOutcome", "Outcome"]


@dataclass(frozen=True)
class EchoOutcome:
    """A node answered (C-ECHO, or a QIDO-RS query with limit 1) in ``seconds``."""

    node: str
    seconds: float
    notes: tuple[str, ...] = ()

    def status(self) -> str:
        """The status line, e.g. ``dicom://ORTHANC@pacs:4242: OK (12 ms)``."""
        return f"{self.node}: OK ({self.seconds * 1000:.0f} ms)"


@dataclass(frozen=True)
class SearchOutcome:
    """The studies a study-level query matched (after the client's own filtering) and its warnings."""

    node: str
    matches: tuple[StudyMatch, ...]
    notes: tuple[str, ...] = ()

    def status(self) -> str:
        """``N studies``."""
        n = len(self.matches)
        return f"{n} stud{'y' if n == 1 else 'ies'}"


@dataclass(frozen=True)
class RetrieveOutcome:
    """What a retrieval did (:class:`~medviewer.pacs.RetrieveResult`) and its warnings."""

    node: str
    result: RetrieveResult
    notes: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        """Every instance the PACS lists is in the folder and the retrieval was not cancelled."""
        return not self.result.cancelled and not self.result.missing

    def status(self) -> str:
        """Cancelled / partial / retrieved, with counts and the folder."""
        r = self.result
        total = len(r.expected)
        if r.cancelled:
            return (f"Cancelled: {total - len(r.missing)} of {total} instances in {r.study_dir()} "
                    "(retrieve again to resume).")
        if r.missing:
            return (f"Partial: {len(r.missing)} of {total} instances missing (e.g. {r.missing[0].sop_instance_uid}); "
                    "retrieve again to resume.")
        return f"Retrieved {total} instances ({len(r.written)} new) into {r.study_dir()}"


Outcome = EchoOutcome | SearchOutcome | RetrieveOutcome


class PacsBrowser:
    """State of a PACS browsing session (see the module docstring).

    Parameters
    ----------
    connect_fn
        Makes a client from ``(node, aet=..., timeout=...)``; default :func:`medviewer.pacs.connect`.
    timeout
        Seconds for connecting and for each message/response.
    audit
        Record queries and retrievals in the audit trail (:mod:`medviewer.audit`).

    Attributes
    ----------
    matches
        The studies of the last successful search, newest first.
    notes
        Warnings of the last operation, one line each (empty when it had none, and after a failure).
    status
        One line: the last operation's result or failure.
    """

    def __init__(self, *, connect_fn: Callable[..., PacsClient] | None = None, timeout: float = 30.0,
                 audit: bool = True) -> None:
        self._connect = connect_fn or connect
        self.timeout = float(timeout)
        self.audit = audit
        self.matches: list[StudyMatch] = []
        self.notes: list[str] = []
        self.status = ""
        self._listeners: list[Callable[[Outcome | None], None]] = []

    # -- observers --------------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Outcome | None], None]) -> Callable[[], None]:
        """Call ``listener(outcome)`` after each :meth:`show` (``None`` after :meth:`show_failure` or
        :meth:`show_busy`); returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _changed(self, outcome: Outcome | None) -> None:
        for listener in list(self._listeners):
            listener(outcome)

    def show_busy(self, what: str) -> None:
        """An operation started: status ``WHAT …``; the previous warnings are withdrawn."""
        self.status, self.notes = f"{what} …", []
        self._changed(None)

    def show(self, outcome: Outcome) -> None:
        """Apply an outcome of ``run_*``: status line, warnings, and (for a search) the studies."""
        if isinstance(outcome, SearchOutcome):
            self.matches = list(outcome.matches)
        self.status, self.notes = outcome.status(), list(outcome.notes)
        self._changed(outcome)

    def show_failure(self, what: str, reason: str) -> None:
        """An operation failed: status ``WHAT failed: REASON``."""
        self.status, self.notes = f"{what} failed: {reason}", []
        self._changed(None)

    def show_message(self, text: str) -> None:
        """A status line that is no operation's result (e.g. "Select a study first.")."""
        self.status = text
        self._changed(None)

    # -- network work (any thread; no state touched) ----------------------------------------------------
    def client(self, node: str, aet: str) -> PacsClient:
        """A client for ``node`` with our AE title ``aet`` (empty: MEDVIEWER). Raises PacsError (one line)."""
        return self._connect(node.strip(), aet=aet.strip() or "MEDVIEWER", timeout=self.timeout)

    def run_echo(self, node: str, aet: str) -> EchoOutcome:
        """C-ECHO / QIDO-RS ping of ``node``. Raises :class:`MedViewerError` (one line)."""
        with self.client(node, aet) as client:
            seconds = client.echo()
            return EchoOutcome(str(client.node), seconds, tuple(client.notes))

    def run_search(self, node: str, aet: str, query: StudyQuery, limit: int | None = None) -> SearchOutcome:
        """Study-level C-FIND / QIDO-RS with ``query``; the client's warnings come back as notes (it filters
        what a PACS that ignored a key returned). Audited (Query, 110112: the keys used, the UIDs found).
        Raises :class:`MedViewerError` (one line)."""
        keys = sorted(query.filters())
        with self.client(node, aet) as client:
            try:
                matches = client.find_studies(query, limit=limit)
            except MedViewerError as exc:
                self._audit("queried", "serious failure", [], {"keys": keys, "source": str(client.node),
                                                               "error": str(exc)[:200]})
                raise
            self._audit("queried", "success", [m.study_instance_uid for m in matches][:100],
                        {"keys": keys, "matches": len(matches), "source": str(client.node)})
            return SearchOutcome(str(client.node), tuple(matches), tuple(client.notes))

    def run_retrieve(self, node: str, aet: str, study_instance_uid: str, out: Path, *,
                     cancel: threading.Event | None = None,
                     progress: Callable[[int, int], None] | None = None) -> RetrieveOutcome:
        """Retrieve a study into ``out`` (C-GET / WADO-RS; resumes what is there,
        :func:`~medviewer.pacs.retrieve_study`). Notes: the client's (failed sub-operations) and a line for
        missing instances. Audited (DICOM Instances Transferred, 110104, also when it fails).
        Raises :class:`MedViewerError` (one line)."""
        where: dict[str, Any] = {"source": node.strip(), "series": None}
        with self.client(node, aet) as client:
            where["source"] = str(client.node)
            try:
                result = retrieve_study(client, study_instance_uid, Path(out), cancel=cancel,
                                        progress=progress or False)
            except MedViewerError as exc:
                self._audit("retrieved", "serious failure", [study_instance_uid], {**where, "error": str(exc)[:200]})
                raise
        self._audit("retrieved", "success" if not result.missing else "minor failure", [study_instance_uid],
                    {**where, "instances": len(result.written), "already_present": result.skipped,
                     "missing": len(result.missing), "cancelled": result.cancelled})
        notes = list(result.notes)
        if result.missing and not result.cancelled:
            notes.append(f"{len(result.missing)} of {len(result.expected)} instances the PACS lists did not arrive")
        return RetrieveOutcome(str(client.node), result, tuple(notes))

    def _audit(self, event: str, outcome: str, studies: list[str], detail: dict[str, Any]) -> None:
        if not self.audit:
            return
        from medviewer import audit

        try:
            audit.record(audit.AuditEvent(event), outcome=audit.Outcome(outcome),
                         objects=audit.object_refs(studies), detail={**detail, "via": "workstation"})
        except (MedViewerError, ValueError) as exc:  # a log that cannot be written never stops the reading
            print(f"medviewer: warning: audit record not written: {exc}", file=sys.stderr)
