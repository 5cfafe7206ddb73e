"""``medviewer serve``: run the unattended AI node; ``medviewer serve status``: show its queue.

::

    medviewer serve --aet AET --port PORT [--bind ADDR] --spool DIR --send NODE [--study-timeout SECONDS]
                    [--allow-aet AET ...] [--model NAME|PATH ...] [--anonymize [--pseudonym-key FILE]]
    medviewer serve status --spool DIR [--json]

See :mod:`medviewer.serve` and ``docs/serve.md``. Errors (port in use, spool held by another node, unknown
model or node) are one line, exit 1; Ctrl-C or SIGTERM stops the node cleanly (exit 130 / 0) -- and
``kill -9`` loses nothing either: start it again on the same spool.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from medviewer.errors import MedViewerError

__all__ = ["add_parser", "run"]

_EPILOG = """\
what it does:
  A DICOM Storage SCP (also C-ECHO) writes each received instance into SPOOL/incoming atomically and
  answers success only then (disk full, file too large: 0xA700 Out of Resources). A study is complete
  after --study-timeout seconds without a new instance; it then goes through a durable queue
  (SPOOL/queue.sqlite) to a worker that scores its images with every model whose intended use fits
  (the card's intended-use policy: modality, age, view, body part, the image check; an image outside
  it is recorded with the reasons, not reported on), writes a TID 1500 SR and a Secondary Capture per
  scored image (as `medviewer infer --dicom`), and stores them
  at --send (C-STORE or STOW-RS), retrying with backoff while it is down. A result is made once per
  (instance, model): retries, restarts and repeated studies never make a second one.
  Non-image objects and unreadable files are recorded and skipped. AI runs and sends are audited.

examples:
  medviewer serve --aet AI-NODE --port 11112 --spool /var/spool/medviewer --send dicom://ORTHANC@pacs:4242
  medviewer serve --aet AI-NODE --port 11112 --spool spool/ --send pacs-home --allow-aet ORTHANC --study-timeout 10
  medviewer serve status --spool /var/spool/medviewer
  medviewer serve status --spool /var/spool/medviewer --json | jq .studies
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``medviewer`` subcommand parser."""
    from medviewer.providers import PROVIDER_CHOICES

    p = subparsers.add_parser(
        "serve", help="run an AI node: receive studies (DICOM C-STORE), score them, send SR/SC back to a PACS",
        description="Run the unattended AI node, or show its queue with 'medviewer serve status --spool DIR'.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=["status"], default=None,
                   help="status: print the queue of --spool (received, waiting, scored, sent, failed) and exit")
    p.add_argument("--spool", metavar="DIR", required=True, help="spool folder (received instances, results, queue)")
    p.add_argument("--json", action="store_true", help="with status: print JSON")
    p.add_argument("--aet", default="MEDVIEWER-AI", help="our AE title (called by senders; default MEDVIEWER-AI)")
    p.add_argument("--port", type=int, default=None, help="DICOM port to listen on (e.g. 11112)")
    p.add_argument("--bind", default="0.0.0.0", metavar="ADDR", help="address to listen on (default all)")
    p.add_argument("--send", metavar="NODE", default=None,
                   help="where results go: dicom://AET@host:port, http(s)://host:port/dicom-web or a saved name")
    p.add_argument("--study-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a study is complete after this long without a new instance (default 30)")
    p.add_argument("--allow-aet", action="append", default=[], metavar="AET",
                   help="accept associations only from this calling AE title (repeat; default any)")
    p.add_argument("--model", action="append", default=[], metavar="NAME|PATH",
                   help="model to score with (repeat for several; default the built-in default model)")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, default="auto", help="ONNX Runtime provider")
    p.add_argument("--report-out-of-scope", action="store_true",
                   help="also send an SR/SC ('not assessed: outside intended use') for images the model card's "
                        "intended use does not cover (default: recorded, nothing sent)")
    p.add_argument("--anonymize", action="store_true",
                   help="de-identify results before they leave (PS3.15 E.1, as `medviewer infer --anonymize`)")
    p.add_argument("--pseudonym-key", metavar="FILE", default=None, help="with --anonymize: the pseudonym key")
    p.add_argument("--retry-max-delay", type=float, default=60.0, metavar="SECONDS",
                   help="longest wait between attempts while --send is unreachable (default 60)")
    p.add_argument("--max-attempts", type=int, default=5,
                   help="attempts for a result the destination refuses before the study is failed (default 5)")
    p.add_argument("--min-free-mb", type=int, default=64, metavar="MB",
                   help="refuse instances (Out of Resources) when less would stay free on the spool (default 64)")
    p.add_argument("--no-fsync", action="store_true",
                   help="do not flush each instance to the disk before answering (faster; a power cut may lose "
                        "the last ones acknowledged; a crash of the process loses nothing)")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout for sending, seconds (default 30)")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.set_defaults(run=run)
    return p


def _status(spool: Path, as_json: bool) -> int:
    import sqlite3

    from medviewer.serve.queue import DB_NAME, SpoolDB

    db_path = spool / DB_NAME
    if not db_path.is_file():
        raise MedViewerError(f"{spool}: not a medviewer serve spool (no {DB_NAME})")
    try:
        st = SpoolDB(db_path, readonly=True).status()
    except sqlite3.Error as exc:
        raise MedViewerError(f"{db_path}: cannot read the queue ({exc})") from None
    st["spool"] = str(spool)
    if as_json:
        print(json.dumps(st, indent=2))
        return 0
    inst, stu, res = st["instances"], st["studies"], st["results"]
    print(f"{spool}: {inst['total']} instances received ({inst.get('scored', 0)} scored, {inst.get('received', 0)} "
          f"not yet scored, {inst.get('skipped', 0)} skipped, {inst.get('failed', 0)} failed)")
    print("studies: " + ", ".join(f"{stu[s]} {s}" for s in ("receiving", "waiting", "scoring", "sending", "done",
                                                            "failed")))
    print(f"results: {res['sent']} sent, {res['written']} waiting to be sent, {res['failed']} failed")
    now = time.time()
    for w in st["waiting_to_send"]:
        print(f"  waiting: {w['study_instance_uid']}: attempt {w['attempts']}, next in "
              f"{max(0.0, w['next_attempt'] - now):.0f} s: {w['error']}")
    for f in st["failed_studies"]:
        print(f"  failed: {f['study_instance_uid']}: {f['error']}")
    if st["recent_events"]:
        print("recent failures and skips (newest first):")
        for e in st["recent_events"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            print(f"  {when}  {e['kind']}  {e['reason']}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer serve`` (until stopped) or ``medviewer serve status``."""
    spool = Path(args.spool)
    if args.action == "status":
        return _status(spool, args.json)
    from medviewer.pacs.node import _AET_RE

    if args.port is None:
        raise MedViewerError("--port is required (the DICOM port to listen on, e.g. 11112)")
    if not 0 <= args.port <= 65535:
        raise MedViewerError(f"--port {args.port}: not a TCP port")
    if not args.send:
        raise MedViewerError("--send NODE is required (where the SR/SC go: dicom://AET@host:port, "
                             "http(s)://host:port/dicom-web or a saved name)")
    for aet in [args.aet, *args.allow_aet]:
        if not _AET_RE.match(aet) or not aet.strip():
            raise MedViewerError(f"{aet!r}: an AE title is 1-16 printable characters without backslash")
    if args.study_timeout <= 0:
        raise MedViewerError(f"--study-timeout must be positive, got {args.study_timeout}")
    if args.pseudonym_key and not args.anonymize:
        raise MedViewerError("--pseudonym-key needs --anonymize")
    from medviewer.inference.registry import resolve_model
    from medviewer.io import quiet_pydicom_warnings
    from medviewer.pacs import resolve_node
    from medviewer.serve import ScoringOptions, ServeConfig, ServeNode

    node = resolve_node(args.send)
    key = None
    if args.pseudonym_key:
        from medviewer.deid import load_key

        key = load_key(args.pseudonym_key)
    packages = [resolve_model(m) for m in (args.model or [None])]
    seen = set()
    packages = [p for p in packages if not (p.sha256 in seen or seen.add(p.sha256))]

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s medviewer serve: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    quiet_pydicom_warnings()
    config = ServeConfig(spool=str(spool), aet=args.aet, port=args.port, bind=args.bind, send=node,
                         send_aet=args.aet, study_timeout=args.study_timeout, allowed_aets=args.allow_aet,
                         fsync=not args.no_fsync, min_free_bytes=max(0, args.min_free_mb) * 2**20,
                         retry_max_delay=args.retry_max_delay, max_attempts=args.max_attempts, timeout=args.timeout,
                         scoring=ScoringOptions(provider=args.provider, deidentify=args.anonymize, key=key,
                                                report_out_of_scope=args.report_out_of_scope))
    server = ServeNode(config, packages)
    try:
        server.start()
    except OSError as exc:
        server.stop()
        raise MedViewerError(f"cannot listen on {args.bind}:{args.port} ({exc.strerror or exc})") from None
    signal.signal(signal.SIGTERM, lambda signum, frame: server._stop.set())
    models = ", ".join(f"{p.card.name} {p.card.version}" for p in packages)
    logging.getLogger("medviewer.serve").info(
        "%s listening on %s:%d, spool %s, models %s, results to %s", args.aet, args.bind, server.port, spool, models, node)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
        raise
    server.stop()
    return 0
