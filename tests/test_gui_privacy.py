"""A workstation session under pytest-qt on a real chest radiograph that carries a patient name, ID, birth date
and accession number: open, run the model, export a PNG and de-identified DICOM results. Afterwards the audit
trail holds study-opened, ai-run and results-exported records by UID, and nothing written under the user's
folders (XDG config/data/cache/state, MEDVIEWER_CONFIG_DIR, the Qt settings file) contains the patient's data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from tests.conftest import pydicom_test_file
from tests.test_privacy import _phi

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402

from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402

TIMEOUT = 30000


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The user's folders in a throw-away home (platformdirs and Qt follow XDG_*)."""
    home = tmp_path / "home"
    for sub in ("data", "config", "cache", "state"):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(f"XDG_{sub.upper()}_HOME", str(home / sub))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MEDVIEWER_CONFIG_DIR", str(home / "config" / "medviewer"))
    monkeypatch.delenv("MEDVIEWER_AUDIT_DIR", raising=False)
    return home


def test_gui_session_audited_by_uid_and_no_phi_under_user_folders(qtbot, home, tmp_path, monkeypatch):
    from medviewer import audit
    from medviewer.deid import DeidOptions, anonymize_dataset, load_key

    shown_errors: list[str] = []
    monkeypatch.setattr("medviewer.gui.dialogs.QMessageBox.critical",
                        lambda parent, title, text: shown_errors.append(f"{title}: {text}"))
    src = pydicom_test_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    phi = _phi(ds)
    assert len(phi) >= 5  # name, its parts, ID, birth date (two spellings), accession
    study = tmp_path / "input" / "study1"
    study.mkdir(parents=True)
    shutil.copy(src, study / "image.dcm")  # a folder name without patient data
    key_file = tmp_path / "site.key"
    key_file.write_bytes(b"0123456789abcdef-gui-key")

    settings = Settings(QSettings(str(home / "config" / "MedViewer" / "MedViewer.conf"), QSettings.IniFormat))
    win = MainWindow(settings, provider="cpu")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=TIMEOUT)
    assert win.package is not None
    win.panel.auto_run.setChecked(False)
    win.open_paths([str(study)])
    qtbot.waitUntil(lambda: win.active.has_image() and not win.loader.scanning, timeout=TIMEOUT)
    with qtbot.waitSignal(win.predictionShown, timeout=TIMEOUT):
        win.run_ai()
    (tmp_path / "out").mkdir()
    assert win.export_png(str(tmp_path / "out" / "view.png"))

    from medviewer.gui.results_dialog import ResultsDialog

    dlg = ResultsDialog(win, to_pacs=False)
    dlg.folder.setText(str(tmp_path / "out" / "dicom"))
    dlg.anonymize.setChecked(True)
    dlg.key_file.setText(str(key_file))
    with qtbot.waitSignal(dlg.done_with, timeout=TIMEOUT) as blocker:
        assert dlg.start()
    res = blocker.args[0]
    qtbot.waitUntil(lambda: not dlg.running, timeout=TIMEOUT)
    assert not shown_errors, shown_errors
    win.close()
    win.audit.wait()
    settings.sync()

    # the de-identified results reference the copy `medviewer anonymize --pseudonym-key` would write
    copy = anonymize_dataset(ds, DeidOptions(), load_key(key_file))
    written = [Path(p) for p in res["paths"]]
    assert sorted(p.name[:3] for p in written) == ["SC_", "SR_"]
    for p in written:
        out = pydicom.dcmread(p)
        assert out.StudyInstanceUID == copy.StudyInstanceUID and out.PatientID == copy.PatientID
        data = p.read_bytes()
        assert not [v for v in phi if v.encode() in data], p.name
        assert str(ds.SOPInstanceUID).encode() not in data

    records = audit.read()
    assert audit.audit_path().is_relative_to(home)
    actions = [r["action"] for r in records]
    assert actions == ["study-opened", "ai-run", "results-exported", "results-exported"], actions
    opened, ai_run, png, dicom = records
    assert {"type": "study", "uid": str(ds.StudyInstanceUID)} in opened["objects"]
    assert {"type": "series", "uid": str(ds.SeriesInstanceUID)} in opened["objects"]
    assert {"type": "sop", "uid": str(ds.SOPInstanceUID)} in ai_run["objects"]
    assert ai_run["model"]["sha256"] == win.package.card.sha256 and ai_run["outcome"] == "success"
    assert png["detail"] == {"format": "png", "de-identified": False, "overlays": True, "patient_text": False}
    assert dicom["detail"]["de-identified"] is True
    out_uids = {o["uid"] for o in dicom["objects"]}
    assert out_uids == set(res["sop_uids"]) and str(ds.SOPInstanceUID) not in out_uids  # as they went out
    assert audit.verify().ok

    files = [p for p in home.rglob("*") if p.is_file()]
    assert audit.audit_path() in files and any(p.suffix == ".conf" for p in files)  # the log and Qt's settings
    for path in files:
        data = path.read_bytes()
        found = [v for v in phi if v.encode() in data or v.encode("utf-16-le") in data]
        assert not found, f"{found} in {path.relative_to(home)}"
    assert json.loads(audit.audit_path().read_text().splitlines()[0])["user"]
