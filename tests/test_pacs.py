"""``medviewer pacs`` against a real Orthanc over DIMSE and DICOMweb: echo, find, get, send, bad nodes.

One Orthanc per test session (tests/orthanc.py), the shared 134-slice CT uploaded once. Network traffic
stays on 127.0.0.1. Without Orthanc (apt-get install orthanc orthanc-dicomweb) these tests skip.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest

from medviewer.cli import main
from medviewer.pacs import Credentials, PacsError, StudyQuery, connect, parse_node, retrieve_study
from medviewer.pacs.node import ENV_PASSWORD, ENV_TOKEN, ENV_USER, Protocol, load_nodes
from tests.conftest import CT_SERIES, pydicom_test_file
from tests.orthanc import Orthanc, free_port, orthanc_unavailable, start_orthanc

PROTOCOLS = ["dimse", "dicomweb"]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> Orthanc:
    """A running Orthanc holding the shared CT (when present) and one pydicom CT test file."""
    why = orthanc_unavailable()
    if why:
        pytest.skip(why)
    orth = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        files = [pydicom_test_file("CT_small.dcm")]
        if CT_SERIES.is_dir():
            files += sorted(CT_SERIES.glob("*.dcm"))
        orth.upload(files)
        yield orth
    finally:
        orth.stop()


@pytest.fixture
def env(orthanc, monkeypatch, tmp_path):
    """Credentials for the Orthanc in the environment; saved nodes in a throw-away config folder."""
    monkeypatch.setenv(ENV_USER, orthanc.user)
    monkeypatch.setenv(ENV_PASSWORD, orthanc.password)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.setenv("MEDVIEWER_CONFIG_DIR", str(tmp_path / "config"))
    return orthanc


def url(orth: Orthanc, protocol: str) -> str:
    return orth.dimse_url if protocol == "dimse" else orth.dicomweb_url


@pytest.fixture(scope="session")
def ct_uids() -> dict[str, str]:
    """SOP Instance UID -> Study Instance UID of the shared CT (read from the files)."""
    if not CT_SERIES.is_dir():
        pytest.skip(f"shared CT series not found at {CT_SERIES} (../shared/data is absent)")
    out = {}
    for f in sorted(CT_SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = str(ds.StudyInstanceUID)
    return out


# -- nodes ------------------------------------------------------------------------------------------------
def test_parse_node_forms():
    n = parse_node("dicom://ORTHANC@pacs.example:4242")
    assert (n.protocol, n.aet, n.host, n.port) == (Protocol.DIMSE, "ORTHANC", "pacs.example", 4242)
    w = parse_node("https://pacs.example/dicom-web/")
    assert (w.protocol, w.port, w.url) == (Protocol.DICOMWEB, 443, "https://pacs.example/dicom-web")
    for bad, why in [("ftp://x", "not a PACS node"), ("dicom://host:104", "dicom://AET@host:port"),
                     ("dicom://THIS_AE_TITLE_IS_TOO_LONG@h:104", "AE title"),
                     ("http://user:pw@host/dicom-web", "credentials do not belong")]:
        with pytest.raises(PacsError, match=why):
            parse_node(bad)


def test_add_list_remove_saved_nodes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDVIEWER_CONFIG_DIR", str(tmp_path))
    assert main(["pacs", "add", "home", "dicom://ORTHANC@127.0.0.1:4242"]) == 0
    assert main(["pacs", "add", "web", "http://127.0.0.1:8042/dicom-web"]) == 0
    assert load_nodes() == {"home": "dicom://ORTHANC@127.0.0.1:4242", "web": "http://127.0.0.1:8042/dicom-web"}
    capsys.readouterr()
    assert main(["pacs", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["home\tdicom://ORTHANC@127.0.0.1:4242",
                                                    "web\thttp://127.0.0.1:8042/dicom-web"]
    assert main(["pacs", "remove", "home"]) == 0
    assert list(load_nodes()) == ["web"]
    assert main(["pacs", "remove", "home"]) == 1
    assert "no saved node" in capsys.readouterr().err
    assert main(["pacs", "add", "bad", "dicom://nohost"]) == 1
    assert main(["pacs", "echo", "unknown-name"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medviewer: error: unknown-name: not a PACS node or saved name")


# -- echo / find ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_echo(env, protocol, capsys):
    assert main(["pacs", "echo", url(env, protocol)]) == 0
    assert "OK" in capsys.readouterr().out


def test_echo_saved_name(env, capsys):
    assert main(["pacs", "add", "orthanc", env.dimse_url]) == 0
    assert main(["pacs", "echo", "orthanc"]) == 0
    assert capsys.readouterr().out.strip().endswith("ms)")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_find_json_and_filters(env, protocol, capsys):
    ct_small = pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True)
    assert main(["pacs", "find", url(env, protocol), "--json"]) == 0
    studies = json.loads(capsys.readouterr().out)
    keys = ["StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyDescription",
            "ModalitiesInStudy", "AccessionNumber", "NumberOfStudyRelatedInstances"]
    assert studies and all(list(s) == keys for s in studies)
    by_uid = {s["StudyInstanceUID"]: s for s in studies}
    small = by_uid[str(ct_small.StudyInstanceUID)]
    assert small["PatientID"] == str(ct_small.PatientID)
    assert small["StudyDate"] == str(ct_small.StudyDate)
    assert small["ModalitiesInStudy"] == ["CT"] and small["NumberOfStudyRelatedInstances"] == 1

    # filters: patient ID (exact and wild card), date range, modality, accession
    assert main(["pacs", "find", url(env, protocol), "--patient-id", str(ct_small.PatientID), "--json"]) == 0
    assert [s["StudyInstanceUID"] for s in json.loads(capsys.readouterr().out)] == [str(ct_small.StudyInstanceUID)]
    d = str(ct_small.StudyDate)
    assert main(["pacs", "find", url(env, protocol), "--study-date", f"{d}-{d}", "--json"]) == 0
    assert str(ct_small.StudyInstanceUID) in [s["StudyInstanceUID"] for s in json.loads(capsys.readouterr().out)]
    assert main(["pacs", "find", url(env, protocol), "--study-date", "19000101-19000102", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["pacs", "find", url(env, protocol), "--modality", "MR", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["pacs", "find", url(env, protocol), "--patient-id", "no-such-patient*", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_find_shared_ct(env, protocol, ct_uids, capsys):
    study = next(iter(ct_uids.values()))
    assert main(["pacs", "find", url(env, protocol), "--patient-id", "Pancreas-CT-CB_0*", "--modality", "CT",
                 "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)
    assert hit["StudyInstanceUID"] == study
    assert hit["NumberOfStudyRelatedInstances"] == len(ct_uids) == 134
    assert main(["pacs", "find", url(env, protocol), "--patient-name", "Pancreas*"]) == 0
    assert study in capsys.readouterr().out


# -- get --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_get_shared_ct_resumes_and_verifies(env, protocol, ct_uids, tmp_path, capsys):
    study = next(iter(ct_uids.values()))
    out = tmp_path / "in"
    t0 = time.perf_counter()
    assert main(["pacs", "get", url(env, protocol), study, "--out", str(out), "--no-progress"]) == 0
    seconds = time.perf_counter() - t0
    files = sorted(out.rglob("*.dcm"))
    got = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert len(files) == 134 and got == set(ct_uids)
    assert all(f.stem == str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:5])
    assert "134 of 134 instances (134 retrieved, 0 already present)" in capsys.readouterr().out
    print(f"{protocol}: 134 CT instances in {seconds:.2f} s")

    # pixel data arrive unchanged
    src = next(iter(sorted(CT_SERIES.glob("*.dcm"))))
    ref = pydicom.dcmread(src)
    mine = pydicom.dcmread(next(f for f in files if f.stem == str(ref.SOPInstanceUID)))
    assert (mine.pixel_array == ref.pixel_array).all()

    # resume: delete three, only those three come back
    for f in files[:3]:
        f.unlink()
    assert main(["pacs", "get", url(env, protocol), study, "--out", str(out), "--no-progress"]) == 0
    assert "134 of 134 instances (3 retrieved, 131 already present)" in capsys.readouterr().out
    assert len(list(out.rglob("*.dcm"))) == 134


def test_get_with_c_move_to_our_storage_scp(env, ct_uids, tmp_path, capsys):
    study = next(iter(ct_uids.values()))
    args = ["pacs", "get", env.dimse_url, study, "--out", str(tmp_path), "--no-progress",
            "--move-port", str(env.move_port), "--move-bind", "127.0.0.1"]
    assert main(args) == 0
    files = sorted(tmp_path.rglob("*.dcm"))
    assert {f.stem for f in files} == set(ct_uids)
    assert "134 of 134 instances (134 retrieved, 0 already present)" in capsys.readouterr().out
    files[0].unlink()
    assert main(args) == 0
    assert "(1 retrieved, 133 already present)" in capsys.readouterr().out
    # a move destination the PACS does not know is a one-line error
    files[1].unlink()
    assert main(args + ["--aet", "STRANGER"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medviewer: error: ") and "\n" not in err and "STRANGER" in err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_get_partial_says_what_is_missing(env, protocol, ct_uids, tmp_path):
    study = next(iter(ct_uids.values()))
    with connect(url(env, protocol), credentials=Credentials(user=env.user, password=env.password)) as client:
        calls = []

        def sink_dropping(orig):
            def retrieve(study_uid, series_uid, sops, sink, **kw):
                def keep_some(ds):  # the "network" loses every 50th instance
                    calls.append(1)
                    if len(calls) % 50:
                        sink(ds)
                return orig(study_uid, series_uid, sops, keep_some, **kw)
            return retrieve

        client.retrieve = sink_dropping(client.retrieve)
        result = retrieve_study(client, study, tmp_path)
    assert len(result.expected) == 134 and len(result.missing) == 134 // 50
    assert {r.sop_instance_uid for r in result.missing} <= set(ct_uids)
    assert not result.complete


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_get_unknown_study_is_one_line(env, protocol, tmp_path, capsys):
    assert main(["pacs", "get", url(env, protocol), "1.2.826.0.1.3680043.99.1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such study 1.2.826.0.1.3680043.99.1" in err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_get_into_a_file_is_one_line(env, protocol, tmp_path, capsys):
    small = pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["pacs", "get", url(env, protocol), str(small.StudyInstanceUID), "--out", str(blocker)]) == 1
    assert "cannot create the folder" in _one_line_error(capsys)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / str(small.StudyInstanceUID)).write_text("a file where the study folder goes")
    assert main(["pacs", "get", url(env, protocol), str(small.StudyInstanceUID), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    assert "cannot write" in _one_line_error(capsys)


# -- send -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_arrives(env, protocol, tmp_path, capsys):
    src = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    src.SOPInstanceUID = pydicom.uid.generate_uid()  # a new instance per protocol
    src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
    f = tmp_path / "mr.dcm"
    src.save_as(f, enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert main(["pacs", "send", url(env, protocol), str(tmp_path)]) == 0
    assert "sent 1 of 1 instance" in capsys.readouterr().out
    found = env.rest("/tools/find", "POST", json={"Level": "Instance",
                                                  "Query": {"SOPInstanceUID": str(src.SOPInstanceUID)}})
    assert len(found) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_anonymized_copies_leave_no_phi_and_are_audited(env, protocol, tmp_path, monkeypatch, capsys):
    from medviewer import audit

    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(tmp_path / "audit"))
    src = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    src.SOPInstanceUID = pydicom.uid.generate_uid()
    src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
    src.PatientName, src.PatientID = "Doe^Jane", "PID-7731"
    f = tmp_path / "in" / "ct.dcm"
    f.parent.mkdir()
    src.save_as(f, enforce_file_format=True)
    before = f.read_bytes()
    key = tmp_path / "key.bin"
    key.write_bytes(b"0123456789abcdef-site-key")
    assert main(["pacs", "send", url(env, protocol), str(f.parent), "--anonymize", "--pseudonym-key", str(key)]) == 0
    assert "sent 1 of 1 de-identified instance" in capsys.readouterr().out
    assert f.read_bytes() == before  # the file on disk is untouched
    assert not env.rest("/tools/find", "POST", json={"Level": "Instance",
                                                     "Query": {"SOPInstanceUID": str(src.SOPInstanceUID)}})
    found = env.rest("/tools/find", "POST", json={"Level": "Instance", "Expand": True,
                                                  "Query": {"PatientID": "ANON*"}})
    tags = [env.rest(f"/instances/{i['ID']}/simplified-tags") for i in found]
    mine = [t for t in tags if t.get("PatientIdentityRemoved") == "YES" and t.get("Rows") == "128"]
    assert mine and all("Doe" not in str(t) and "PID-7731" not in str(t) for t in mine)
    rec = [r for r in audit.read() if r["action"] == "sent"][-1]
    assert rec["detail"]["de-identified"] is True and rec["detail"]["instances"] == 1
    assert all(o["uid"] != str(src.StudyInstanceUID) for o in rec["objects"])  # the UIDs as they went out
    assert main(["pacs", "send", url(env, protocol), str(f), "--pseudonym-key", str(key)]) == 1
    assert "--pseudonym-key needs --anonymize" in capsys.readouterr().err


# -- bad nodes --------------------------------------------------------------------------------------------
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medviewer: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closed_port(env, protocol, capsys):
    port = free_port()
    node = f"dicom://ORTHANCTEST@127.0.0.1:{port}" if protocol == "dimse" else f"http://127.0.0.1:{port}/dicom-web"
    assert main(["pacs", "echo", node, "--timeout", "5"]) == 1
    assert "connection refused" in _one_line_error(capsys)


def test_wrong_called_aet(env, capsys):
    assert main(["pacs", "echo", f"dicom://NOT_ORTHANC@127.0.0.1:{env.dicom_port}"]) == 1
    err = _one_line_error(capsys)
    assert "association rejected" in err and "NOT_ORTHANC" in err, err


def test_unknown_calling_aet_is_explained(orthanc, tmp_path, capsys):
    """Orthanc's default: C-FIND only from AE titles it knows. Ours is registered; a stranger's is not."""
    strict = start_orthanc(tmp_path / "strict", overrides={"DicomAlwaysAllowFind": False,
                                                           "DicomAlwaysAllowGet": False})
    try:
        assert main(["pacs", "find", strict.dimse_url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert main(["pacs", "find", strict.dimse_url, "--aet", "STRANGER"]) == 1
        err = _one_line_error(capsys)
        assert "ended the association" in err and "'STRANGER'" in err and "C-FIND" in err
    finally:
        strict.stop()


def test_dicomweb_401_without_and_with_wrong_credentials(env, monkeypatch, capsys):
    monkeypatch.delenv(ENV_USER)
    monkeypatch.delenv(ENV_PASSWORD)
    assert main(["pacs", "find", env.dicomweb_url]) == 1
    err = _one_line_error(capsys)
    assert "401 Unauthorized" in err and ENV_USER in err
    monkeypatch.setenv(ENV_USER, env.user)
    monkeypatch.setenv(ENV_PASSWORD, "wrong-password")
    assert main(["pacs", "echo", env.dicomweb_url]) == 1
    err = _one_line_error(capsys)
    assert "401" in err and "wrong-password" not in err


def test_password_from_the_os_keyring(env, monkeypatch, capsys):
    import sys
    import types

    asked = []
    fake = types.ModuleType("keyring")  # stands in for the keyring package's API: get_password(service, user)
    fake.get_password = lambda service, user: asked.append((service, user)) or env.password
    monkeypatch.setitem(sys.modules, "keyring", fake)
    monkeypatch.delenv(ENV_PASSWORD)
    assert main(["pacs", "echo", env.dicomweb_url]) == 0
    assert asked == [("medviewer-pacs", f"{env.user}@{env.dicomweb_url}")]


def test_dicomweb_token_is_sent_as_bearer(env, monkeypatch, capsys):
    monkeypatch.setenv(ENV_TOKEN, "not-a-valid-token")  # Orthanc wants basic auth: a token alone is refused
    monkeypatch.delenv(ENV_USER)
    assert main(["pacs", "echo", env.dicomweb_url]) == 1
    assert "credentials were refused" in _one_line_error(capsys)


def test_dimse_timeout(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # listens, never answers the A-ASSOCIATE-RQ
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["pacs", "echo", f"dicom://SILENT@127.0.0.1:{port}", "--timeout", "1"]) == 1
    err = _one_line_error(capsys)
    assert "SILENT" in err or "127.0.0.1" in err


def test_errors_name_no_secret(env, monkeypatch):
    monkeypatch.setenv(ENV_PASSWORD, "wrong-secret")
    client = connect(env.dicomweb_url)
    with pytest.raises(PacsError) as info:
        client.find_studies(StudyQuery())
    assert "wrong-secret" not in str(info.value) and "wrong-secret" not in repr(client._credentials)


def test_send_nothing_is_an_error(env, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    assert main(["pacs", "send", env.dimse_url, str(tmp_path)]) == 1
    assert "no DICOM files" in _one_line_error(capsys)
    assert main(["pacs", "send", env.dimse_url, str(tmp_path / "a.txt")]) == 1
    assert "not a DICOM file" in _one_line_error(capsys)
    assert main(["pacs", "send", env.dimse_url, str(Path(tmp_path) / "missing")]) == 1
    assert "no such file" in _one_line_error(capsys)


# -- the PACS dialog (Qt, offscreen): search and retrieve off the GUI thread --------------------------------
def test_pacs_dialog_search_retrieve_resume(env, ct_uids, tmp_path, qtbot):
    from medviewer.gui.pacs_dialog import PacsDialog

    study = next(iter(ct_uids.values()))
    dlg = PacsDialog()
    qtbot.addWidget(dlg)
    dlg.node.setEditText(env.dicomweb_url)
    dlg.patient_id.setText("Pancreas*")
    dlg.search()
    qtbot.waitUntil(lambda: not dlg.busy, timeout=20000)
    assert [m["StudyInstanceUID"] for m in dlg.matches] == [study]
    assert dlg.table.rowCount() == 1 and dlg.table.item(0, 0).text() == "2012-07-06"
    assert dlg.selected_study() == study

    dlg.node.setEditText(env.dimse_url)
    dlg.out_dir.setText(str(tmp_path))
    with qtbot.waitSignal(dlg.studyRetrieved, timeout=60000) as got:
        dlg.retrieve()
    assert got.args[0] == tmp_path / study
    assert len(list((tmp_path / study).rglob("*.dcm"))) == 134
    assert dlg.progress.value() == dlg.progress.maximum() == 134

    # a cancelled retrieval keeps what arrived; the next one resumes
    for f in sorted((tmp_path / study).rglob("*.dcm"))[:40]:
        f.unlink()
    dlg.retrieve()
    dlg.cancel()
    qtbot.waitUntil(lambda: not dlg.busy, timeout=60000)
    assert dlg.status.text().startswith(("Cancelled", "Retrieved"))
    with qtbot.waitSignal(dlg.studyRetrieved, timeout=60000):
        dlg.retrieve()
    assert len(list((tmp_path / study).rglob("*.dcm"))) == 134


def test_pacs_dialog_error_is_one_line(env, qtbot):
    from medviewer.gui.pacs_dialog import PacsDialog

    dlg = PacsDialog()
    qtbot.addWidget(dlg)
    dlg.node.setEditText(f"dicom://WRONG@127.0.0.1:{env.dicom_port}")
    dlg.echo()
    qtbot.waitUntil(lambda: not dlg.busy, timeout=20000)
    # Orthanc rejects the wrong called AE title; right after the cancelled C-GET above it sometimes aborts the
    # association instead (the earlier one is still being torn down): either way one line, naming the cause
    text = dlg.status.text()
    assert text.startswith("Echo failed:") and ("association rejected" in text or "association aborted" in text)
    assert "\n" not in text


def test_pacs_dialog_triage_fills_the_worklist(env, tmp_path, qtbot, monkeypatch):
    """PACS dialog > Triage these studies: the listed study is retrieved and scored in the worklist dock."""
    from PySide6.QtCore import QSettings

    from medviewer.gui.main_window import MainWindow
    from medviewer.gui.settings import Settings
    from tests.conftest import REPO

    demo = REPO / "resources" / "demo" / "paediatric-cxr-pneumonia.dcm"
    env.upload([demo])
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # the worklist's read state in tmp
    win = MainWindow(Settings(QSettings(str(tmp_path / "m.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=60000)
    from medviewer.gui.pacs_dialog import PacsDialog

    win.show_pacs_dialog()
    dlg = win.findChild(PacsDialog)
    dlg.node.setEditText(env.dicomweb_url)
    dlg.patient_id.setText("KERMANY*")
    dlg.out_dir.setText(str(tmp_path / "pacs"))
    dlg.search()
    qtbot.waitUntil(lambda: not dlg.busy, timeout=20000)
    study = str(pydicom.dcmread(demo, stop_before_pixels=True).StudyInstanceUID)
    assert [m["StudyInstanceUID"] for m in dlg.matches] == [study]
    dlg.triage()
    view = win.worklist_view
    qtbot.waitUntil(lambda: not view.busy and view.table.rowCount() == 1 and view.worklist is not None
                    and view.worklist.sorted()[0].scored >= 1, timeout=60000)
    (entry,) = view.worklist.sorted()
    assert entry.study_instance_uid == study and entry.applicability == "in_scope" and entry.flagged
    assert len(list((tmp_path / "pacs" / study).rglob("*.dcm"))) == 1  # retrieved where the dialog said
    assert "started in the worklist" in dlg.status.text()


def test_triage_pacs_retrieves_and_scores(env, tmp_path):
    from medviewer.inference import open_session
    from medviewer.inference.registry import default_model
    from medviewer.workstation.worklist import Worklist, triage_pacs

    small = pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True)
    with connect(env.dimse_url) as client:
        wl = triage_pacs(open_session(default_model(), "cpu"), client,
                         [str(small.StudyInstanceUID), "1.2.826.0.1.3680043.99.2"], tmp_path, worklist=Worklist(None))
    ct, missing = wl.sorted()
    assert ct.study_instance_uid == str(small.StudyInstanceUID) and ct.scored == 1
    assert ct.applicability == "out_of_scope" and ct.folder.is_relative_to(tmp_path)
    assert missing.study_instance_uid == "1.2.826.0.1.3680043.99.2" and "no such study" in missing.error


# -- AI results: SR and SC sent into the source study (last in this file: they add instances to the CT study) --
@pytest.fixture(scope="module")
def ai_objects(tmp_path_factory, ct_uids) -> tuple[Path, str]:
    """An SR and an SC (medviewer.export.dicom_ai) of the shared CT's first slice, scored by the shipped model."""
    from medviewer.export import render_overlay
    from medviewer.export.dicom_ai import DicomResultWriter
    from medviewer.imaging.pipeline import display_image
    from medviewer.inference import open_session
    from medviewer.inference.registry import default_model
    from medviewer.io import read_instance

    session = open_session(default_model(), "cpu")
    src = sorted(CT_SERIES.glob("*.dcm"))[0]
    inst = read_instance(src)
    u8 = display_image(inst)
    pred = session.predict([u8], [inst.pixel_spacing], regions=session.card.positive_labels)[0]
    out = tmp_path_factory.mktemp("ai")
    DicomResultWriter(out, session.card).write(pydicom.dcmread(src, stop_before_pixels=True), pred,
                                               render_overlay(u8, pred),
                                               applicability={"status": "out_of_scope", "reasons": ["CT"]})
    return out, str(inst.sop_instance_uid)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_sr_and_sc_arrive_in_the_study(env, protocol, ai_objects, ct_uids, tmp_path, capsys):
    folder, source_uid = ai_objects
    study = ct_uids[source_uid]
    # a fresh copy per protocol (new SOP Instance UIDs), so each send is checked on its own
    sent = {}
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / f.name, enforce_file_format=True)
        sent[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    assert main(["pacs", "send", url(env, protocol), str(tmp_path)]) == 0
    assert "sent 2 of 2 instances" in capsys.readouterr().out
    with connect(url(env, protocol)) as client:
        listed = {r.sop_instance_uid: r.sop_class_uid for r in client.list_instances(study)}
    assert {uid: listed.get(uid) for uid in sent} == sent  # in the CT's study, with their SOP classes
    assert sorted(sent.values()) == sorted([pydicom.uid.Comprehensive3DSRStorage,
                                            pydicom.uid.SecondaryCaptureImageStorage])


# -- a saved reading state (GSPS) to the PACS and back --------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reading_state_sent_to_the_pacs_comes_back_with_the_study(env, protocol, ct_uids, tmp_path, capsys):
    """A presentation state written as the workstation writes it (File > Save reading state) is stored with
    `pacs send` into the CT's study, and `pacs get` of that study brings it back: the scan lists it as a
    presentation state and its measurement is on the same image at the same pixels."""
    import shutil

    from medviewer.io import scan
    from medviewer.workstation.measure import Measurement, Shape
    from medviewer.workstation.presentation import find_presentation_states, write_presentation_state
    from medviewer.workstation.session import ReadingSession
    from medviewer.workstation.viewport import ViewportModel

    local = tmp_path / "local"
    local.mkdir()
    for f in sorted(CT_SERIES.glob("*.dcm"))[60:63]:
        shutil.copy(f, local)
    reading = ReadingSession()
    key = reading.add_scan(scan(local))[0]
    model = ViewportModel()
    model.set_source(reading.sources[key], key)
    line = Measurement(Shape.DISTANCE, (101.5, 200.0), (301.0, 260.5))
    reading.measurements.add((key, 1), line)
    model.set_window(40, 350)
    gsps = write_presentation_state(model, reading.measurements, tmp_path)
    ds = pydicom.dcmread(gsps, stop_before_pixels=True)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # one per protocol: each send is checked on its own
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(gsps, enforce_file_format=True)
    study = str(ds.StudyInstanceUID)
    assert study == ct_uids[str(pydicom.dcmread(next(local.iterdir()), stop_before_pixels=True).SOPInstanceUID)]

    assert main(["pacs", "send", url(env, protocol), str(gsps)]) == 0
    assert "sent 1 of 1 instance to" in capsys.readouterr().out
    out = tmp_path / "retrieved"
    assert main(["pacs", "get", url(env, protocol), study, "--series", str(ds.SeriesInstanceUID), "--out", str(out),
                 "--no-progress"]) == 0
    assert [n.kind for n in scan(out).non_images] == ["presentation state"]
    found = [s for s in find_presentation_states([out])
             if pydicom.dcmread(s.path, stop_before_pixels=True).SOPInstanceUID == ds.SOPInstanceUID]
    assert len(found) == 1 and found[0].state.window == (40.0, 350.0)
    (ann,) = found[0].state.annotations
    second = reading.sources[key].frames[1][0]
    assert ann.kind == "distance" and ann.sop_instance_uid == str(second.sop_instance_uid)
    assert [tuple(p) for p in ann.points] == [(101.5, 200.0), (301.0, 260.5)]


# -- infer --dicom --anonymize --send: de-identified AI results stored, consistent with `medviewer anonymize` --
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_sends_deidentified_sr_sc_matching_anonymize(env, protocol, tmp_path, monkeypatch, capsys):
    from medviewer import audit
    from medviewer.export.dicom_ai import read_sr_findings
    from tests.test_dicom_export import dciodvfy_errors

    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(tmp_path / "audit"))
    src = pydicom.dcmread(pydicom_test_file("RG1_UNCR.dcm"))  # a chest CR with name, ID, birth date, accession
    src.SOPInstanceUID = pydicom.uid.generate_uid()  # new UIDs per protocol: each send is checked on its own
    src.StudyInstanceUID = pydicom.uid.generate_uid()
    src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
    phi = [str(src.PatientName), str(src.PatientID), str(src.PatientBirthDate), str(src.AccessionNumber)]
    assert all(phi)
    (tmp_path / "in").mkdir()
    f = tmp_path / "in" / "image.dcm"
    src.save_as(f, enforce_file_format=True)
    key = tmp_path / "site.key"
    key.write_bytes(b"0123456789abcdef-site-key-for-infer")

    assert main(["infer", str(f), "--out", str(tmp_path / "out"), "--quiet", "--dicom", "--anonymize",
                 "--pseudonym-key", str(key), "--send", url(env, protocol)]) == 0
    assert "sent 2 of 2 instances" in capsys.readouterr().out
    assert main(["anonymize", str(f), "--out", str(tmp_path / "anon"), "--pseudonym-key", str(key), "--quiet"]) == 0
    (copy_path,) = sorted((tmp_path / "anon").rglob("*.dcm"))
    copy = pydicom.dcmread(copy_path)

    written = sorted((tmp_path / "out" / "dicom").glob("*.dcm"))
    assert [p.name[:3] for p in written] == ["SC_", "SR_"]
    for p in written:
        assert str(copy.SOPInstanceUID) in p.name  # named by the keyed UID, not the original one
        ds = pydicom.dcmread(p)
        assert ds.StudyInstanceUID == copy.StudyInstanceUID != src.StudyInstanceUID
        assert (ds.PatientID, str(ds.PatientName)) == (copy.PatientID, str(copy.PatientName))
        assert ds.PatientIdentityRemoved == "YES" and "113100" in [c.CodeValue for c in
                                                                   ds.DeidentificationMethodCodeSequence]
        data = p.read_bytes()
        assert not [v for v in phi if v.encode() in data], p.name
        assert str(src.SOPInstanceUID).encode() not in data and str(src.StudyInstanceUID).encode() not in data
        assert dciodvfy_errors(p) == [], p.name
    sr = pydicom.dcmread(written[1])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == copy.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == copy.SOPInstanceUID
    assert read_sr_findings(sr)  # still a readable TID 1500 report
    sc = pydicom.dcmread(written[0])
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == copy.SOPInstanceUID

    with connect(url(env, protocol)) as client:
        listed = {r.sop_instance_uid for r in client.list_instances(str(copy.StudyInstanceUID))}
    assert listed == {str(sr.SOPInstanceUID), str(sc.SOPInstanceUID)}  # in the anonymized study
    sent = [r for r in audit.read() if r["action"] == "sent"][-1]
    assert sent["detail"]["de-identified"] is True and sent["detail"]["instances"] == 2
    assert {"type": "study", "uid": str(copy.StudyInstanceUID)} in sent["objects"]


def test_infer_send_failure_and_option_errors(env, tmp_path, capsys):
    f = pydicom_test_file("CT_small.dcm")
    port = free_port()
    out = tmp_path / "out"
    assert main(["infer", str(f), "--out", str(out), "--quiet", "--dicom",
                 "--send", f"dicom://ORTHANCTEST@127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("medviewer: error")]
    assert len(lines) == 1 and "connection refused" in lines[0] and "Traceback" not in err, err
    assert len(list((out / "dicom").glob("*.dcm"))) == 2  # written, though not sent
    # the PACS refuses nothing here, but an unknown saved name, or options without --dicom, fail before scoring
    for args, msg in ((["--send", "no-such-node", "--dicom"], "no-such-node"), (["--send", env.dimse_url], "--dicom"),
                      (["--dicom", "--pseudonym-key", str(f)], "--anonymize")):
        assert main(["infer", str(f), "--out", str(tmp_path / "o2"), "--quiet", *args]) == 1
        line = _one_line_error(capsys)
        assert msg in line, line
    assert not (tmp_path / "o2" / "results.json").exists()


# -- the workstation's AI > Save results to PACS (Qt, offscreen) ----------------------------------------------
def test_gui_save_results_to_pacs_and_failure_dialog(env, tmp_path, qtbot, monkeypatch):
    from PySide6.QtCore import QSettings

    from medviewer import audit
    from medviewer.gui.main_window import MainWindow
    from medviewer.gui.results_dialog import ResultsDialog
    from medviewer.gui.settings import Settings

    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(tmp_path / "audit"))
    shown: list[str] = []
    monkeypatch.setattr("medviewer.gui.dialogs.QMessageBox.critical",
                        lambda parent, title, text: shown.append(f"{title}: {text}"))
    assert main(["pacs", "add", "orthanc", env.dicomweb_url]) == 0
    src = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))  # in Orthanc already (the session fixture)
    win = MainWindow(Settings(QSettings(str(tmp_path / "mv.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=30000)
    win.panel.auto_run.setChecked(False)
    win.open_paths([pydicom_test_file("CT_small.dcm")])
    qtbot.waitUntil(lambda: win.active.has_image() and not win.loader.scanning, timeout=30000)
    with qtbot.waitSignal(win.predictionShown, timeout=30000):
        win.run_ai()

    dlg = ResultsDialog(win, to_pacs=True)
    assert dlg.node.findText("orthanc") >= 0  # the saved nodes are offered
    dlg.node.setEditText("orthanc")
    with qtbot.waitSignal(dlg.done_with, timeout=30000) as blocker:
        assert dlg.start()
    res = blocker.args[0]
    qtbot.waitUntil(lambda: not dlg.running, timeout=30000)
    assert not shown and len(res["stored"]) == 2 and not res["failed"]
    with connect(env.dimse_url) as client:
        listed = {r.sop_instance_uid: r.sop_class_uid for r in client.list_instances(str(src.StudyInstanceUID))}
    sr_uid, sc_uid = res["sop_uids"]  # written in this order
    assert {uid: listed.get(uid) for uid in res["stored"]} == {sr_uid: pydicom.uid.Comprehensive3DSRStorage,
                                                               sc_uid: pydicom.uid.SecondaryCaptureImageStorage}
    win.audit.wait()
    sent = [r for r in audit.read() if r["action"] == "sent"][-1]
    assert sent["detail"]["instances"] == 2 and sent["detail"]["destination"].startswith("http://127.0.0.1")
    assert {"type": "study", "uid": str(src.StudyInstanceUID)} in sent["objects"]

    # a node that does not answer: one dialog with one line, nothing stored, nothing hangs
    dlg2 = ResultsDialog(win, to_pacs=True)
    dlg2.node.setEditText(f"dicom://ORTHANCTEST@127.0.0.1:{free_port()}")
    assert dlg2.start()
    qtbot.waitUntil(lambda: not dlg2.running, timeout=30000)
    assert len(shown) == 1 and "connection refused" in shown[0] and "\n" not in shown[0], shown
    win.close()


def test_gui_save_reading_state_to_pacs(env, ct_uids, tmp_path, qtbot, monkeypatch):
    """File > Save reading state to PACS…: the state is saved beside the series (and no longer unsaved) and
    stored in the study on Orthanc; the send is audited; an unreachable node is one dialog."""
    import shutil

    from PySide6.QtCore import QSettings

    from medviewer import audit
    from medviewer.gui.main_window import MainWindow
    from medviewer.gui.presentation import save_reading_state_to_pacs
    from medviewer.gui.settings import Settings
    from medviewer.workstation.measure import Measurement, Shape

    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(tmp_path / "audit"))
    shown: list[str] = []
    monkeypatch.setattr("medviewer.gui.dialogs.QMessageBox.critical",
                        lambda parent, title, text: shown.append(f"{title}: {text}"))
    assert main(["pacs", "add", "orthanc", env.dimse_url]) == 0
    local = tmp_path / "study"
    local.mkdir()
    for f in sorted(CT_SERIES.glob("*.dcm"))[70:72]:
        shutil.copy(f, local)
    win = MainWindow(Settings(QSettings(str(tmp_path / "mv.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=30000)
    win.open_paths([str(local)])
    qtbot.waitUntil(lambda: win.active.has_image() and not win.loader.scanning, timeout=30000)
    key = win.active.source_key
    win.reading.measurements.add((key, 0), Measurement(Shape.DISTANCE, (20.0, 30.0), (220.0, 30.0)))
    assert any(a.text() == "Save reading state to PACS…" for a in win.menus["File"].actions())

    task = save_reading_state_to_pacs(win, "orthanc")
    assert task is not None
    qtbot.waitUntil(lambda: "Reading state stored on" in win.status_msg.text(), timeout=30000)
    saved = sorted(local.glob("PR_*.dcm"))
    assert len(saved) == 1 and win.reading.measurements.unsaved_series() == [] and not shown
    ds = pydicom.dcmread(saved[0], stop_before_pixels=True)
    study = ct_uids[str(pydicom.dcmread(next(iter(sorted(local.glob("1-*.dcm")))),
                                        stop_before_pixels=True).SOPInstanceUID)]
    with connect(env.dimse_url) as client:
        listed = {r.sop_instance_uid: r.sop_class_uid for r in client.list_instances(study)}
    assert listed.get(str(ds.SOPInstanceUID)) == str(ds.SOPClassUID)
    rec = [r for r in audit.read() if r["action"] == "sent"][-1]
    assert rec["outcome"] == "success" and rec["detail"]["instances"] == 1

    assert save_reading_state_to_pacs(win, f"dicom://NOBODY@127.0.0.1:{free_port()}") is not None
    qtbot.waitUntil(lambda: bool(shown), timeout=30000)
    assert len(shown) == 1 and shown[0].startswith("Save reading state to PACS failed") and "\n" not in shown[0]
    qtbot.waitUntil(lambda: [r["outcome"] for r in audit.read() if r["action"] == "sent"][-1] == "serious failure",
                    timeout=10000)  # the failed send is audited too
