"""The audit trail's anchor and key: ``medviewer audit --verify --expect-last N|HASH`` finds a log whose last
records were cut off (which a hash chain alone cannot see), and the HMAC key lives in a per-user 0600 file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from medviewer import audit
from medviewer.cli import main

STUDY = "1.3.6.1.4.1.14519.5.2.1.21087345762211724523378497892240459677"


@pytest.fixture
def log(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.AUDIT_DIR_ENV, str(tmp_path / "audit"))
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, str(tmp_path / "keys" / "audit.key"))
    for event in (audit.AuditEvent.STUDY_OPENED, audit.AuditEvent.AI_RUN, audit.AuditEvent.SENT,
                  audit.AuditEvent.SENT):
        audit.record(event, objects=audit.object_refs([STUDY]))
    return tmp_path / "audit" / "audit.jsonl"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medviewer: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _cut(path, keep: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))


def test_verify_prints_the_anchor_and_expect_last_finds_a_truncated_log(log, capsys):
    assert main(["audit", "--verify"]) == 0
    out = capsys.readouterr().out
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    # the line names the last record verified (before the audit-log-used record this run appended)
    assert f"last record 4 hash {recs[3]['hash']}" in out and "4 MACs checked" in out, out
    seq, full, prefix = "5", recs[4]["hash"], recs[4]["hash"][:16]   # the anchor noted now: record 5
    for anchor in (seq, full, prefix, full.upper(), "3"):
        assert main(["audit", "--verify", "--expect-last", anchor]) == 0, anchor
        assert "found" in capsys.readouterr().out

    _cut(log, 3)                                  # records 4.. cut off the end
    assert audit.verify().ok                      # still a valid chain: only the anchor sees it
    assert main(["audit", "--verify", "--expect-last", seq]) == 1
    cap = capsys.readouterr()
    assert "ends at record 3 but record 5 was expected: 2 records removed" in cap.out
    assert "failed verification" in cap.err
    _cut(log, 3)                                  # (the failed run appended its audit-log-used record)
    assert main(["audit", "--verify", "--expect-last", prefix]) == 1
    assert "is not in the log" in capsys.readouterr().out


def test_hash_anchor_catches_a_log_cut_and_appended_to(log):
    last = audit.verify()
    assert last.last_seq == 4
    _cut(log, 2)
    for _ in range(3):                            # new records take sequence numbers 3, 4, 5 again
        audit.record(audit.AuditEvent.SENT)
    assert audit.verify(expect_last=4).ok         # the sequence number is there again: it cannot tell...
    res = audit.verify(expect_last=last.last_hash)
    assert not res.ok and "is not in the log" in res.problems[-1]   # ...the hash can


@pytest.mark.parametrize("bad", ["0", "abc", "12ab", "9f86d081", "-3"])
def test_malformed_anchor_is_one_line(log, capsys, bad):
    assert main(["audit", "--verify", f"--expect-last={bad}"]) == 1
    assert "--expect-last:" in one_line_error(capsys)
    with pytest.raises(ValueError):
        audit.parse_anchor(bad)


def test_expect_last_needs_verify(log, capsys):
    assert main(["audit", "--expect-last", "3"]) == 1
    assert "--expect-last needs --verify" in one_line_error(capsys)


def test_default_key_is_a_per_user_0600_file(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.AUDIT_DIR_ENV, str(tmp_path / "audit"))
    monkeypatch.delenv(audit.AUDIT_KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    old = os.umask(0)
    try:
        rec = audit.record(audit.AuditEvent.SENT)
    finally:
        os.umask(old)
    key = audit.audit_key_path()
    assert key == tmp_path / "config" / "medviewer" / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == os.getuid()
    assert "mac" in rec and audit.verify().keyed == 1
    assert str(key) not in (tmp_path / "audit" / "audit.jsonl").read_text()   # the key is not in the log


def test_loose_key_mode_and_missing_key_are_warned(log, capsys):
    key = audit.audit_key_path()
    key.chmod(0o644)
    assert main(["audit", "--verify"]) == 0
    assert "can be read by other accounts (mode 644)" in capsys.readouterr().err
    key.unlink()
    res = audit.verify()
    assert res.ok and res.keyed == 0 and any("not checked: no audit key" in w for w in res.warnings)
