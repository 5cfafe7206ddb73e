"""The AI node's durable state: one SQLite database in WAL mode in the spool folder.

Everything :mod:`medviewer.serve` knows lives in ``SPOOL/queue.sqlite`` (plus the files it names), so a
node killed at any moment (``kill -9``, power cut) resumes where it was when it is started again:

* ``instances``: every instance acknowledged to a sender (the Storage SCP commits the row after the file is
  on disk and before it answers success), its study, SOP class, file and state (``received``,
  ``scored``, ``skipped`` with the reason, ``failed`` with the reason);
* ``studies``: one row per Study Instance UID and its state -- ``receiving`` (instances still arriving),
  ``waiting`` (complete: no new instance for ``--study-timeout`` seconds; queued for scoring),
  ``scoring``, ``sending`` (results written, not all stored at the destination yet; retried with backoff),
  ``done`` or ``failed`` (a result the destination refused for good);
* ``decisions``: what each model did with each instance, keyed by (SOP Instance UID, model SHA-256):
  scored, not applicable (the card's intended use does not fit), or failed;
* ``outputs``: the SR and SC written per (SOP Instance UID, model SHA-256), their own SOP Instance UIDs and
  whether the destination has them. This key is what makes results idempotent: a study scored again
  after a restart, a retried send or a sender that repeats the study never produces a second SR for the
  same (instance, model), because an instance with a decision is not scored again and a file that was
  sent before is re-sent with the same SOP Instance UID (a PACS keeps one copy);
* ``events``: failures and skips with their reasons, for ``medviewer serve status``.

Each thread uses its own connection (:meth:`SpoolDB.conn`); writers wait for each other (``busy_timeout``).
``synchronous=FULL`` (unless ``--no-fsync``): a committed row survives a power cut, not only a crash.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SpoolDB", "StudyState", "DB_NAME", "InstanceRow", "OutputRow"]

DB_NAME = "queue.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    sop_class TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    calling_aet TEXT NOT NULL DEFAULT '',
    received REAL NOT NULL,
    image INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'received',
    reason TEXT
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    dirty INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    error TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, next_attempt);
CREATE TABLE IF NOT EXISTS decisions (
    sop_uid TEXT NOT NULL,
    model_sha TEXT NOT NULL,
    model TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    flagged TEXT,
    applicability TEXT,
    time REAL NOT NULL,
    PRIMARY KEY (sop_uid, model_sha)
);
CREATE TABLE IF NOT EXISTS outputs (
    sop_uid TEXT NOT NULL,
    model_sha TEXT NOT NULL,
    kind TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    out_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'written',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    sent REAL,
    PRIMARY KEY (sop_uid, model_sha, kind)
);
CREATE INDEX IF NOT EXISTS outputs_study ON outputs(study_uid, state);
CREATE TABLE IF NOT EXISTS series_uids (
    study_uid TEXT NOT NULL,
    model_sha TEXT NOT NULL,
    sr_series TEXT NOT NULL,
    sc_series TEXT NOT NULL,
    PRIMARY KEY (study_uid, model_sha)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    study_uid TEXT,
    sop_uid TEXT,
    reason TEXT NOT NULL
);
"""


class StudyState:
    """The states of a study (``studies.state``), in the order a study goes through them."""

    RECEIVING = "receiving"
    WAITING = "waiting"
    SCORING = "scoring"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    ALL = (RECEIVING, WAITING, SCORING, SENDING, DONE, FAILED)


@dataclass(frozen=True)
class InstanceRow:
    """One received instance (a row of ``instances``)."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class: str
    path: str
    image: bool
    state: str
    reason: str | None


@dataclass(frozen=True)
class OutputRow:
    """One SR or SC written for (source SOP Instance UID, model SHA-256) (a row of ``outputs``)."""

    sop_uid: str
    model_sha: str
    kind: str
    study_uid: str
    out_uid: str
    path: str
    state: str
    attempts: int


class SpoolDB:
    """The queue database of one spool folder (``SPOOL/queue.sqlite``, created with its schema).

    Parameters
    ----------
    path
        The database file.
    readonly
        Open without creating or writing (``medviewer serve status``).
    durable
        ``synchronous=FULL`` (a commit is on the disk when it returns); False: ``NORMAL`` (WAL: still safe
        when the process crashes, the last commits can be lost in a power cut), with ``--no-fsync``.

    Raises
    ------
    sqlite3.Error
        The file is not a database or cannot be opened.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, durable: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.durable = durable
        self._local = threading.local()
        if not readonly:
            self.conn().executescript(_SCHEMA)  # IF NOT EXISTS: idempotent; executescript commits itself

    # -- connections ------------------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use; WAL, ``synchronous=FULL``, 30 s busy timeout)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.readonly:
                c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            else:
                c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            c.row_factory = sqlite3.Row
            self._local.conn = c
        return c

    def close(self) -> None:
        """Close this thread's connection."""
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on an exception."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # -- receiving --------------------------------------------------------------------------------------
    def add_instance(self, *, sop_uid: str, study_uid: str, series_uid: str, sop_class: str, path: str, size: int,
                     calling_aet: str, image: bool, now: float | None = None) -> None:
        """Record an instance written to the spool and mark its study as receiving (called before the
        Storage SCP answers success). An instance received again keeps its state (it is not scored twice);
        a study that was complete goes back to ``receiving`` (its new instances are scored once it is
        complete again); one being scored or sent is marked ``dirty`` and goes back when that ends."""
        now = time.time() if now is None else now
        with self.tx() as c:
            c.execute(
                "INSERT INTO instances(sop_uid, study_uid, series_uid, sop_class, path, size, calling_aet, received, "
                "image) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(sop_uid) DO UPDATE SET path=excluded.path, "
                "size=excluded.size, received=excluded.received",
                (sop_uid, study_uid, series_uid, sop_class, path, size, calling_aet, now, int(image)))
            c.execute(
                "INSERT INTO studies(study_uid, state, first_received, last_received, updated) VALUES (?,?,?,?,?) "
                "ON CONFLICT(study_uid) DO UPDATE SET last_received=excluded.last_received, updated=excluded.updated, "
                "dirty=CASE WHEN state IN ('scoring','sending') THEN 1 ELSE dirty END, "
                "state=CASE WHEN state IN ('scoring','sending') THEN state ELSE 'receiving' END",
                (study_uid, StudyState.RECEIVING, now, now, now))

    def complete_studies(self, timeout: float, now: float | None = None) -> int:
        """``receiving`` studies without a new instance for ``timeout`` seconds become ``waiting``;
        returns how many."""
        now = time.time() if now is None else now
        with self.tx() as c:
            cur = c.execute("UPDATE studies SET state='waiting', updated=? WHERE state='receiving' AND last_received <= ?",
                            (now, now - timeout))
            return cur.rowcount

    def recover(self) -> int:
        """After a crash: studies left ``scoring`` are ``waiting`` again (their finished instances keep their
        decisions and are not scored twice); returns how many."""
        with self.tx() as c:
            return c.execute("UPDATE studies SET state='waiting', updated=? WHERE state='scoring'",
                             (time.time(),)).rowcount

    # -- scoring ----------------------------------------------------------------------------------------
    def claim_study(self) -> str | None:
        """The oldest ``waiting`` study, now ``scoring`` (None when none waits)."""
        with self.tx() as c:
            row = c.execute("SELECT study_uid FROM studies WHERE state='waiting' ORDER BY last_received LIMIT 1").fetchone()
            if row is None:
                return None
            c.execute("UPDATE studies SET state='scoring', dirty=0, updated=? WHERE study_uid=?",
                      (time.time(), row[0]))
            return str(row[0])

    def study_instances(self, study_uid: str) -> list[InstanceRow]:
        """The study's instances in the order they arrived."""
        rows = self.conn().execute(
            "SELECT sop_uid, study_uid, series_uid, sop_class, path, image, state, reason FROM instances "
            "WHERE study_uid=? ORDER BY received, sop_uid", (study_uid,)).fetchall()
        return [InstanceRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def decided(self, study_uid: str, model_sha: str) -> dict[str, tuple[str, str | None]]:
        """What ``model_sha`` already decided on the study's instances: SOP Instance UID -> (outcome, reason),
        outcome ``scored``, ``not-applicable`` or ``failed``."""
        rows = self.conn().execute("SELECT sop_uid, outcome, reason FROM decisions WHERE study_uid=? AND model_sha=?",
                                   (study_uid, model_sha)).fetchall()
        return {str(r[0]): (str(r[1]), r[2]) for r in rows}

    def set_instance(self, sop_uid: str, state: str, reason: str | None = None) -> None:
        """Set an instance's state (``scored``, ``skipped``, ``failed``) and reason."""
        with self.tx() as c:
            c.execute("UPDATE instances SET state=?, reason=? WHERE sop_uid=?", (state, reason, sop_uid))

    def add_decision(self, *, sop_uid: str, study_uid: str, model_sha: str, model: str, outcome: str,
                     reason: str | None = None, flagged: str | None = None, applicability: str | None = None,
                     outputs: Iterable[tuple[str, str, str]] = ()) -> None:
        """Record what a model did with an instance, and the SR/SC it wrote (``(kind, out_uid, path)``), in one
        transaction. A decision that exists already is kept (the first one wins: idempotent)."""
        with self.tx() as c:
            cur = c.execute("INSERT OR IGNORE INTO decisions(sop_uid, model_sha, model, study_uid, outcome, reason, "
                            "flagged, applicability, time) VALUES (?,?,?,?,?,?,?,?,?)",
                            (sop_uid, model_sha, model, study_uid, outcome, reason, flagged, applicability, time.time()))
            if cur.rowcount:
                for kind, out_uid, path in outputs:
                    c.execute("INSERT OR IGNORE INTO outputs(sop_uid, model_sha, kind, study_uid, out_uid, path) "
                              "VALUES (?,?,?,?,?,?)", (sop_uid, model_sha, kind, study_uid, out_uid, path))

    def series_uids(self, study_uid: str, model_sha: str, make: Any) -> tuple[str, str]:
        """The SR and SC Series Instance UIDs of (study, model): made once by ``make()`` and kept, so results
        scored after a restart join the series of those scored before."""
        with self.tx() as c:
            row = c.execute("SELECT sr_series, sc_series FROM series_uids WHERE study_uid=? AND model_sha=?",
                            (study_uid, model_sha)).fetchone()
            if row is not None:
                return str(row[0]), str(row[1])
            sr, sc = make()
            c.execute("INSERT INTO series_uids VALUES (?,?,?,?)", (study_uid, model_sha, sr, sc))
            return sr, sc

    def finish_scoring(self, study_uid: str) -> str:
        """``scoring`` -> ``sending`` (or ``receiving`` when instances came meanwhile); returns the new state."""
        with self.tx() as c:
            row = c.execute("SELECT dirty FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            state = StudyState.RECEIVING if row is not None and row[0] else StudyState.SENDING
            c.execute("UPDATE studies SET state=?, dirty=0, attempts=0, next_attempt=0, error=NULL, updated=? "
                      "WHERE study_uid=?", (state, time.time(), study_uid))
            return state

    # -- sending ----------------------------------------------------------------------------------------
    def due_for_sending(self, now: float | None = None) -> list[str]:
        """Studies in ``sending`` whose next attempt is due, oldest first."""
        now = time.time() if now is None else now
        rows = self.conn().execute("SELECT study_uid FROM studies WHERE state='sending' AND next_attempt <= ? "
                                   "ORDER BY next_attempt, updated", (now,)).fetchall()
        return [str(r[0]) for r in rows]

    def unsent(self, study_uid: str) -> list[OutputRow]:
        """The study's SR/SC not yet stored at the destination (``written``; also ``failed`` ones when retried)."""
        rows = self.conn().execute(
            "SELECT sop_uid, model_sha, kind, study_uid, out_uid, path, state, attempts FROM outputs "
            "WHERE study_uid=? AND state!='sent' ORDER BY sop_uid, kind", (study_uid,)).fetchall()
        return [OutputRow(*r) for r in rows]

    def mark_sent(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Outputs ``(sop_uid, model_sha, kind)`` are stored at the destination."""
        with self.tx() as c:
            c.executemany("UPDATE outputs SET state='sent', sent=?, error=NULL WHERE sop_uid=? AND model_sha=? AND kind=?",
                          [(time.time(), *k) for k in keys])

    def mark_output_failed(self, key: tuple[str, str, str], reason: str, *, final: bool) -> None:
        """One output was refused by the destination (``final``: for good, after the last attempt)."""
        with self.tx() as c:
            c.execute("UPDATE outputs SET attempts=attempts+1, error=?, state=? WHERE sop_uid=? AND model_sha=? AND kind=?",
                      (reason, "failed" if final else "written", *key))

    def finish_sending(self, study_uid: str, failed: bool) -> str:
        """All outputs sent (or given up): ``done`` / ``failed``, or ``receiving`` when instances came meanwhile."""
        with self.tx() as c:
            row = c.execute("SELECT dirty FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            state = (StudyState.RECEIVING if row is not None and row[0] else
                     StudyState.FAILED if failed else StudyState.DONE)
            c.execute("UPDATE studies SET state=?, dirty=0, error=CASE WHEN ?='failed' THEN error ELSE NULL END, "
                      "updated=? WHERE study_uid=?", (state, state, time.time(), study_uid))
            return state

    def retry_later(self, study_uid: str, reason: str, delay: float) -> int:
        """The destination could not be reached: try the study again in ``delay`` seconds; returns attempts so far."""
        with self.tx() as c:
            c.execute("UPDATE studies SET attempts=attempts+1, next_attempt=?, error=?, updated=? WHERE study_uid=?",
                      (time.time() + delay, reason, time.time(), study_uid))
            row = c.execute("SELECT attempts FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            return int(row[0]) if row else 0

    # -- events and status ------------------------------------------------------------------------------
    def event(self, kind: str, reason: str, *, study_uid: str | None = None, sop_uid: str | None = None) -> None:
        """Record a failure or skip (``kind``: ``store-failed``, ``bad-file``, ``skipped``, ``score-failed``,
        ``send-failed``, ``send-refused``) with its one-line reason."""
        with self.tx() as c:
            c.execute("INSERT INTO events(time, kind, study_uid, sop_uid, reason) VALUES (?,?,?,?,?)",
                      (time.time(), kind, study_uid, sop_uid, reason))

    def status(self, recent: int = 20) -> dict[str, Any]:
        """Counts and recent failures: ``{"instances": {state: n, "total": n}, "studies": {state: n},
        "results": {"written": n, "sent": n, "failed": n}, "decisions": {outcome: n}, "waiting_to_send":
        [{study, attempts, next_attempt, error}], "events": {kind: n}, "recent_events": [...]}``."""
        c = self.conn()
        inst = {r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM instances GROUP BY state")}
        inst["total"] = sum(inst.values())
        studies = {s: 0 for s in StudyState.ALL}
        studies.update({r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM studies GROUP BY state")})
        results = {"written": 0, "sent": 0, "failed": 0}
        results.update({r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM outputs GROUP BY state")})
        decisions = {r[0]: r[1] for r in c.execute("SELECT outcome, COUNT(*) FROM decisions GROUP BY outcome")}
        waiting = [{"study_instance_uid": r[0], "attempts": r[1], "next_attempt": r[2], "error": r[3]}
                   for r in c.execute("SELECT study_uid, attempts, next_attempt, error FROM studies "
                                      "WHERE state='sending' AND attempts>0 ORDER BY next_attempt LIMIT ?", (recent,))]
        failed = [{"study_instance_uid": r[0], "error": r[1]}
                  for r in c.execute("SELECT study_uid, error FROM studies WHERE state='failed' LIMIT ?", (recent,))]
        events = {r[0]: r[1] for r in c.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind")}
        recent_events = [dict(r) for r in c.execute(
            "SELECT time, kind, study_uid AS study_instance_uid, sop_uid AS sop_instance_uid, reason FROM events "
            "ORDER BY id DESC LIMIT ?", (recent,))]
        return {"instances": inst, "studies": studies, "results": results, "decisions": decisions,
                "waiting_to_send": waiting, "failed_studies": failed, "events": events,
                "recent_events": recent_events}
