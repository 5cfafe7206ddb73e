"""``medviewer serve``: the AI node against a real Orthanc (source and destination), on 127.0.0.1.

The node runs in this process here (:class:`medviewer.serve.ServeNode`); tests/test_serve_faults.py runs it
as a separate process to kill it. Studies are made from files in the repository: the demo paediatric chest
radiograph (in the default model's intended use: scored, one SR + one SC each) and pydicom's CT_small
(outside it: recorded as skipped), each copy with new Study/Series/SOP Instance UIDs. Without Orthanc
(apt-get install orthanc orthanc-dicomweb, or bash .ci/system-packages.sh) these tests skip.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer.cli import main
from tests.conftest import REPO, pydicom_test_file
from tests.orthanc import Orthanc, free_port, orthanc_unavailable, start_orthanc

DEMO_CXR = REPO / "resources" / "demo" / "paediatric-cxr-pneumonia.dcm"
NODE_AET = "MEDVIEWER-AI"
SR_CLASS = str(pydicom.uid.Comprehensive3DSRStorage)
SC_CLASS = str(pydicom.uid.SecondaryCaptureImageStorage)


# -- helpers (also used by test_serve_faults.py) -----------------------------------------------------------
def make_study(n_cxr: int = 1, n_ct: int = 2, patient: str = "SERVE-TEST") -> list[Dataset]:
    """One new study: ``n_cxr`` chest radiographs and ``n_ct`` CT slices with fresh UIDs (files from the repo
    and pydicom's test data)."""
    study, series_cr, series_ct = generate_uid(), generate_uid(), generate_uid()
    out = []
    for path, n, series in ((DEMO_CXR, n_cxr, series_cr), (pydicom_test_file("CT_small.dcm"), n_ct, series_ct)):
        for k in range(n):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = k + 1
            ds.PatientID = patient
            out.append(ds)
    return out


def non_image(study: str) -> Dataset:
    """A Basic Text SR (no pixels) in ``study``."""
    ds = Dataset()
    ds.SOPClassUID = pydicom.uid.BasicTextSRStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), study, generate_uid()
    ds.Modality, ds.PatientID = "SR", "SERVE-TEST"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def send(port: int, datasets: list[Dataset], *, aet: str = "TESTSCU", called: str = NODE_AET,
         deadline: float = 60.0, retry: bool = True) -> dict[str, int]:
    """C-STORE ``datasets`` to 127.0.0.1:``port``; returns SOP Instance UID -> final status (0 = stored).

    With ``retry`` an instance that got no answer (association lost: the node was killed) is sent again on a
    new association until ``deadline`` seconds have passed; a failure status is final.
    """
    from pynetdicom import AE

    result: dict[str, int] = {}
    todo = list(datasets)
    end = time.monotonic() + deadline
    while todo and time.monotonic() < end:
        ae = AE(ae_title=aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for uid in dict.fromkeys(str(ds.SOPClassUID) for ds in todo):
            ae.add_requested_context(uid, [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            if not retry:
                raise AssertionError("association not established")
            time.sleep(0.3)
            continue
        rest = []
        for ds in todo:
            if not assoc.is_established:
                rest.append(ds)
                continue
            try:
                status = assoc.send_c_store(ds)
            except (RuntimeError, ValueError):
                status = None
            if status is None or "Status" not in status:
                rest.append(ds)
            else:
                result[str(ds.SOPInstanceUID)] = int(status.Status)
        if assoc.is_established:
            assoc.release()
        todo = rest
        if todo and not retry:
            break
    return result


def send_parallel(port: int, studies: list[list[Dataset]], senders: int = 4, **kw) -> dict[str, int]:
    """Send the studies from ``senders`` threads at once (study k by thread k % senders)."""
    results: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            mine = [ds for i, s in enumerate(studies) if i % senders == k for ds in s]
            got = send(port, mine, aet=f"SCU{k}", **kw)
            with lock:
                results.update(got)
        except BaseException as exc:  # reported in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def results_in(orth: Orthanc, study: str) -> dict[str, list[str]]:
    """SOP class -> SOP Instance UIDs of a study on Orthanc (REST)."""
    found = orth.rest("/tools/find", "POST", json={"Level": "Instance", "Expand": True,
                                                   "Query": {"StudyInstanceUID": study}})
    out: dict[str, list[str]] = {}
    for inst in found:
        tags = orth.rest(f"/instances/{inst['ID']}/simplified-tags")
        out.setdefault(tags.get("SOPClassUID", ""), []).append(tags.get("SOPInstanceUID", ""))
    return out


def echo(port: int, called: str = NODE_AET) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status is not None and int(status.Status) == 0


def orthanc_with_ai_node(workdir: Path, ai_port: int, **overrides) -> Orthanc:
    """An Orthanc that knows the AI node (modality ``ai``) so it can forward studies to it."""
    return start_orthanc(workdir, overrides={
        "DicomModalities": {"ai": [NODE_AET, "127.0.0.1", ai_port]}, **overrides})


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> Orthanc:
    why = orthanc_unavailable()
    if why:
        pytest.skip(why)
    ai_port = free_port()
    orth = orthanc_with_ai_node(tmp_path_factory.mktemp("orthanc-serve"), ai_port)
    orth.ai_port = ai_port  # type: ignore[attr-defined]
    yield orth
    orth.stop()


@pytest.fixture
def node_factory(tmp_path, monkeypatch):
    """Start in-process nodes (stopped at the end of the test)."""
    from medviewer.inference.registry import default_model
    from medviewer.serve import ScoringOptions, ServeConfig, ServeNode

    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(tmp_path / "audit"))
    nodes = []

    def start(send_to: str, port: int = 0, **kw) -> ServeNode:
        scoring = ScoringOptions(provider="cpu", deidentify=kw.pop("anonymize", False))
        cfg = ServeConfig(spool=str(kw.pop("spool", tmp_path / "spool")), aet=NODE_AET, port=port, bind="127.0.0.1",
                          send=send_to, send_aet=NODE_AET, study_timeout=kw.pop("study_timeout", 0.5),
                          retry_max_delay=kw.pop("retry_max_delay", 1.0), min_free_bytes=kw.pop("min_free_bytes", 0),
                          timeout=5, scoring=scoring, **kw)
        node = ServeNode(cfg, [default_model()])
        node.start()
        nodes.append(node)
        return node

    yield start
    for n in nodes:
        n.stop()


# -- tests ------------------------------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap():
    from medviewer.serve import backoff

    assert [backoff(a, 2, 60) for a in (1, 2, 3, 4, 5, 6, 7)] == [2, 4, 8, 16, 32, 60, 60]


def test_queue_idempotent_decisions_and_recovery(tmp_path):
    """The queue alone: a decision is made once per (instance, model); a study left 'scoring' is queued again."""
    from medviewer.serve import SpoolDB

    db = SpoolDB(tmp_path / "q.sqlite")
    assert db.conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.add_instance(sop_uid="1.2.3", study_uid="1.2", series_uid="1.2.9", sop_class="1.2.840.10008.5.1.4.1.1.1",
                    path="x", size=1, calling_aet="A", image=True, now=100.0)
    assert db.complete_studies(10, now=105.0) == 0 and db.complete_studies(10, now=111.0) == 1
    assert db.claim_study() == "1.2" and db.claim_study() is None
    db.add_decision(sop_uid="1.2.3", study_uid="1.2", model_sha="m", model="m", outcome="scored",
                    outputs=[("SR", "9.1", "a"), ("SC", "9.2", "b")])
    db.add_decision(sop_uid="1.2.3", study_uid="1.2", model_sha="m", model="m", outcome="scored",
                    outputs=[("SR", "9.3", "c")])  # a second attempt changes nothing
    assert db.decided("1.2", "m") == {"1.2.3": ("scored", None)}
    assert sorted(o.out_uid for o in db.unsent("1.2")) == ["9.1", "9.2"]
    assert db.recover() == 1 and db.claim_study() == "1.2"  # 'scoring' after a crash -> waiting again
    db.add_instance(sop_uid="1.2.4", study_uid="1.2", series_uid="1.2.9", sop_class="x", path="y", size=1,
                    calling_aet="A", image=True)
    assert db.finish_scoring("1.2") == "receiving"  # an instance came while scoring: scored again later


def test_a_study_whose_scoring_breaks_is_tried_three_times_then_failed(tmp_path, monkeypatch):
    from medviewer.inference.registry import default_model
    from medviewer.serve import Scorer, ScoringOptions, Spool, SpoolDB

    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(tmp_path / "audit"))
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    db = SpoolDB(spool.db_path)
    db.add_instance(sop_uid="1.2.3", study_uid="1.2", series_uid="1.2.9", sop_class="x", path="x", size=1,
                    calling_aet="A", image=True, now=100.0)
    scorer = Scorer(spool, db, [default_model()], ScoringOptions(provider="cpu"))
    monkeypatch.setattr(scorer, "score_study", lambda study: (_ for _ in ()).throw(OSError(28, "No space left")))
    states = []
    for _ in range(4):
        db.complete_studies(0.0, now=time.time() + 1)
        scorer.run_once()
        states.append(db.conn().execute("SELECT state FROM studies").fetchone()[0])
    assert states == ["receiving", "receiving", "failed", "failed"]
    st = db.status()
    assert st["failed_studies"] == [{"study_instance_uid": "1.2", "error": "OSError: [Errno 28] No space left"}]
    assert st["events"]["score-failed"] == 3
    spool.release()


def test_node_scores_study_forwarded_by_orthanc(pacs, node_factory, tmp_path, capsys):
    """Orthanc forwards a study (C-STORE to the node); the node answers C-ECHO, stores everything, scores
    the radiograph once, skips the CT (modality) and the non-image SR, refuses a data set without a Study
    Instance UID, and stores one SR + one SC in the source study on Orthanc. Status and audit say so."""
    from medviewer import audit

    node = node_factory(pacs.dimse_url, port=pacs.ai_port)
    assert echo(node.port)
    assert not echo(node.port, called="WRONG-AET")  # the called AE title is checked
    study = make_study(n_cxr=1, n_ct=2)
    uid = str(study[0].StudyInstanceUID)
    files = []
    for k, ds in enumerate(study):
        files.append(tmp_path / f"{k}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    pacs.upload(files)
    orthanc_id = pacs.rest("/tools/lookup", "POST", data=uid)[0]["ID"]
    pacs.rest("/modalities/ai/store", "POST", json={"Resources": [orthanc_id], "Synchronous": True})
    bad = non_image(uid)
    del bad.StudyInstanceUID
    truncated = make_study(1, 0)[0]  # a radiograph whose Pixel Data was cut short: acknowledged, then a bad file
    truncated.StudyInstanceUID = uid
    truncated.PixelData = truncated.PixelData[:1000]
    statuses = send(node.port, [non_image(uid), bad, truncated], retry=False)
    assert statuses[str(bad.SOPInstanceUID)] == 0xA900  # refused: no Study Instance UID
    assert statuses[str(truncated.SOPInstanceUID)] == 0
    assert node.wait_idle(60), node.db.status()

    got = results_in(pacs, uid)
    assert len(got.get(SR_CLASS, [])) == 1 and len(got.get(SC_CLASS, [])) == 1, got
    sr_uid = got[SR_CLASS][0]
    sr = pydicom.dcmread(next((node.spool.root / "results").rglob(f"SR_{study[0].SOPInstanceUID}.dcm")))
    assert str(sr.SOPInstanceUID) == sr_uid and sr.StudyInstanceUID == uid
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == study[0].SOPInstanceUID

    st = node.db.status()
    assert st["instances"] == {"scored": 1, "skipped": 3, "failed": 1, "total": 5}, st["instances"]
    assert st["studies"]["done"] == 1 and st["results"] == {"written": 0, "sent": 2, "failed": 0}
    reasons = {e["reason"] for e in st["recent_events"]}
    assert any("not an image" in r for r in reasons) and any("cannot use instance" in r for r in reasons)
    assert st["events"]["bad-file"] == 2 and any("Pixel Data" in r for r in reasons), reasons
    skipped_ct = node.db.conn().execute("SELECT reason FROM instances WHERE state='skipped' AND sop_class=?",
                                        (str(pydicom.uid.CTImageStorage),)).fetchall()
    assert len(skipped_ct) == 2 and all("modality CT" in r[0] for r in skipped_ct), skipped_ct

    # `serve status` while the node runs: text and JSON
    assert main(["serve", "status", "--spool", str(node.spool.root)]) == 0
    out = capsys.readouterr().out
    assert "5 instances received (1 scored" in out and "1 failed)" in out and "1 done" in out and "2 sent" in out
    assert main(["serve", "status", "--spool", str(node.spool.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"]["sent"] == 2
    actions = [r["action"] for r in audit.read()]
    assert "ai-run" in actions and "sent" in actions and "retrieved" in actions
    received = [r for r in audit.read() if r["action"] == "retrieved"]
    ok = next(r for r in received if r["outcome"] == "success")
    assert ok["detail"]["instances"] == 5 and ok["objects"] == [{"type": "study", "uid": uid}]
    refused = next(r for r in received if r["outcome"] == "serious failure")  # the data set without a study
    assert refused["detail"]["status"] == "0xA900" and refused["detail"]["refused"] == 1

    # the same study sent again (a PACS re-routing it): received, but no second result
    statuses = send(node.port, study)
    assert set(statuses.values()) == {0}
    time.sleep(1.0)
    assert node.wait_idle(60)
    got = results_in(pacs, uid)
    assert len(got[SR_CLASS]) == 1 and len(got[SC_CLASS]) == 1


def restart(orth: Orthanc, timeout: float = 30.0) -> Orthanc:
    """Start a stopped Orthanc again with its configuration (same ports, same storage)."""
    import socket
    import subprocess

    from tests.orthanc import _binary, _die_with_parent

    cfg = orth.storage.parent / "orthanc.json"
    orth.process = subprocess.Popen([_binary(), str(cfg)], stdout=orth.log.open("ab"), stderr=subprocess.STDOUT,
                                    cwd=cfg.parent, preexec_fn=_die_with_parent)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", orth.dicom_port), timeout=1):
                orth.rest("/system")
                return orth
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("Orthanc did not come back")


def test_destination_down_then_back(tmp_path, node_factory):
    """Results wait (with backoff, recorded) while the destination is down and arrive when it is back."""
    why = orthanc_unavailable()
    if why:
        pytest.skip(why)
    orth = start_orthanc(tmp_path / "pacs")
    orth.stop()  # down from the start
    try:
        node = node_factory(orth.dimse_url, retry_max_delay=0.5)
        studies = [make_study(1, 1), make_study(1, 0)]
        ct_only = make_study(0, 2)
        assert set(send_parallel(node.port, studies + [ct_only], senders=3).values()) == {0}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = node.db.status()
            if st["waiting_to_send"] and min(w["attempts"] for w in st["waiting_to_send"]) >= 2 \
                    and st["studies"]["sending"] == 2:
                break
            time.sleep(0.2)
        assert st["results"] == {"written": 4, "sent": 0, "failed": 0}, st
        assert "connection refused" in st["waiting_to_send"][0]["error"]
        assert st["studies"]["done"] == 1  # the CT-only study had nothing to send: it does not wait
        restart(orth)
        assert node.wait_idle(60), node.db.status()
        for s in studies:
            got = results_in(orth, str(s[0].StudyInstanceUID))
            assert len(got.get(SR_CLASS, [])) == 1 and len(got.get(SC_CLASS, [])) == 1, got
        assert node.db.status()["results"]["sent"] == 4
    finally:
        orth.stop()


def test_anonymized_results_over_stow_rs(pacs, node_factory, tmp_path, monkeypatch):
    """--anonymize and a DICOMweb destination: de-identified SR + SC stored with STOW-RS, in the keyed study
    (as `medviewer anonymize --pseudonym-key` names it), with no patient identifier of the source."""
    from tests.orthanc import PASSWORD, USER

    monkeypatch.setenv("MEDVIEWER_PACS_USER", USER)
    monkeypatch.setenv("MEDVIEWER_PACS_PASSWORD", PASSWORD)
    node = node_factory(pacs.dicomweb_url, anonymize=True)
    study = make_study(1, 0, patient="PID-SECRET-77")
    assert set(send(node.port, study).values()) == {0}
    assert node.wait_idle(60), node.db.status()
    (sr_path,) = list((node.spool.root / "results").rglob("SR_*.dcm"))
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID != study[0].StudyInstanceUID and sr.PatientIdentityRemoved == "YES"
    assert b"PID-SECRET-77" not in sr_path.read_bytes()
    got = results_in(pacs, str(sr.StudyInstanceUID))
    assert len(got.get(SR_CLASS, [])) == 1 and len(got.get(SC_CLASS, [])) == 1, got
    assert not pacs.rest("/tools/find", "POST", json={"Level": "Study",
                                                      "Query": {"StudyInstanceUID": str(study[0].StudyInstanceUID)}})


def test_out_of_scope_image_is_recorded_not_reported(tmp_path, node_factory):
    """A radiograph outside the card's intended use (an adult: the model is for 1-5 year olds) gets no SR/SC;
    the reason is recorded. The in-scope one beside it gets its results."""
    node = node_factory("dicom://DOWN@127.0.0.1:9")  # nothing needs to arrive: the queue says it all
    child, adult = make_study(2, 0)
    adult.PatientAge = "064Y"
    assert set(send(node.port, [child, adult]).values()) == {0}
    deadline = time.monotonic() + 60
    while node.db.status(0)["studies"]["sending"] != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = dict(node.db.conn().execute("SELECT sop_uid, outcome FROM decisions").fetchall())
    assert rows == {str(child.SOPInstanceUID): "scored", str(adult.SOPInstanceUID): "not-applicable"}
    reason = node.db.conn().execute("SELECT reason FROM instances WHERE sop_uid=?",
                                    (str(adult.SOPInstanceUID),)).fetchone()[0]
    assert "out of scope: patient age 64 y" in reason, reason
    assert sorted(o.kind for o in node.db.unsent(str(child.StudyInstanceUID))) == ["SC", "SR"]
    assert all(o.sop_uid == str(child.SOPInstanceUID) for o in node.db.unsent(str(child.StudyInstanceUID)))


def test_full_spool_answers_out_of_resources(tmp_path, node_factory):
    """Less free space than the node keeps: 0xA700 Out of Resources, nothing written or queued, and the
    node keeps serving (C-ECHO) -- never a success for an instance that was not written."""
    import shutil

    free = shutil.disk_usage(tmp_path).free
    node = node_factory("dicom://NOWHERE@127.0.0.1:9", min_free_bytes=free + 2**30)
    study = make_study(1, 1)
    statuses = send(node.port, study, retry=False)
    assert set(statuses.values()) == {0xA700}, statuses
    assert not list(node.spool.incoming.rglob("*.dcm")) and not list(node.spool.tmp.iterdir())
    st = node.db.status()
    assert st["instances"]["total"] == 0 and st["events"]["store-failed"] == 2
    assert "MiB free" in st["recent_events"][0]["reason"]
    assert echo(node.port)
    from medviewer import audit

    (rec,) = [r for r in audit.read() if r["action"] == "retrieved"]  # audited once, not per instance
    assert rec["outcome"] == "serious failure" and rec["detail"]["status"] == "0xA700"


def test_serve_cli_errors_are_one_line(tmp_path, capsys):
    spool = tmp_path / "spool"
    cases = [
        (["serve", "--spool", str(spool), "--send", "dicom://A@127.0.0.1:1"], "--port is required"),
        (["serve", "--spool", str(spool), "--port", "11112"], "--send NODE is required"),
        (["serve", "--spool", str(spool), "--port", "1", "--send", "nowhere-name"], "not a PACS node"),
        (["serve", "--spool", str(spool), "--port", "1", "--send", "dicom://A@h:1", "--aet", "X" * 17], "AE title"),
        (["serve", "status", "--spool", str(tmp_path / "none")], "not a medviewer serve spool"),
    ]
    for argv, msg in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("medviewer: error: ") and "\n" not in err and msg in err, err


def test_port_in_use_and_spool_held_are_one_line(tmp_path, node_factory, capsys):
    import socket

    node = node_factory("dicom://A@127.0.0.1:9")
    assert main(["serve", "--spool", str(node.spool.root), "--port", "0", "--send", "dicom://A@127.0.0.1:9"]) == 1
    assert "another medviewer serve is using this spool" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--spool", str(tmp_path / "other"), "--port", str(port), "--bind", "127.0.0.1",
                     "--send", "dicom://A@127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medviewer: error: cannot listen") and "\n" not in err, err
