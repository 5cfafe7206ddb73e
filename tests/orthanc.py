"""A real Orthanc PACS for the PACS tests: started on free ports of 127.0.0.1 with a throw-away storage.

:func:`start_orthanc` writes a configuration (DICOMweb plugin on, remote access off, HTTP basic auth on,
called AE title checked, our AE title registered as a modality at ``move_port`` so C-FIND/C-GET/C-MOVE
are allowed), starts
``Orthanc CONFIG.json``, waits until both the HTTP and the DICOM port answer, and returns an
:class:`Orthanc` whose :meth:`Orthanc.stop` terminates it. :func:`orthanc_unavailable` says why it cannot
run here (no binary, no DICOMweb plugin), for a clear skip reason.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
AET = "ORTHANCTEST"
USER, PASSWORD = "reader", "s3cret-pw"


def _binary() -> str | None:
    return shutil.which("Orthanc") or next(
        (str(p) for p in (Path("/usr/sbin/Orthanc"), Path("/usr/bin/Orthanc")) if p.is_file()), None)


def _dicomweb_plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        hits = sorted(d.glob("libOrthancDicomWeb.so*")) if d.is_dir() else []
        if hits:
            return hits[0]
    return None


def orthanc_unavailable() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else the reason (for pytest.skip)."""
    if _binary() is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb, or bash .ci/system-packages.sh)"
    if _dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its ports, AE title, credentials and process."""

    http_port: int
    dicom_port: int
    aet: str
    user: str
    password: str
    process: subprocess.Popen
    storage: Path
    log: Path
    move_port: int  #: where Orthanc sends C-MOVE results for our AE title (DicomModalities)

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse_url(self) -> str:
        return f"dicom://{self.aet}@127.0.0.1:{self.dicom_port}"

    def rest(self, path: str, method: str = "GET", **kw):
        """Call Orthanc's REST API (authenticated); returns the decoded JSON."""
        r = requests.request(method, f"http://127.0.0.1:{self.http_port}{path}",
                             auth=(self.user, self.password), timeout=30, **kw)
        r.raise_for_status()
        return r.json()

    def upload(self, paths: list[Path]) -> None:
        """Store files through the REST API (POST /instances)."""
        with requests.Session() as s:
            s.auth = (self.user, self.password)
            for p in paths:
                r = s.post(f"http://127.0.0.1:{self.http_port}/instances", data=p.read_bytes(), timeout=30)
                r.raise_for_status()

    def stop(self) -> None:
        """Terminate the process (then kill it if it does not exit in 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the test process dies (no orphaned Orthanc when
    pytest is killed before its fixture teardown runs)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_orthanc(workdir: Path, scu_aet: str = "MEDVIEWER", timeout: float = 30.0,
                  overrides: dict | None = None) -> Orthanc:
    """Start Orthanc in ``workdir`` (config, storage, log) on free ports; returns when it answers.
    ``overrides`` replace configuration options (e.g. ``{"DicomAlwaysAllowFind": False}``).

    Raises
    ------
    RuntimeError
        Orthanc exited or did not answer within ``timeout`` seconds (the message ends with its log).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    storage = workdir / "storage"
    move_port = free_port()
    config = {
        "Name": "medviewer-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomModalities": {"medviewer": [scu_aet, "127.0.0.1", move_port]},
        "Plugins": [str(_dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full"},
        "StableAge": 1,
        "ConcurrentJobs": 2,
        "HttpThreadsCount": 8,
        "StorageCompression": False,
    }
    config.update(overrides or {})
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    proc = subprocess.Popen([_binary(), str(cfg)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            cwd=workdir, preexec_fn=_die_with_parent)
    orth = Orthanc(http_port, dicom_port, AET, USER, PASSWORD, proc, storage, log, move_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            orth.rest("/system")
            with socket.create_connection(("127.0.0.1", dicom_port), timeout=1):
                return orth
        except (requests.RequestException, OSError):
            time.sleep(0.2)
    orth.stop()
    raise RuntimeError(f"Orthanc did not answer within {timeout} s: {log.read_text()[-2000:]}")
