"""The PACS client's defects found by testing it against other servers (issue 21, item 3), one test each.

Peers: pynetdicom SCPs in this process that behave like real ones do (a C-FIND SCP that ignores a
matching key, a C-GET SCP that is slow, a storage SCP that accepts only uncompressed data, an SCP that
rejects and hangs up), a misbehaving HTTP server for STOW-RS, and a real Orthanc for WADO-RS of JPEG 2000.
All on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer import audit
from medviewer.cli import main
from tests.conftest import REPO, pydicom_test_file
from tests.orthanc import free_port, orthanc_unavailable, start_orthanc


@pytest.fixture
def audit_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(audit.AUDIT_DIR_ENV, str(tmp_path / "audit"))
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, str(tmp_path / "keys" / "audit.key"))
    return tmp_path / "audit"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medviewer: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def records(action: str) -> list[dict]:
    return [r for r in audit.read() if r["action"] == action]


# -- pynetdicom peers -------------------------------------------------------------------------------------
def start_scp(handlers, contexts, aet="PEER"):
    """A pynetdicom SCP on a free port of 127.0.0.1; returns (server, port)."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    for uid, ts in contexts:
        ae.add_supported_context(uid, ts) if ts else ae.add_supported_context(uid)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    return server, port


def study_identifiers() -> list[Dataset]:
    out = []
    for mods, date in ((["CT"], "20040101"), (["MR"], "20040101"), (None, "20100101")):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.StudyDate = "P1", "DOE^J", date
        if mods:
            ds.ModalitiesInStudy = mods
        out.append(ds)
    return out


@pytest.fixture
def careless_find_scp():
    """A C-FIND SCP that ignores every matching key and returns the same three studies (CT, MR, and one
    without Modalities in Study); it keeps the identifiers it was sent."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    received: list[Dataset] = []
    studies = study_identifiers()

    def on_find(event):
        received.append(event.identifier)
        for ds in studies:
            yield 0xFF00, ds

    server, port = start_scp([(__import__("pynetdicom").evt.EVT_C_FIND, on_find)], [(FIND, None)])
    yield port, received, studies
    server.shutdown()


def test_find_modality_filters_what_a_careless_scp_returns(careless_find_scp, audit_dir, capsys):
    port, received, studies = careless_find_scp
    assert main(["pacs", "find", f"dicom://PEER@127.0.0.1:{port}", "--modality", "MR", "--json"]) == 0
    cap = capsys.readouterr()
    got = [s["StudyInstanceUID"] for s in json.loads(cap.out)]
    assert got == sorted([str(studies[1].StudyInstanceUID), str(studies[2].StudyInstanceUID)], reverse=False) or \
        set(got) == {str(studies[1].StudyInstanceUID), str(studies[2].StudyInstanceUID)}
    assert str(studies[0].StudyInstanceUID) not in got  # the CT study is left out
    assert "ignored the modality key: 1 of 3" in cap.err and "no Modalities in Study for 1" in cap.err
    assert received[0].ModalitiesInStudy == "MR"  # (then a series-level query checks the unknown one)


def test_find_iso_study_date_is_a_dicom_date_not_a_warning(careless_find_scp, audit_dir, capsys):
    port, received, studies = careless_find_scp
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's "invalid value for VR DA" UserWarning fails the test
        assert main(["pacs", "find", f"dicom://PEER@127.0.0.1:{port}", "--study-date", "2004-01-01", "--json"]) == 0
    cap = capsys.readouterr()
    assert received[-1].StudyDate == "20040101"
    got = {s["StudyInstanceUID"] for s in json.loads(cap.out)}
    assert got == {str(studies[0].StudyInstanceUID), str(studies[1].StudyInstanceUID)}  # 2010 left out
    assert "ignored the study date key" in cap.err
    for bad in ("2004-13-01", "01/01/2004x", "20040101-20030101", "yesterday"):
        assert main(["pacs", "find", f"dicom://PEER@127.0.0.1:{port}", "--study-date", bad]) == 1
        assert "--study-date" in one_line_error(capsys)


def test_find_is_audited_without_patient_identifiers(careless_find_scp, audit_dir, capsys):
    port, _, studies = careless_find_scp
    assert main(["pacs", "find", f"dicom://PEER@127.0.0.1:{port}", "--patient-id", "P1", "--json"]) == 0
    (rec,) = records("queried")
    assert rec["event_id"]["code"] == "110112" and rec["outcome"] == "success"
    assert rec["detail"]["keys"] == ["PatientID"] and rec["detail"]["matches"] == 3
    assert "P1" not in json.dumps(rec["detail"]) and "DOE" not in json.dumps(rec)
    assert {o["uid"] for o in rec["objects"]} == {str(s.StudyInstanceUID) for s in studies}


# -- unknown host -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("node", ["dicom://A@no-such-host.invalid:104", "http://no-such-host.invalid:8042/dicom-web"])
def test_unknown_host_is_one_line(node, capsys):
    assert main(["pacs", "echo", node, "--timeout", "5"]) == 1
    assert "unknown host 'no-such-host.invalid'" in one_line_error(capsys)


# -- rejection reported as such ---------------------------------------------------------------------------
def test_rejection_with_the_connection_closed_is_not_reported_as_an_abort():
    """pynetdicom can mark the association aborted when the peer closes the connection right after its
    A-ASSOCIATE-RJ; its log still has the rejection and the reason, which is what the user must read."""
    from medviewer.pacs import parse_node
    from medviewer.pacs.dimse import DimseClient

    class Assoc:
        is_rejected, is_aborted, is_established = False, True, False

    lines = ["Association Rejected", "Result: Rejected Permanent, Source: Service User",
             "Reason: Called AE title not recognised"]
    why = DimseClient(parse_node("dicom://WRONG@127.0.0.1:104"))._why(Assoc(), lines)
    assert why.startswith("association rejected by 127.0.0.1:104: Called AE title not recognised"), why


def test_real_rejection_and_hang_up(capsys):
    """A peer that sends A-ASSOCIATE-RJ (called AE title not recognised, PS3.8 9.3.4) and closes at once."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def answer() -> None:
            conn, _ = srv.accept()
            conn.recv(65536)
            conn.sendall(bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7]))  # A-ASSOCIATE-RJ: permanent, user, reason 7
            conn.close()

        t = threading.Thread(target=answer)
        t.start()
        assert main(["pacs", "echo", f"dicom://WRONG@127.0.0.1:{port}", "--timeout", "5"]) == 1
        t.join(5)
    err = one_line_error(capsys)
    assert "association rejected" in err and "aborted" not in err, err


# -- C-STORE of JPEG 2000 to an SCP that accepts only uncompressed data ------------------------------------
def test_send_jpeg2000_to_an_uncompressed_only_scp_decompresses(tmp_path, audit_dir, capsys):
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
    from pynetdicom import evt

    src = pydicom_test_file("MR_small_jp2klossless.dcm")
    got: list[Dataset] = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        return 0

    server, port = start_scp([(evt.EVT_C_STORE, on_store)], [(MRImageStorage, [ExplicitVRLittleEndian,
                                                                              ImplicitVRLittleEndian])])
    try:
        assert main(["pacs", "send", f"dicom://PEER@127.0.0.1:{port}", str(src)]) == 0
    finally:
        server.shutdown()
    assert "sent 1 of 1 instance" in capsys.readouterr().out
    (ds,) = got
    assert str(ds.file_meta.TransferSyntaxUID) in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(src).pixel_array)


def test_send_jpeg2000_to_dcmtk_storescp(tmp_path, audit_dir, capsys):
    """The same against dcmtk's storescp, whose default accepts only uncompressed transfer syntaxes."""
    import shutil

    if shutil.which("storescp") is None:
        pytest.skip("dcmtk's storescp is not installed (apt-get install dcmtk)")
    src = pydicom_test_file("MR_small_jp2klossless.dcm")
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        assert main(["pacs", "send", f"dicom://STORESCP@127.0.0.1:{port}", str(src)]) == 0
    finally:
        proc.terminate()
        proc.wait(10)
    (f,) = [p for p in out.iterdir() if p.is_file()]
    got = pydicom.dcmread(f)
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(got.pixel_array, pydicom.dcmread(src).pixel_array)


# -- STOW-RS: trust the response, not the status code -----------------------------------------------------
class _Stow(BaseHTTPRequestHandler):
    reply: tuple[int, bytes, str] = (200, b"", "application/dicom+json")

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code, body, ctype = self.server.reply  # type: ignore[attr-defined]
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stow_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stow)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


def _two_files(tmp_path) -> list[Path]:
    out = []
    for k in range(2):
        ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(tmp_path / f"{k}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def test_stow_200_without_a_store_response_is_not_sent(stow_server, tmp_path, audit_dir, capsys):
    _two_files(tmp_path)
    stow_server.reply = (200, b"", "application/dicom+json")
    url = f"http://127.0.0.1:{stow_server.server_address[1]}/dicom-web"
    assert main(["pacs", "send", url, str(tmp_path)]) == 1
    cap = capsys.readouterr()
    assert "sent 0 of 2 instances" in cap.out and cap.err.count("failed") == 2 and "not confirmed" in cap.err
    rec = records("sent")[-1]
    assert rec["outcome"] == "serious failure" and rec["detail"]["instances"] == 0


def test_stow_partial_response_reports_each_instance(stow_server, tmp_path, audit_dir, capsys):
    files = _two_files(tmp_path)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    rsp = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uids[0]]}}]},
           "00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uids[1]]},
                                               "00081197": {"vr": "US", "Value": [0xA700]}}]}}
    stow_server.reply = (202, json.dumps(rsp).encode(), "application/dicom+json; charset=utf-8")
    url = f"http://127.0.0.1:{stow_server.server_address[1]}/dicom-web"
    assert main(["pacs", "send", url, str(tmp_path)]) == 1
    cap = capsys.readouterr()
    assert "sent 1 of 2 instances" in cap.out and "failure reason 0xA700" in cap.err
    assert records("sent")[-1]["outcome"] == "minor failure"


# -- failed sends are audited -----------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["dicom", "http"])
def test_refused_send_is_audited(scheme, tmp_path, audit_dir, capsys):
    files = _two_files(tmp_path)
    port = free_port()
    node = f"dicom://PEER@127.0.0.1:{port}" if scheme == "dicom" else f"http://127.0.0.1:{port}/dicom-web"
    assert main(["pacs", "send", node, str(files[0])]) == 1
    assert "connection refused" in one_line_error(capsys)
    rec = records("sent")[-1]
    assert rec["outcome"] == "serious failure" and "connection refused" in rec["detail"]["error"]
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert {"type": "study", "uid": study} in rec["objects"]


# -- C-GET: Ctrl-C aborts at once; get is audited -----------------------------------------------------------
SLOW_INSTANCES = 40


@pytest.fixture
def slow_get_scp():
    """A C-FIND + C-GET SCP serving one series of CT_small copies, half a second per instance."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    study, series = generate_uid(), generate_uid()
    items = []
    for k in range(SLOW_INSTANCES):
        ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.InstanceNumber = k + 1
        items.append(ds)

    def on_find(event):
        level = event.identifier.QueryRetrieveLevel
        for ds in items[:1] if level == "SERIES" else items:
            ident = Dataset()
            ident.QueryRetrieveLevel = level
            ident.StudyInstanceUID, ident.SeriesInstanceUID = study, series
            if level == "IMAGE":
                ident.SOPInstanceUID, ident.SOPClassUID = ds.SOPInstanceUID, ds.SOPClassUID
                ident.InstanceNumber = ds.InstanceNumber
            yield 0xFF00, ident

    def on_get(event):
        yield len(items)
        for ds in items:
            if event.is_cancelled or not event.assoc.is_established:
                return
            time.sleep(0.5)
            yield 0xFF00, ds

    ae = AE(ae_title="SLOW")
    ae.add_supported_context(FIND)
    ae.add_supported_context(GET)
    ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get)])
    _ = build_role
    yield port, study
    server.shutdown()


def test_ctrl_c_during_c_get_aborts_at_once(slow_get_scp, tmp_path):
    port, study = slow_get_scp
    out = tmp_path / "in"
    env = {**os.environ, "MEDVIEWER_AUDIT_DIR": str(tmp_path / "audit"),
           audit.AUDIT_KEY_ENV: str(tmp_path / "audit.key")}
    proc = subprocess.Popen([sys.executable, "-m", "medviewer", "pacs", "get", f"dicom://SLOW@127.0.0.1:{port}",
                             study, "--out", str(out), "--no-progress", "--timeout", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    while not list(out.rglob("*.dcm")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert list(out.rglob("*.dcm")), "no instance arrived"
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("Ctrl-C did not stop the C-GET within 20 s (the timeout is 30 s)") from None
    stopped = time.monotonic() - t0
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "medviewer: interrupted"
    assert stopped < 10, f"{stopped:.1f} s to stop"
    assert len(list(out.rglob("*.dcm"))) < SLOW_INSTANCES
    # the interrupted retrieval is audited
    recs = [json.loads(ln) for ln in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]
    assert recs[-1]["action"] == "retrieved" and recs[-1]["detail"]["error"] == "interrupted"


# -- the audit chain is keyed -------------------------------------------------------------------------------
def _rechain(path: Path, edit) -> None:
    """Rewrite the log as someone without the key would: edit records, then recompute every hash."""
    recs = [json.loads(ln) for ln in path.read_text().splitlines()]
    prev = audit.GENESIS
    for rec in recs:
        edit(rec)
        rec["prev"] = prev
        rec["hash"] = audit._digest(rec)
        prev = rec["hash"]
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))


def test_rewritten_audit_log_fails_verification(audit_dir, capsys):
    for outcome in (audit.Outcome.SERIOUS_FAILURE, audit.Outcome.SUCCESS, audit.Outcome.SUCCESS):
        audit.record(audit.AuditEvent.SENT, outcome=outcome, objects=audit.object_refs(["1.2.3"]))
    path = audit.audit_path()
    good = audit.verify()
    assert good.ok and good.keyed == 3 and audit.audit_key_path().is_file()
    assert oct(audit.audit_key_path().stat().st_mode & 0o777) == "0o600"
    original = path.read_text()

    _rechain(path, lambda r: r.update(outcome="success", outcome_code=0))  # hide the failure
    res = audit.verify()
    assert not res.ok and any("MAC mismatch" in p for p in res.problems), res.problems
    assert main(["audit", "--verify"]) == 1
    assert "MAC mismatch" in capsys.readouterr().out

    path.write_text(original)
    _rechain(path, lambda r: (r.pop("mac"), r.pop("kid")))  # strip the MACs
    res = audit.verify()
    assert not res.ok and any("no MAC" in p for p in res.problems), res.problems

    # the anchor: the last hash noted earlier finds records removed from the end
    path.write_text(original)
    last = audit.verify().last_hash
    path.write_text("".join(original.splitlines(keepends=True)[:2]))
    assert audit.verify().ok  # a truncated log is a valid chain...
    res = audit.verify(expect_last=last)
    assert not res.ok and "not in the log" in res.problems[-1]  # ...but not with the anchor
    path.write_text(original)
    audit.record(audit.AuditEvent.SENT)
    assert audit.verify(expect_last=last).ok  # records appended after the anchor are fine


# -- WADO-RS of a JPEG 2000 study from Orthanc --------------------------------------------------------------
def test_dicomweb_get_of_jpeg2000_is_not_transcoded(tmp_path, audit_dir, capsys, monkeypatch):
    why = orthanc_unavailable()
    if why:
        pytest.skip(why)
    from tests.orthanc import PASSWORD, USER

    monkeypatch.setenv("MEDVIEWER_PACS_USER", USER)
    monkeypatch.setenv("MEDVIEWER_PACS_PASSWORD", PASSWORD)
    src = pydicom_test_file("US1_J2KR.dcm")
    orth = start_orthanc(tmp_path / "orthanc")
    try:
        orth.upload([src])
        study = str(pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID)
        assert main(["pacs", "get", orth.dicomweb_url, study, "--out", str(tmp_path / "in"), "--no-progress"]) == 0
    finally:
        orth.stop()
    (f,) = list((tmp_path / "in").rglob("*.dcm"))
    got, ref = pydicom.dcmread(f), pydicom.dcmread(src)
    assert got.file_meta.TransferSyntaxUID == ref.file_meta.TransferSyntaxUID  # as stored, not transcoded
    assert np.array_equal(got.pixel_array, ref.pixel_array)
    rec = records("retrieved")[-1]
    assert rec["outcome"] == "success" and rec["detail"]["instances"] == 1
    assert rec["objects"] == [{"type": "study", "uid": study}]
