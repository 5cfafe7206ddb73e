"""AI node benchmark: ``medviewer serve`` receiving a burst side by side with dcmtk's ``storescp``.

Run: ``python benchmarks/bench_serve.py [--studies 40] [--ct 24] [--senders 4]``

The same burst -- ``--studies`` studies of one chest radiograph (the repository's demo image, in the
default model's intended use) and ``--ct`` CT slices (pydicom's CT_small, outside it), new UIDs each --
is sent by ``--senders`` dcmtk ``storescu`` processes in parallel (one association each) to

1. dcmtk ``storescp --fork`` writing into a folder (the baseline: a C++ SCP that does nothing but write);
2. ``medviewer serve`` (default: every instance ``fsync``-ed and committed to the SQLite queue before the
   success response), results sent to a second ``storescp``;
3. ``medviewer serve --no-fsync``.

Printed: instances/s received (burst wall time, from the first storescu start to the last exit), the ratio
to storescp, studies/min end to end for the node (first instance sent -> last SR/SC stored at the
destination, including ``--study-timeout``), and each server's peak resident memory (VmHWM; storescp's is
the listening process, its forked children are not added). Needs dcmtk (apt-get install dcmtk).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a running process, MiB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def make_burst(root: Path, studies: int, ct: int, senders: int) -> list[list[Path]]:
    """Write the studies; returns the files of each sender (whole studies, round robin)."""
    import pydicom
    from pydicom.uid import generate_uid

    cxr = REPO / "resources" / "demo" / "paediatric-cxr-pneumonia.dcm"
    ct_src = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
    groups: list[list[Path]] = [[] for _ in range(senders)]
    for k in range(studies):
        study = generate_uid()
        for path, n in ((cxr, 1), (ct_src, ct)):
            series = generate_uid()
            for i in range(n):
                ds = pydicom.dcmread(path)
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.InstanceNumber, ds.PatientID = i + 1, f"BENCH{k:03d}"
                f = root / f"s{k:03d}" / f"{ds.SOPInstanceUID}.dcm"
                f.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(f, enforce_file_format=True)
                groups[k % senders].append(f)
    return groups


def burst(port: int, aet: str, groups: list[list[Path]]) -> float:
    """Send every group with its own storescu at once; returns the wall time in seconds."""
    t0 = time.perf_counter()
    env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk: no Nagle (else ~40 ms delayed-ACK stalls per instance)
    procs = [subprocess.Popen(["storescu", "-aet", f"SCU{i}", "-aec", aet, "127.0.0.1", str(port), *map(str, g)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for i, g in enumerate(groups)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def run_storescp(groups, tmp: Path) -> dict:
    out = tmp / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_port(port, proc)
        wall = burst(port, "STORESCP", groups)
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    n = sum(1 for _ in out.rglob("*") if _.is_file())
    return {"name": "dcmtk storescp --fork", "wall": wall, "received": n, "rss": rss}


def run_serve(groups, tmp: Path, n_studies: int, fsync: bool, timeout: float) -> dict:
    from medviewer.serve.queue import SpoolDB

    tag = "fsync" if fsync else "nofsync"
    dest_dir, spool = tmp / f"dest-{tag}", tmp / f"spool-{tag}"
    dest_dir.mkdir()
    dest_port, port = free_port(), free_port()
    dest = subprocess.Popen(["storescp", "--fork", "-aet", "DEST", "-od", str(dest_dir), str(dest_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "MEDVIEWER_AUDIT_DIR": str(tmp / "audit"),
           "MEDVIEWER_AUDIT_KEY_FILE": str(tmp / "audit.key")}
    cmd = [sys.executable, "-m", "medviewer", "serve", "--aet", "MEDVIEWER-AI", "--port", str(port), "--bind",
           "127.0.0.1", "--spool", str(spool), "--send", f"dicom://DEST@127.0.0.1:{dest_port}", "--study-timeout",
           str(timeout), "--provider", "cpu", "--min-free-mb", "0", "--quiet"] + ([] if fsync else ["--no-fsync"])
    node = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(dest_port, dest)
        wait_port(port, node)
        t0 = time.perf_counter()
        wall = burst(port, "MEDVIEWER-AI", groups)
        db = SpoolDB(spool / "queue.sqlite", readonly=True)
        while True:
            st = db.status(0)
            if st["studies"]["done"] + st["studies"]["failed"] >= n_studies and not st["studies"]["sending"]:
                break
            if node.poll() is not None:
                raise SystemExit(f"node exited: {node.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        end_to_end = time.perf_counter() - t0
        rss = peak_rss_mib(node.pid)
    finally:
        node.terminate()
        node.wait(30)
        dest.terminate()
        dest.wait(10)
    results = sum(1 for _ in dest_dir.rglob("*") if _.is_file())
    return {"name": f"medviewer serve{'' if fsync else ' --no-fsync'}", "wall": wall,
            "received": st["instances"]["total"], "rss": rss, "end_to_end": end_to_end, "results": results,
            "scored": st["decisions"].get("scored", 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--ct", type=int, default=24, help="CT slices per study (besides one chest radiograph)")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--study-timeout", type=float, default=2.0)
    args = ap.parse_args()
    for exe in ("storescp", "storescu"):
        if shutil.which(exe) is None:
            print(f"bench_serve: {exe} not found (apt-get install dcmtk)", file=sys.stderr)
            return 1
    total = args.studies * (1 + args.ct)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d:
        tmp = Path(d)
        groups = make_burst(tmp / "in", args.studies, args.ct, args.senders)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
              f"burst: {args.studies} studies x (1 CR + {args.ct} CT) = {total} instances, "
              f"{sum(f.stat().st_size for g in groups for f in g) / 2**20:.1f} MiB, {args.senders} storescu in parallel")
        rows = [run_storescp(groups, tmp), run_serve(groups, tmp, args.studies, True, args.study_timeout),
                run_serve(groups, tmp, args.studies, False, args.study_timeout)]
    base = total / rows[0]["wall"]
    print(f"{'receiver':28s} {'received':>9s} {'inst/s':>8s} {'vs storescp':>11s} {'peak RSS':>9s}  end to end")
    for r in rows:
        rate = r["received"] / r["wall"]
        e2e = (f"{args.studies / r['end_to_end'] * 60:.1f} studies/min ({r['end_to_end']:.1f} s, {r['scored']} "
               f"scored, {r['results']} SR/SC at the destination)") if "end_to_end" in r else "-"
        print(f"{r['name']:28s} {r['received']:>9d} {rate:>8.1f} {rate / base:>10.2f}x {r['rss']:>6.0f} MiB  {e2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
