"""The Qt-free PACS browser (medviewer.workstation.pacs_browser) and the PACS client's warnings (``notes``):
a PACS that ignores the modality key, a C-GET that ends with failed sub-operations (status B000), a STOW-RS
answered 200 without a Store Instances Response. Peers are pynetdicom SCPs / an HTTP server on 127.0.0.1."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer import audit
from medviewer.pacs import StudyQuery, connect
from medviewer.workstation.pacs_browser import PacsBrowser, RetrieveOutcome, SearchOutcome
from tests.conftest import pydicom_test_file
from tests.orthanc import free_port
from tests.test_pacs_defects import _two_files, audit_dir, careless_find_scp, stow_server  # noqa: F401 - fixtures

PARTIAL_TOTAL, PARTIAL_SENT = 6, 4


@pytest.fixture
def partial_get_scp():
    """A C-FIND + C-GET SCP listing 6 CT_small copies of one series that sends only 4 of them and ends the
    C-GET with status B000 (sub-operations complete, one or more failures), 2 failed, their UIDs in the
    Failed SOP Instance UID List -- as a PACS does when part of a study is off-line."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    study, series = generate_uid(), generate_uid()
    items = []
    for k in range(PARTIAL_TOTAL):
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
        for ds in items[:PARTIAL_SENT]:
            yield 0xFF00, ds
        status = Dataset()
        status.Status = 0xB000
        status.NumberOfCompletedSuboperations = PARTIAL_SENT
        status.NumberOfFailedSuboperations = PARTIAL_TOTAL - PARTIAL_SENT
        status.NumberOfWarningSuboperations = 0
        ident = Dataset()
        ident.FailedSOPInstanceUIDList = [str(ds.SOPInstanceUID) for ds in items[PARTIAL_SENT:]]
        yield status, ident

    ae = AE(ae_title="PARTIAL")
    ae.add_supported_context(FIND)
    ae.add_supported_context(GET)
    ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get)])
    yield port, study, [str(ds.SOPInstanceUID) for ds in items]
    server.shutdown()


def test_search_notes_and_listeners(careless_find_scp, audit_dir):  # noqa: F811 - fixture
    port, _received, studies = careless_find_scp
    browser = PacsBrowser()
    seen = []
    unsubscribe = browser.subscribe(lambda outcome: seen.append((outcome, browser.status, list(browser.notes))))
    browser.show_busy("Search")
    assert seen[-1] == (None, "Search …", [])
    outcome = browser.run_search(f"dicom://PEER@127.0.0.1:{port}", "", StudyQuery(modality="MR"))
    assert isinstance(outcome, SearchOutcome) and browser.matches == [] and len(seen) == 1  # run_* touches no state
    browser.show(outcome)
    got = {m.study_instance_uid for m in browser.matches}
    assert got == {str(studies[1].StudyInstanceUID), str(studies[2].StudyInstanceUID)}  # the CT study filtered out
    assert browser.status == "2 studies"
    assert any("ignored the modality key: 1 of 3" in n for n in browser.notes), browser.notes
    assert any("no Modalities in Study for 1" in n for n in browser.notes)
    assert seen[-1][0] is outcome and seen[-1][2] == browser.notes
    # audited like `pacs find`: which keys, never their values; UIDs only
    (rec,) = [r for r in audit.read() if r["action"] == "queried"]
    assert rec["detail"]["keys"] == ["ModalitiesInStudy"] and rec["detail"]["via"] == "workstation"
    assert {o["uid"] for o in rec["objects"]} == got
    # a failure withdraws the warnings
    browser.show_failure("Search", "association rejected")
    assert browser.status == "Search failed: association rejected" and browser.notes == []
    unsubscribe()
    browser.show_message("x")
    assert len(seen) == 3


def test_partial_c_get_is_a_note_not_silence(partial_get_scp, audit_dir, tmp_path):  # noqa: F811 - fixture
    port, study, uids = partial_get_scp
    browser = PacsBrowser()
    progress = []
    outcome = browser.run_retrieve(f"dicom://PARTIAL@127.0.0.1:{port}", "MEDVIEWER", study, tmp_path,
                                   progress=lambda done, total: progress.append((done, total)))
    assert isinstance(outcome, RetrieveOutcome) and not outcome.complete
    assert len(list(tmp_path.rglob("*.dcm"))) == PARTIAL_SENT and progress[-1] == (PARTIAL_SENT, PARTIAL_TOTAL)
    assert [r.sop_instance_uid for r in outcome.result.missing] == uids[PARTIAL_SENT:]
    b000 = next(n for n in outcome.notes if "status B000" in n)
    assert "4 instances sent, 2 failed, 0 with warnings" in b000 and uids[PARTIAL_SENT] in b000
    assert "2 of 6 instances the PACS lists did not arrive" in outcome.notes
    browser.show(outcome)
    assert browser.status.startswith("Partial: 2 of 6 instances missing") and browser.notes == list(outcome.notes)
    rec = [r for r in audit.read() if r["action"] == "retrieved"][-1]
    assert rec["outcome"] == "minor failure" and rec["detail"]["missing"] == 2


def test_failed_search_is_audited_and_raised(audit_dir):  # noqa: F811 - fixture
    browser = PacsBrowser(timeout=3)
    with pytest.raises(audit.MedViewerError):
        browser.run_search(f"dicom://NOBODY@127.0.0.1:{free_port()}", "", StudyQuery(patient_id="P1"))
    rec = [r for r in audit.read() if r["action"] == "queried"][-1]
    assert rec["outcome"] == "serious failure" and "P1" not in str(rec)


def test_stow_200_without_a_response_is_a_client_note(stow_server, tmp_path):  # noqa: F811 - fixture
    stow_server.reply = (200, b"", "application/dicom+json")
    datasets = [pydicom.dcmread(f) for f in _two_files(tmp_path)]
    with connect(f"http://127.0.0.1:{stow_server.server_address[1]}/dicom-web") as client:
        out = client.store(datasets)
        assert out.stored == [] and len(out.failed) == 2
        assert client.notes == ["STOW-RS: HTTP 200 without a Store Instances Response (no Referenced or Failed SOP "
                                "Sequence): 2 instances not confirmed"]
        assert type(client).notes == []  # the class default is not mutated


def test_cli_get_prints_the_partial_c_get_warning(partial_get_scp, audit_dir, tmp_path, capsys):  # noqa: F811
    """`pacs get` says what the PACS said (status B000 with its counts and the first failed UID), not only
    that instances are missing."""
    from medviewer.cli import main

    port, study, uids = partial_get_scp
    rc = main(["pacs", "get", f"dicom://PARTIAL@127.0.0.1:{port}", study, "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "partial retrieval, 2 of 6 instances missing" in err
    warning = next(line for line in err.splitlines() if "status B000" in line)
    assert warning.startswith("medviewer: warning: ") and "4 instances sent, 2 failed" in warning
    assert uids[PARTIAL_SENT] in warning
