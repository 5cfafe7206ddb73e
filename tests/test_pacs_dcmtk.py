"""The PACS client against dcmtk's dcmqrscp, a real archive that ignores Modalities in Study (it never returns
it): instances sent with dcmtk's storescu, `pacs find --modality` checks the studies' series, `pacs get` by
C-GET, and the workstation's PacsBrowser. Only 127.0.0.1, a free port, a throw-away database folder; skips
with the reason when dcmtk is absent (apt-get install dcmtk; .ci/system-packages.sh installs it)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pydicom
import pytest

from medviewer import audit
from medviewer.cli import main
from medviewer.pacs import StudyQuery
from medviewer.workstation.pacs_browser import PacsBrowser
from tests.conftest import pydicom_test_file
from tests.orthanc import free_port

AET = "ARCHIVE"


@pytest.fixture
def audit_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.AUDIT_DIR_ENV, str(tmp_path / "audit"))
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, str(tmp_path / "keys" / "audit.key"))
    return tmp_path / "audit"


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory):
    """dcmqrscp on a free port of 127.0.0.1 holding pydicom's CT_small and MR_small (sent with storescu)."""
    for exe in ("dcmqrscp", "storescu"):
        if shutil.which(exe) is None:
            pytest.skip(f"dcmtk's {exe} is not installed (apt-get install dcmtk)")
    root = tmp_path_factory.mktemp("dcmqrscp")
    (root / "db").mkdir()
    port = free_port()
    cfg = root / "dcmqrscp.cfg"
    cfg.write_text(f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
                   "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
                   f"AETable BEGIN\n{AET} {root / 'db'} RW (200, 1024mb) ANY\nAETable END\n")
    proc = subprocess.Popen(["dcmqrscp", "-c", str(cfg), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dcmqrscp did not start: {proc.stderr.read().decode()[-400:]}") from None
                time.sleep(0.1)
        files = [pydicom_test_file("CT_small.dcm"), pydicom_test_file("MR_small.dcm")]
        sent = subprocess.run(["storescu", "-aec", AET, "127.0.0.1", str(port), *map(str, files)],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        studies = {pydicom.dcmread(f, stop_before_pixels=True).Modality:
                   str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
        yield f"dicom://{AET}@127.0.0.1:{port}", studies
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_find_modality_checks_the_series_of_an_archive_without_modalities_in_study(dcmqrscp, audit_dir, capsys):
    node, studies = dcmqrscp
    assert main(["pacs", "find", node, "--json"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert {s["StudyInstanceUID"] for s in everything} == set(studies.values())
    assert all(s["ModalitiesInStudy"] == [] for s in everything)  # dcmqrscp does not return the key
    for mod in ("MR", "CT"):
        assert main(["pacs", "find", node, "--modality", mod, "--json"]) == 0
        cap = capsys.readouterr()
        got = json.loads(cap.out)
        assert [s["StudyInstanceUID"] for s in got] == [studies[mod]]  # not every study
        assert got[0]["ModalitiesInStudy"] == [mod]
        assert ("no Modalities in Study for 2 studies; their series were queried: 1 without "
                f"{mod} left out") in cap.err


def test_get_by_c_get_from_dcmqrscp(dcmqrscp, audit_dir, tmp_path, capsys):
    node, studies = dcmqrscp
    assert main(["pacs", "get", node, studies["MR"], "--out", str(tmp_path), "--no-progress"]) == 0
    (got,) = list((tmp_path / studies["MR"]).rglob("*.dcm"))
    assert pydicom.dcmread(got).pixel_array.shape == pydicom.dcmread(pydicom_test_file("MR_small.dcm")).pixel_array.shape
    assert "1 of 1 instances (1 retrieved" in capsys.readouterr().out


def test_browser_search_on_dcmqrscp_notes_the_check(dcmqrscp, audit_dir):
    node, studies = dcmqrscp
    browser = PacsBrowser()
    browser.show(browser.run_search(node, "MEDVIEWER", StudyQuery(modality="MR")))
    assert [m.study_instance_uid for m in browser.matches] == [studies["MR"]]
    assert browser.notes == ["the PACS returned no Modalities in Study for 2 studies; their series were queried: "
                             "1 without MR left out"]
