"""``medviewer serve`` under load and faults, run as a separate process so it can be killed.

* a burst from 4 senders in parallel (20 studies, 300 instances) plus 2 studies a real Orthanc forwards
  (a store job, resubmitted if the kill broke it), while the node is ``kill -9``-ed twice -- once while
  scoring, once while sending -- and started again on the same spool: every instance acknowledged is in
  the spool, every study is scored once, every result is at the destination once (the forwarded ones in
  their source study);
* a file the spool cannot hold (a file-size limit, RLIMIT_FSIZE, on the node's process) and a spool on a
  full file system (a 2 MiB tmpfs, when this runs as root and may mount): 0xA700 Out of Resources for what
  was not written, success only for what was, and the node keeps serving.

Orthanc (the destination) from the Debian packages; these tests skip without it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medviewer.serve.queue import SpoolDB
from tests.conftest import REPO
from tests.orthanc import free_port
from tests.test_serve import (  # noqa: F401
    NODE_AET,
    SC_CLASS,
    SR_CLASS,
    echo,
    make_study,
    orthanc_with_ai_node,
    pacs,
    results_in,
    send,
    send_parallel,
)


def start_node(spool: Path, port: int, send_to: str, log: Path, *, extra: tuple[str, ...] = (),
               fsize: int | None = None, timeout: float = 90.0) -> subprocess.Popen:
    """``python -m medviewer serve`` in its own process; returns once it answers C-ECHO."""
    def child() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: no orphan node
        except (OSError, AttributeError):
            pass
        if fsize is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "MEDVIEWER_AUDIT_DIR": str(spool.parent / "audit"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "medviewer", "serve", "--aet", NODE_AET, "--port", str(port), "--bind", "127.0.0.1",
           "--spool", str(spool), "--send", send_to, "--study-timeout", "1", "--retry-max-delay", "1",
           "--provider", "cpu", "--min-free-mb", "0", "--timeout", "10", *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO, env=env,
                            preexec_fn=child)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"node exited with {proc.returncode}: {log.read_text()[-3000:]}")
        if echo(port):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"node did not answer: {log.read_text()[-3000:]}")


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_for(spool: Path, predicate, timeout: float = 120.0) -> dict:
    """Poll the node's queue (read-only) until ``predicate(status)``; returns that status (on a timeout the
    assertion shows the last status and the end of the node's log)."""
    end = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < end:
        try:
            st = SpoolDB(spool / "queue.sqlite", readonly=True).status(5)
            if predicate(st):
                return st
        except Exception:  # not created yet
            pass
        time.sleep(0.1)
    log = spool.parent / "node.log"
    tail = log.read_text()[-3000:] if log.is_file() else ""
    raise AssertionError(f"timed out waiting; last status {st}\n{tail}")


def test_burst_with_kill9_while_scoring_and_while_sending(pacs, tmp_path):  # noqa: F811
    spool, log = tmp_path / "spool", tmp_path / "node.log"
    port = pacs.ai_port
    studies = [make_study(n_cxr=1, n_ct=14, patient=f"BURST{k:02d}") for k in range(20)]
    total = sum(len(s) for s in studies)
    assert total == 300
    # two more studies come from Orthanc itself: it forwards them to the node (a store job), as a PACS routes
    forwarded = [make_study(n_cxr=1, n_ct=4, patient=f"FWD{k}") for k in range(2)]
    for k, st_ in enumerate(forwarded):
        files = []
        for i, ds in enumerate(st_):
            files.append(tmp_path / f"fwd{k}_{i}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        pacs.upload(files)
    ids = [pacs.rest("/tools/lookup", "POST", data=str(s_[0].StudyInstanceUID))[0]["ID"] for s_ in forwarded]
    node = start_node(spool, port, pacs.dimse_url, log)
    acked: dict[str, int] = {}
    burst = threading.Thread(target=lambda: acked.update(send_parallel(port, studies, senders=4, deadline=180)))
    burst.start()
    job = pacs.rest("/modalities/ai/store", "POST", json={"Resources": ids, "Synchronous": False})["ID"]
    try:
        # kill -9 while scoring: some studies scored, the burst still coming in
        wait_for(spool, lambda st: st.get("decisions", {}).get("scored", 0) >= 2)
        kill9(node)
        node = start_node(spool, port, pacs.dimse_url, log)
        # kill -9 while sending: some results at the destination, not all
        wait_for(spool, lambda st: 4 <= st["results"]["sent"] < 40)  # of 44
        kill9(node)
        node = start_node(spool, port, pacs.dimse_url, log)
        burst.join(240)
        assert not burst.is_alive()
        # a forwarding job that the kill broke is resubmitted, as Orthanc's operator (or a Lua script) does
        end = time.monotonic() + 60
        while (state := pacs.rest(f"/jobs/{job}")["State"]) != "Success" and time.monotonic() < end:
            if state == "Failure":
                pacs.rest(f"/jobs/{job}/resubmit", "POST", data="")
            time.sleep(0.3)
        assert state == "Success"
        total += sum(len(s_) for s_ in forwarded)
        st = wait_for(spool, lambda st: st["instances"]["total"] == total and not any(
            st["studies"][s] for s in ("receiving", "waiting", "scoring", "sending")), timeout=180)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    # every instance acknowledged (all of them, after retries) is in the spool, complete
    assert len(acked) == 300 and set(acked.values()) == {0}
    db = SpoolDB(spool / "queue.sqlite", readonly=True)
    rows = {r[0]: r[1] for r in db.conn().execute("SELECT sop_uid, path FROM instances")}
    assert set(rows) == set(acked) | {str(ds.SOPInstanceUID) for s_ in forwarded for ds in s_}
    for sop, path in list(rows.items())[::10]:
        assert str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) == sop
    assert not list((spool / "tmp").iterdir())
    # every study scored once, every result at the destination once
    assert st["studies"]["done"] == 22 and st["decisions"]["scored"] == 22, st
    assert st["results"] == {"written": 0, "sent": 44, "failed": 0}, st
    for s in studies + forwarded:  # the forwarded ones: in the source study on Orthanc, beside the images
        got = results_in(pacs, str(s[0].StudyInstanceUID))
        assert len(got.get(SR_CLASS, [])) == 1 and len(got.get(SC_CLASS, [])) == 1, (s[0].PatientID, got)
    text = log.read_text()
    assert "Traceback" not in text and text.count("listening on") == 3


def _big_ct(size: int = 1024) -> pydicom.Dataset:
    ds = make_study(0, 1)[0]
    ds.Rows = ds.Columns = size
    ds.PixelData = np.zeros((size, size), np.int16).tobytes()
    return ds


def test_file_too_large_for_the_spool_is_out_of_resources(tmp_path):
    """RLIMIT_FSIZE on the node (512 KiB): a 2 MiB instance cannot be written -> 0xA700; small ones are stored."""
    spool, log, port = tmp_path / "spool", tmp_path / "node.log", free_port()
    node = start_node(spool, port, "dicom://NOWHERE@127.0.0.1:9", log, fsize=512 * 1024)
    try:
        small = make_study(0, 2)
        big = _big_ct()
        got = send(port, [small[0], big, small[1]], retry=False)
        assert got == {str(small[0].SOPInstanceUID): 0, str(big.SOPInstanceUID): 0xA700,
                       str(small[1].SOPInstanceUID): 0}, got
        assert echo(port)  # still serving
        st = wait_for(spool, lambda st: st["instances"]["total"] == 2)
        assert st["events"].get("store-failed") == 1
        assert "too large" in st["recent_events"][0]["reason"].lower()
        assert sorted(p.stem for p in (spool / "incoming").rglob("*.dcm")) == sorted(
            str(d.SOPInstanceUID) for d in small)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    assert node.returncode == 0  # SIGTERM: a clean stop


def test_full_tmpfs_spool_never_acknowledges_what_was_not_written(tmp_path):
    """A spool on a 2 MiB tmpfs filled by a burst: each instance is either stored (0x0000, in the spool and
    the queue) or refused with 0xA700 -- never acknowledged without being written."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    port = free_port()
    node = None
    try:
        node = start_node(mnt / "spool", port, "dicom://NOWHERE@127.0.0.1:9", tmp_path / "node.log")
        study = make_study(0, 80)  # 80 x 39 KiB > 2 MiB
        got = send(port, study, retry=False)
        stored = {u for u, s in got.items() if s == 0}
        refused = {u for u, s in got.items() if s != 0}
        assert stored and refused and set(got.values()) == {0, 0xA700}, got
        assert echo(port)
        node.send_signal(signal.SIGTERM)
        node.wait(30)
        node = None
        db = SpoolDB(mnt / "spool" / "queue.sqlite", readonly=True)
        rows = {r[0] for r in db.conn().execute("SELECT sop_uid FROM instances")}
        assert stored <= rows and not (refused & rows)
        files = {p.stem for p in (mnt / "spool" / "incoming").rglob("*.dcm")}
        assert stored <= files
    finally:
        if node is not None:
            node.kill()
            node.wait(10)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

