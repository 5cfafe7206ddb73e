"""No PHI where it does not belong: after a CLI session on a real file that carries a patient name, ID,
birth date and accession number, nothing MedViewer wrote under the user's folders contains them, and the
audit trail records the AI run by UID with the model's identity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom

from tests.conftest import REPO, pydicom_test_file


def _session_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDVIEWER_", "XDG_"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_CACHE_HOME=str(home / "cache"), XDG_STATE_HOME=str(home / "state"), QT_QPA_PLATFORM="offscreen",
               PYTHONPATH=str(REPO))
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medviewer", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _phi(ds: pydicom.Dataset) -> list[str]:
    name = str(ds.PatientName)
    birth = str(ds.PatientBirthDate)
    values = [name, *(p for p in name.split("^") if len(p) > 2), str(ds.PatientID), birth,
              f"{birth[:4]}-{birth[4:6]}-{birth[6:]}", str(ds.AccessionNumber)]
    return [v for v in values if v]


def test_no_phi_under_user_folders_after_info_infer_anonymize(tmp_path):
    src = pydicom_test_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(src)
    phi = _phi(ds)
    assert len(phi) >= 5 and all(phi)  # the file really carries name, ID, birth date and accession
    home = tmp_path / "home"
    home.mkdir()
    study = tmp_path / "input" / "study1"
    study.mkdir(parents=True)
    shutil.copy(src, study / "image.dcm")  # a folder name without patient data, as the issue requires
    env = _session_env(home)

    info = _run(["info", str(study)], env, tmp_path)
    assert info.returncode == 0, info.stderr
    infer = _run(["infer", str(study), "--out", str(tmp_path / "results"), "--quiet"], env, tmp_path)
    assert infer.returncode == 0, infer.stderr
    anon = _run(["anonymize", str(study), "--out", str(tmp_path / "anon"), "--quiet"], env, tmp_path)
    assert anon.returncode == 0, anon.stderr
    audit_cli = _run(["audit", "--json"], env, tmp_path)
    assert audit_cli.returncode == 0, audit_cli.stderr

    written = [p for p in home.rglob("*") if p.is_file()]
    log = home / "data" / "medviewer" / "audit" / "audit.jsonl"
    assert log in written  # the audit trail is in the user data folder
    for path in written:
        data = path.read_bytes()
        for value in phi:
            assert value.encode() not in data, f"{value!r} found in {path.relative_to(home)}"
        assert str(ds.PatientName).encode("utf-16-le") not in data

    records = [json.loads(line) for line in log.read_text().splitlines()]
    ai = [r for r in records if r["action"] == "ai-run"]
    assert len(ai) == 1
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert ai[0]["model"] == {k: results["model"][k] for k in ("name", "version", "sha256")}
    assert {"type": "sop", "uid": str(ds.SOPInstanceUID)} in ai[0]["objects"]
    assert {"type": "study", "uid": str(ds.StudyInstanceUID)} in ai[0]["objects"]
    assert ai[0]["outcome"] == "success" and ai[0]["user"]
    assert [r["action"] for r in records] == ["ai-run", "de-identified", "audit-log-used"]  # info only reads
    verify = _run(["audit", "--verify"], env, tmp_path)
    assert verify.returncode == 0 and "hash chain intact" in verify.stdout
