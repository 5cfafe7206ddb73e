"""Append-only audit trail: who did what to which DICOM objects, with which model, and how it ended.

One JSON object per line in ``<user data dir>/audit/audit.jsonl`` (``platformdirs.user_data_dir("medviewer")``;
the environment variable ``MEDVIEWER_AUDIT_DIR`` points it elsewhere). The event vocabulary follows IHE ATNA
and DICOM PS3.15 Annex A.5 (audit message event IDs from PS3.16 CID 400, outcome indicators 0/4/8/12).
Objects are identified by UID (Study/Series/SOP Instance UID) only, never by patient name or ID; the user
is the OS account running the process.

Tamper evidence: every record carries ``prev``, the SHA-256 of the previous record, and ``hash``, the
SHA-256 of its own canonical JSON (sorted keys, no ``hash``); :func:`verify` recomputes the chain. A chain
proves that no record in the middle was edited, inserted or removed -- by someone who did not recompute it.

Keyed chain: a plain hash chain can be recomputed by anyone who rewrites the file, so each record also
carries ``mac``, an HMAC-SHA256 (RFC 2104) of its canonical JSON under a secret key kept outside the log,
and ``kid``, the key's identifier (the first 16 hex digits of its SHA-256). The key file is
``$MEDVIEWER_AUDIT_KEY_FILE``, else ``<user config dir>/audit.key`` (created, mode 0600, on the first
record; it also holds the time it was made). :func:`verify` with the key finds a record whose MAC does not
match (rewritten without the key), a record without a MAC after keyed ones or made after the key was, and
one signed with another key. Keep the key where whoever can rewrite the log cannot read it (another
account, a root-owned file readable by the application only). Removing records from the end, or a
rewrite by someone holding the key, is only detectable against a copy of the last hash kept elsewhere:
``medviewer audit --verify`` prints the last record's sequence number and hash, and ``medviewer audit
--verify --expect-last N|HASH`` (:func:`verify` with ``expect_last``) fails when that record is no longer
in the log (an anchor).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from medviewer.errors import MedViewerError

__all__ = ["AuditEvent", "Outcome", "AUDIT_DIR_ENV", "AUDIT_KEY_ENV", "audit_path", "audit_key_path", "record", "read",
           "verify", "parse_anchor", "VerifyResult", "record_ai_run", "GENESIS", "object_refs"]

AUDIT_DIR_ENV = "MEDVIEWER_AUDIT_DIR"
AUDIT_KEY_ENV = "MEDVIEWER_AUDIT_KEY_FILE"
GENESIS = "0" * 64
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class AuditEvent(str, Enum):
    """What happened (value = the ``action`` field). ``event_id`` is the DICOM audit message EventID
    (PS3.15 A.5.3, PS3.16 CID 400, scheme DCM) and ``action_code`` the EventActionCode (C create,
    R read, U update, D delete, E execute)."""

    STUDY_OPENED = "study-opened"
    AI_RUN = "ai-run"
    RESULTS_EXPORTED = "results-exported"
    DEIDENTIFIED = "de-identified"
    SENT = "sent"
    MODEL_IMPORTED = "model-imported"
    AUDIT_LOG_USED = "audit-log-used"
    QUERIED = "queried"
    RETRIEVED = "retrieved"

    @property
    def event_id(self) -> tuple[str, str]:
        """``(code value, code meaning)`` of the DICOM audit EventID."""
        return _EVENT_IDS[self][0]

    @property
    def action_code(self) -> str:
        """ATNA EventActionCode."""
        return _EVENT_IDS[self][1]


_EVENT_IDS = {
    AuditEvent.STUDY_OPENED: (("110103", "DICOM Instances Accessed"), "R"),
    AuditEvent.AI_RUN: (("110103", "DICOM Instances Accessed"), "E"),
    AuditEvent.RESULTS_EXPORTED: (("110106", "Export"), "R"),
    AuditEvent.DEIDENTIFIED: (("110106", "Export"), "C"),
    AuditEvent.SENT: (("110104", "DICOM Instances Transferred"), "R"),
    AuditEvent.MODEL_IMPORTED: (("110107", "Import"), "C"),
    AuditEvent.AUDIT_LOG_USED: (("110101", "Audit Log Used"), "R"),
    AuditEvent.QUERIED: (("110112", "Query"), "E"),
    AuditEvent.RETRIEVED: (("110104", "DICOM Instances Transferred"), "C"),
}


class Outcome(str, Enum):
    """ATNA EventOutcomeIndicator; ``code`` is its numeric value."""

    SUCCESS = "success"
    MINOR_FAILURE = "minor failure"
    SERIOUS_FAILURE = "serious failure"
    MAJOR_FAILURE = "major failure"

    @property
    def code(self) -> int:
        """0, 4, 8 or 12 (PS3.15 A.5.3)."""
        return {"success": 0, "minor failure": 4, "serious failure": 8, "major failure": 12}[self.value]


def audit_path() -> Path:
    """The audit log file: ``$MEDVIEWER_AUDIT_DIR/audit.jsonl`` or ``<user data dir>/audit/audit.jsonl``."""
    env = os.environ.get(AUDIT_DIR_ENV)
    if env:
        return Path(env) / "audit.jsonl"
    import platformdirs

    return Path(platformdirs.user_data_dir("medviewer", appauthor=False)) / "audit" / "audit.jsonl"


def _canonical(rec: dict[str, Any], leave_out: tuple[str, ...] = ("hash",)) -> bytes:
    return json.dumps({k: v for k, v in rec.items() if k not in leave_out}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def audit_key_path() -> Path:
    """The audit key file: ``$MEDVIEWER_AUDIT_KEY_FILE`` or ``<user config dir>/audit.key`` (see the module doc)."""
    env = os.environ.get(AUDIT_KEY_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("medviewer", appauthor=False)) / "audit.key"


@dataclass(frozen=True)
class _Key:
    secret: bytes
    created: str  # ISO 8601 UTC

    @property
    def kid(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()[:16]

    def mac(self, rec: dict[str, Any]) -> str:
        return hmac.new(self.secret, _canonical(rec, ("hash", "mac")), hashlib.sha256).hexdigest()


def _load_key(create: bool) -> _Key | None:
    """The audit key (None when there is none and ``create`` is False, or it cannot be read or made)."""
    path = audit_key_path()
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        return _Key(bytes.fromhex(data["key"]), str(data["created"]))
    except FileNotFoundError:
        if not create:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: records stay unkeyed; verify says the key is missing
    key = _Key(os.urandom(32), datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            json.dump({"key": key.secret.hex(), "created": key.created}, f)
        return key
    except FileExistsError:  # another process made it first
        return _load_key(False)
    except OSError:
        return None


def _digest(rec: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(rec)).hexdigest()


def object_refs(study_uids: Iterable[str] = (), series_uids: Iterable[str] = (),
                sop_instance_uids: Iterable[str] = ()) -> list[dict[str, str]]:
    """Participant objects as ``[{"type": "study"|"series"|"sop", "uid": ...}]``, duplicates and empty
    values dropped, order kept."""
    refs, seen = [], set()
    for kind, uids in (("study", study_uids), ("series", series_uids), ("sop", sop_instance_uids)):
        for uid in uids:
            if uid and (kind, uid) not in seen:
                seen.add((kind, uid))
                refs.append({"type": kind, "uid": str(uid)})
    return refs


def _last_hash(path: Path) -> tuple[str, int]:
    """(hash, seq) of the last record of the log, or (GENESIS, 0)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block = min(size, 65536)
            while True:
                f.seek(size - block)
                lines = f.read(block).splitlines()
                if len(lines) > 1 or block == size:
                    break
                block = min(size, block * 4)
    except FileNotFoundError:
        return GENESIS, 0
    for line in reversed(lines):
        if line.strip():
            try:
                last = json.loads(line)
                return str(last["hash"]), int(last["seq"])
            except (ValueError, KeyError, TypeError):
                raise MedViewerError(f"{path}: last audit record is not valid JSON; run 'medviewer audit --verify'") from None
    return GENESIS, 0


def record(event: AuditEvent, *, outcome: Outcome = Outcome.SUCCESS, objects: list[dict[str, str]] | None = None,
           model: dict[str, Any] | None = None, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one audit record and return it.

    ``objects``: from :func:`object_refs` (UIDs only: anything that is not a DICOM UID raises ValueError, so a
    patient name or ID cannot slip in); ``model``: ``{"name", "version", "sha256"}``; ``detail``: small
    non-identifying facts (counts, options, error class). Raises :class:`MedViewerError` when the log cannot
    be written.
    """
    for obj in objects or []:
        if obj.get("type") not in ("study", "series", "sop") or not _UID_RE.match(str(obj.get("uid", ""))):
            raise ValueError(f"audit objects are identified by DICOM UID only, got {obj!r}")
    path = audit_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            _lock(f)
            try:
                prev, seq = _last_hash(path)
                rec: dict[str, Any] = {
                    "seq": seq + 1,
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "user": _user(),
                    "host": socket.gethostname(),
                    "action": event.value,
                    "event_id": {"code": event.event_id[0], "scheme": "DCM", "meaning": event.event_id[1]},
                    "event_action": event.action_code,
                    "outcome": outcome.value,
                    "outcome_code": outcome.code,
                    "objects": objects or [],
                }
                if model:
                    rec["model"] = {k: model.get(k) for k in ("name", "version", "sha256") if k in model}
                if detail:
                    rec["detail"] = detail
                rec["prev"] = prev
                key = _load_key(create=True)
                if key is not None:
                    rec["kid"] = key.kid
                    rec["mac"] = key.mac(rec)
                rec["hash"] = _digest(rec)
                f.write(json.dumps(rec, sort_keys=True, ensure_ascii=True).encode("ascii") + b"\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                _unlock(f)
    except OSError as exc:
        raise MedViewerError(f"{path}: cannot write the audit log ({exc.strerror or exc})") from None
    return rec


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or password database
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _lock(f) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except ImportError:  # Windows
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)


def _unlock(f) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except ImportError:
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


def read(since: datetime | None = None, path: Path | None = None) -> list[dict[str, Any]]:
    """The records (oldest first), those at or after ``since`` (aware or UTC) only when given.

    Raises :class:`MedViewerError` on a line that is not JSON. A missing log is an empty list.
    """
    path = path or audit_path()
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise MedViewerError(f"{path}: cannot read the audit log ({exc.strerror or exc})") from None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise MedViewerError(f"{path}: line {n} is not a JSON record") from None
        if since is not None:
            try:
                if datetime.fromisoformat(rec["time"]) < since:
                    continue
            except (KeyError, ValueError, TypeError):
                pass
        out.append(rec)
    return out


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`: ``ok`` when every record's hash and link check out; ``problems`` lists
    ``"line N: cause"``; ``last_hash``/``last_seq`` identify the last record (the anchor to keep elsewhere
    to detect truncation later); ``warnings`` are findings that do not make the log invalid (no key to
    check the MACs with, a key file others can read)."""

    records: int = 0
    problems: list[str] = field(default_factory=list)
    last_hash: str = GENESIS
    #: sequence number of the last record (0 for an empty log)
    last_seq: int = 0
    #: records whose MAC was checked with the audit key
    keyed: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


_HEX_RE = re.compile(r"^[0-9a-f]{16,64}$")


def parse_anchor(text: str) -> int | str:
    """An ``expect_last`` anchor: a record's sequence number (``"1234"`` -> 1234) or its SHA-256 ``hash``
    (64 hex digits, or a prefix of at least 16; returned lower-case). Raises :class:`ValueError` otherwise."""
    t = str(text).strip().lower()
    if t.isdigit() and len(t) < 16:
        if int(t) < 1:
            raise ValueError(f"{text!r}: audit sequence numbers start at 1")
        return int(t)
    if _HEX_RE.match(t):
        return t
    raise ValueError(f"{text!r} is neither an audit record's sequence number nor its hash (16 to 64 hex digits)")


def verify(path: Path | None = None, *, expect_last: int | str | None = None) -> VerifyResult:
    """Recompute the hash chain of the audit log and, when the audit key is at hand, every record's MAC
    (see the module docstring).

    ``expect_last``: the anchor noted earlier and kept elsewhere -- the last record's sequence number (int
    or decimal string) or hash (see :func:`parse_anchor`). A log that no longer holds that record (its
    last entries were cut off, or it was rewritten) fails; records appended after the anchor are fine.
    A hash chain alone cannot see a truncation: the shortened log is still a valid chain. Raises
    :class:`ValueError` for a malformed anchor.
    """
    path = path or audit_path()
    anchor = parse_anchor(str(expect_last)) if expect_last is not None and str(expect_last).strip() else None
    res = VerifyResult()
    key_path = audit_key_path()
    key = _load_key(create=False)
    if key is not None and hasattr(os, "getuid"):
        try:
            mode = key_path.stat().st_mode & 0o777
            if mode & 0o077:
                res.warnings.append(f"the audit key {key_path} can be read by other accounts (mode {mode:o}); "
                                    f"chmod 600 it")
        except OSError:
            pass
    keyed_seen = False
    hashes: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        res.problems.append(f"cannot read ({exc.strerror or exc})")
        return res
    prev, seq = GENESIS, 0
    unkeyable = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            res.problems.append(f"line {n}: not JSON")
            prev = None
            continue
        res.records += 1
        if rec.get("hash") != _digest(rec):
            res.problems.append(f"line {n}: record changed (hash mismatch)")
        if prev is not None and rec.get("prev") != prev:
            res.problems.append(f"line {n}: chain broken (prev does not match line before: record removed or inserted)")
        if rec.get("seq") != seq + 1:
            res.problems.append(f"line {n}: sequence number {rec.get('seq')} after {seq}")
        if key is not None:
            if "mac" in rec:
                keyed_seen = True
                if rec.get("kid") != key.kid:
                    res.problems.append(f"line {n}: signed with another audit key (kid {rec.get('kid')})")
                elif not hmac.compare_digest(str(rec.get("mac")), key.mac(rec)):
                    res.problems.append(f"line {n}: MAC mismatch (record written or rewritten without the audit key)")
                else:
                    res.keyed += 1
            elif keyed_seen or str(rec.get("time", "")) >= key.created:
                res.problems.append(f"line {n}: no MAC on a record made after the audit key (rewritten without it?)")
        elif "mac" in rec:
            unkeyable += 1
        prev, seq = rec.get("hash"), rec.get("seq") if isinstance(rec.get("seq"), int) else seq + 1
        res.last_hash, res.last_seq = str(rec.get("hash")), seq
        hashes.append(str(rec.get("hash")))
    if unkeyable:
        res.warnings.append(f"{unkeyable} records carry a MAC that was not checked: no audit key at {key_path} "
                            f"(${AUDIT_KEY_ENV} names it)")
    if isinstance(anchor, int) and anchor > res.last_seq:
        res.problems.append(f"the log ends at record {res.last_seq} but record {anchor} was expected: "
                            f"{anchor - res.last_seq} records removed from its end, or the log was rewritten")
    elif isinstance(anchor, str) and not any(h.startswith(anchor) for h in hashes):
        # an anchor that is an earlier record is fine (records were appended since); one not in the log is not
        res.problems.append(f"the anchor {anchor[:16]}... is not in the log: records were removed from its end, "
                            "or the log was rewritten")
    return res


def record_ai_run(model: dict[str, Any], sop_instance_uids: Iterable[str], *, study_uids: Iterable[str] = (),
                  scored: int, failed: int, provider: str | None = None) -> dict[str, Any] | None:
    """Audit one AI run (``medviewer infer``, the workstation's Run AI): the model's name/version/SHA-256,
    the SOP Instance UIDs scored, and the outcome (success; minor failure when some inputs failed; serious
    failure when none was scored). Never raises: a log that cannot be written is reported on stderr and
    ``None`` is returned, so an AI result is not lost to an audit problem."""
    outcome = Outcome.SUCCESS if not failed else Outcome.MINOR_FAILURE if scored else Outcome.SERIOUS_FAILURE
    try:
        return record(AuditEvent.AI_RUN, outcome=outcome,
                      objects=object_refs(study_uids, (), (u for u in sop_instance_uids if u and _UID_RE.match(u))),
                      model=model, detail={"scored": scored, "failed": failed, "provider": provider})
    except (MedViewerError, ValueError) as exc:
        import sys

        print(f"medviewer: warning: audit record not written: {exc}", file=sys.stderr)
        return None
