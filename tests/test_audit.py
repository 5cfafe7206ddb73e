"""The audit trail: append-only JSON lines, a SHA-256 hash chain that detects edits, and the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from medviewer import audit
from medviewer.cli import main

STUDY = "1.3.6.1.4.1.14519.5.2.1.21087345762211724523378497892240459677"


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    d = tmp_path / "audit"
    monkeypatch.setenv(audit.AUDIT_DIR_ENV, str(d))
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, str(tmp_path / "keys" / "audit.key"))  # not the user's own key
    return d


def _three():
    audit.record(audit.AuditEvent.STUDY_OPENED, objects=audit.object_refs([STUDY]))
    audit.record_ai_run({"name": "pneumonia-cxr", "version": "1.0.0", "sha256": "ab" * 32, "path": "/x"},
                        ["1.2.3.4", "1.2.3.5", "1.2.3.5"], study_uids=[STUDY], scored=1, failed=1, provider="cpu")
    audit.record(audit.AuditEvent.MODEL_IMPORTED, model={"name": "m", "version": "2", "sha256": "cd" * 32})


def test_records_chain_and_fields(log_dir):
    _three()
    assert audit.audit_path() == log_dir / "audit.jsonl"
    lines = (log_dir / "audit.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert recs[0]["prev"] == audit.GENESIS
    assert recs[1]["prev"] == recs[0]["hash"] and recs[2]["prev"] == recs[1]["hash"]
    ai = recs[1]
    assert ai["action"] == "ai-run" and ai["event_id"]["code"] == "110103" and ai["event_action"] == "E"
    assert ai["outcome"] == "minor failure" and ai["outcome_code"] == 4
    assert ai["model"] == {"name": "pneumonia-cxr", "version": "1.0.0", "sha256": "ab" * 32}  # no path
    assert ai["objects"] == [{"type": "study", "uid": STUDY}, {"type": "sop", "uid": "1.2.3.4"},
                             {"type": "sop", "uid": "1.2.3.5"}]
    assert ai["user"] and datetime.fromisoformat(ai["time"]).tzinfo is not None
    res = audit.verify()
    assert res.ok and res.records == 3 and res.last_hash == recs[2]["hash"]


def test_objects_must_be_uids(log_dir):
    with pytest.raises(ValueError, match="UID only"):
        audit.record(audit.AuditEvent.STUDY_OPENED, objects=[{"type": "study", "uid": "Doe^John"}])
    assert not (log_dir / "audit.jsonl").exists() or audit.read() == []


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "reorder"])
def test_verify_detects_tampering(log_dir, tamper):
    _three()
    path = log_dir / "audit.jsonl"
    lines = path.read_text().splitlines()
    if tamper == "edit":
        rec = json.loads(lines[1])
        rec["outcome"] = "success"
        lines[1] = json.dumps(rec, sort_keys=True)
    elif tamper == "delete":
        del lines[1]
    elif tamper == "insert":
        rec = json.loads(lines[0])
        lines.insert(1, json.dumps(rec, sort_keys=True))
    else:
        lines[0], lines[1] = lines[1], lines[0]
    path.write_text("\n".join(lines) + "\n")
    res = audit.verify()
    assert not res.ok and res.problems


def test_since_filter(log_dir):
    _three()
    assert len(audit.read(datetime.now(timezone.utc) - timedelta(minutes=5))) == 3
    assert audit.read(datetime.now(timezone.utc) + timedelta(minutes=5)) == []


def test_cli_audit_read_json_verify(log_dir, capsys):
    _three()
    assert main(["audit"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "ai-run" in out[1] and "pneumonia-cxr 1.0.0" in out[1] and STUDY in out[0]
    assert main(["audit", "--json", "--since", "2000-01-01"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in recs] == ["study-opened", "ai-run", "model-imported", "audit-log-used"]
    assert main(["audit", "--verify"]) == 0
    assert "hash chain intact" in capsys.readouterr().out
    # reading the log was itself audited (ATNA "Audit Log Used")
    assert [r["action"] for r in audit.read()][-3:] == ["audit-log-used"] * 3
    path = log_dir / "audit.jsonl"
    path.write_text(path.read_text().replace('"ai-run"', '"study-opened"', 1))
    assert main(["audit", "--verify"]) == 1
    err = capsys.readouterr()
    assert "hash mismatch" in err.out and "failed verification" in err.err
    assert main(["audit", "--since", "yesterday"]) == 1
    assert "is not a date" in capsys.readouterr().err


def test_unwritable_log_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(audit.AUDIT_DIR_ENV, str(blocker / "sub"))
    with pytest.raises(audit.MedViewerError, match="cannot write the audit log"):
        audit.record(audit.AuditEvent.SENT)
    assert audit.record_ai_run({"name": "m"}, [], scored=1, failed=0) is None
    assert "audit record not written" in capsys.readouterr().err
