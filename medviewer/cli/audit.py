"""``medviewer audit [--since DATE] [--json] [--verify [--expect-last N|HASH]]``: read and check the audit trail.

Prints one line per record (time, user, action, outcome, objects, model); ``--json`` prints the records
as a JSON list; ``--verify`` recomputes the hash chain and each record's HMAC under the audit key, and
exits 1 when a record was changed, inserted or removed, or rewritten without the key (see
:mod:`medviewer.audit`). A chain cannot see its last records cut off; ``--expect-last`` with the sequence
number or hash of the last record noted earlier (``--verify`` prints both) can. Reading the log is itself
audited (``audit-log-used``, DCM 110101), as IHE ATNA asks.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from medviewer.errors import MedViewerError

__all__ = ["add_parser", "run", "parse_since"]

_EPILOG = """examples:
  medviewer audit                                # every record, one line each
  medviewer audit --since 2026-01-31             # from that day (UTC) on
  medviewer audit --since 2026-01-31T08:00+01:00 --json > audit.json
  medviewer audit --verify                       # recompute the hash chain and the MACs
  medviewer audit --verify --expect-last 1234    # ... and fail when record 1234 is gone (truncated)
  medviewer audit --verify --expect-last 9f86d081884c7d65  # ... the same by (a prefix of) its hash

Each record carries an HMAC-SHA256 under the audit key, kept outside the log: $MEDVIEWER_AUDIT_KEY_FILE,
else audit.key in the user config directory (~/.config/medviewer on Linux), created with mode 0600 on
the first record. --verify prints the last record's sequence number and hash: keep them elsewhere (a
ticket, another machine) and pass one to --expect-last later; the hash also catches a log cut off and
then appended to. Reading the log is itself recorded (audit-log-used, DCM 110101).
Exit status: 0 ok, 1 an unreadable log or (with --verify) a broken chain, a MAC mismatch or a missing
--expect-last record."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``audit`` on the ``medviewer`` subcommand parser."""
    p = subparsers.add_parser(
        "audit", help="show or verify the audit trail (who did what to which study, with which model)",
        description="Show the audit trail (IHE ATNA / DICOM PS3.15 A.5 events: study opened, AI run, results "
                    "exported, de-identified, sent, model imported) or verify its hash chain.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--since", metavar="DATE", default=None,
                   help="only records at or after DATE (YYYY-MM-DD or ISO 8601 date-time, UTC unless an offset is given)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--verify", action="store_true",
                   help="check the hash chain and the records' MACs; exit 1 when either is broken")
    p.add_argument("--expect-last", metavar="N|HASH", default=None,
                   help="with --verify: the sequence number or hash (16+ hex digits) of the last record noted "
                        "earlier; exit 1 when that record is no longer in the log (records cut off its end)")
    p.set_defaults(run=run)
    return p


def parse_since(text: str) -> datetime:
    """``YYYY-MM-DD`` or an ISO 8601 date-time -> an aware datetime (UTC when no offset is given).

    Raises :class:`MedViewerError` on anything else.
    """
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MedViewerError(f"--since: {text!r} is not a date (YYYY-MM-DD) or ISO 8601 date-time") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _line(rec: dict) -> str:
    objs = rec.get("objects") or []
    kinds: dict[str, int] = {}
    for o in objs:
        kinds[o.get("type", "?")] = kinds.get(o.get("type", "?"), 0) + 1
    first = next((o["uid"] for o in objs if o.get("type") == "study"), objs[0]["uid"] if objs else "")
    what = ", ".join(f"{n} {k}" for k, n in kinds.items()) + (f" ({first})" if first else "")
    model = rec.get("model")
    model_text = f"  model {model.get('name')} {model.get('version')} sha256 {str(model.get('sha256'))[:12]}" if model else ""
    return (f"{rec.get('time', '?')}  {rec.get('user', '?')}  {rec.get('action', '?')}  {rec.get('outcome', '?')}"
            f"{'  ' + what if what else ''}{model_text}")


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer audit``; returns 0, or 1 when ``--verify`` finds the chain broken."""
    from medviewer import audit

    since = parse_since(args.since) if args.since else None
    path = audit.audit_path()
    if args.expect_last is not None and not args.verify:
        raise MedViewerError("--expect-last needs --verify")
    if args.verify:
        try:
            anchor = audit.parse_anchor(args.expect_last) if args.expect_last is not None else None
        except ValueError as exc:
            raise MedViewerError(f"--expect-last: {exc}") from None
        res = audit.verify(path, expect_last=anchor)
        _used("verify")
        for warning in res.warnings:
            print(f"medviewer: warning: {warning}", file=sys.stderr)
        if res.ok:
            macs = (f", {res.keyed} MACs checked with the audit key {audit.audit_key_path()}" if res.keyed
                    else ", no MACs checked")
            found = f"; record {anchor} found" if anchor is not None else ""
            print(f"{path}: {res.records} records, hash chain intact{macs}{found}; "
                  f"last record {res.last_seq} hash {res.last_hash}")
            return 0
        for problem in res.problems[:20]:
            print(f"medviewer: error: {path}: {problem}")
        raise MedViewerError(f"{path}: audit log failed verification ({len(res.problems)} problems in "
                             f"{res.records} records)")
    records = audit.read(since, path)
    _used("read")
    if args.json:
        print(json.dumps(records, indent=2))
    elif not records:
        print(f"no audit records{' since ' + args.since if args.since else ''} in {path}")
    else:
        for rec in records:
            print(_line(rec))
    return 0


def _used(how: str) -> None:
    from medviewer import audit

    try:
        audit.record(audit.AuditEvent.AUDIT_LOG_USED, detail={"how": how})
    except MedViewerError:
        pass  # reading a log on a read-only medium still works
