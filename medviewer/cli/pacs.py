"""``medviewer pacs echo|find|get|send|add|list|remove``: query, retrieve and store on a PACS.

::

    medviewer pacs echo NODE
    medviewer pacs find NODE [--patient-id ID] [--patient-name NAME] [--study-date YYYYMMDD[-YYYYMMDD]]
                             [--modality MOD] [--accession N] [--limit N] [--json]
    medviewer pacs get NODE STUDY_UID [--series UID] --out DIR [--move-port PORT [--move-bind ADDR]]
    medviewer pacs send NODE PATH... [--anonymize [--pseudonym-key FILE]]
    medviewer pacs add NAME NODE | list | remove NAME

NODE is ``http(s)://host:port/path`` (DICOMweb), ``dicom://AET@host:port`` (DIMSE) or a saved name.
``--aet`` sets our AE title (default MEDVIEWER), ``--timeout`` the network timeout in seconds. DICOMweb
credentials come from ``MEDVIEWER_PACS_TOKEN`` or ``MEDVIEWER_PACS_USER`` + ``MEDVIEWER_PACS_PASSWORD``
(never from the command line). ``get`` writes ``DIR/STUDY_UID/SERIES_UID/SOP_INSTANCE_UID.dcm`` with a
progress bar, skips instances already there, and exits 1 listing what is missing when the retrieval is
partial. Errors are one line, exit 1; Ctrl-C aborts the association at once and exits 130. ``find``,
``get`` and ``send`` are audited (PS3.15 A.5: Query, DICOM Instances Transferred), failures included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  medviewer pacs echo dicom://ORTHANC@pacs.example:4242
  medviewer pacs add home http://pacs.example:8042/dicom-web
  MEDVIEWER_PACS_USER=reader MEDVIEWER_PACS_PASSWORD=... medviewer pacs find home --patient-id 'P00*'
  medviewer pacs find home --study-date 20240101-20240131 --modality CR --json
  medviewer pacs get home 1.2.840.113619.2.55.3.1234 --out incoming/
  medviewer pacs get dicom://ORTHANC@pacs:4242 1.2.3.4 --out incoming/ --move-port 11113 --aet MEDVIEWER
  medviewer pacs send home results/dicom/
  medviewer pacs send dicom://ORTHANC@pacs:4242 study/ --anonymize --pseudonym-key site.key

dates: YYYYMMDD or YYYY-MM-DD, ranges YYYYMMDD-YYYYMMDD, -YYYYMMDD, YYYYMMDD- (PS3.4 C.2.2.2.5).
A PACS that ignores the modality or date key gets its answer filtered, with a warning saying so.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pacs`` on the ``medviewer`` subcommand parser."""
    p = subparsers.add_parser(
        "pacs", help="query, retrieve and store studies on a PACS (DICOMweb or DIMSE)",
        description="Query, retrieve and store on a PACS. NODE: http(s)://host:port/path (DICOMweb), "
                    "dicom://AET@host:port (DIMSE) or a saved name. DICOMweb credentials come from "
                    "MEDVIEWER_PACS_TOKEN or MEDVIEWER_PACS_USER + MEDVIEWER_PACS_PASSWORD.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="pacs_command", required=True, metavar="COMMAND")

    def net(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("node", metavar="NODE", help="http(s)://host:port/path, dicom://AET@host:port or a saved name")
        q.add_argument("--aet", default="MEDVIEWER", help="our (calling) AE title for DIMSE (default MEDVIEWER)")
        q.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
        return q

    net(sub.add_parser("echo", help="check that a node answers (C-ECHO or a QIDO-RS query)"))
    f = net(sub.add_parser("find", help="study-level query (C-FIND or QIDO-RS)"))
    f.add_argument("--patient-id", default="", help="Patient ID (wild cards * and ? allowed)")
    f.add_argument("--patient-name", default="", help="Patient's Name, e.g. 'DOE^J*'")
    f.add_argument("--study-date", default="", help="YYYYMMDD (or YYYY-MM-DD) or a range YYYYMMDD-YYYYMMDD, "
                   "-YYYYMMDD, YYYYMMDD-")
    f.add_argument("--modality", default="", help="a modality in the study, e.g. CT")
    f.add_argument("--accession", default="", help="Accession Number")
    f.add_argument("--study-uid", default="", help="Study Instance UID")
    f.add_argument("--limit", type=int, default=None, help="at most N studies")
    f.add_argument("--json", action="store_true", help="print a JSON list with DICOM keywords")
    g = net(sub.add_parser("get", help="retrieve a study (C-GET or WADO-RS), resuming what is already there"))
    g.add_argument("study_uid", metavar="STUDY_UID")
    g.add_argument("--series", default=None, metavar="UID", help="only this series")
    g.add_argument("--out", required=True, metavar="DIR", help="destination folder")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--move-port", type=int, default=None, metavar="PORT",
                   help="DIMSE: retrieve with C-MOVE to a storage SCP listening on PORT (the PACS must know "
                        "our AE title with this host and port) instead of C-GET")
    g.add_argument("--move-bind", default="0.0.0.0", metavar="ADDR",
                   help="address the C-MOVE storage SCP listens on (default all interfaces)")
    s = net(sub.add_parser("send", help="store DICOM files (C-STORE or STOW-RS)"))
    s.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    s.add_argument("--anonymize", action="store_true",
                   help="send de-identified copies (PS3.15 E.1 Basic Profile, as `medviewer anonymize`); the "
                        "files on disk are not changed, and instances with burned-in annotation are not sent")
    s.add_argument("--pseudonym-key", metavar="FILE", default=None,
                   help="with --anonymize: key file for reproducible UIDs and patient pseudonyms")
    s.add_argument("--keep-dates", action="store_true", help="with --anonymize: Retain Longitudinal Temporal "
                   "Information with Full Dates Option (113106)")
    a = sub.add_parser("add", help="save a node under a name")
    a.add_argument("name", metavar="NAME")
    a.add_argument("node", metavar="NODE")
    sub.add_parser("list", help="list saved nodes")
    r = sub.add_parser("remove", help="forget a saved node")
    r.add_argument("name", metavar="NAME")
    p.set_defaults(run=run)
    return p


def _print(text: str) -> None:
    try:
        print(text)
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _audit(event: str, outcome: str, studies: list[str], detail: dict) -> None:
    """One audit record (UIDs only; never raises: a log that cannot be written is a warning)."""
    from medviewer import audit
    from medviewer.errors import MedViewerError

    try:
        audit.record(audit.AuditEvent(event), outcome=audit.Outcome(outcome), objects=audit.object_refs(studies),
                     detail=detail)
    except (MedViewerError, ValueError) as exc:
        print(f"medviewer: warning: audit record not written: {exc}", file=sys.stderr)


def _dicom_files(paths: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """DICOM Part 10 files under ``paths`` (by content: the DICM preamble), and what was skipped."""
    from medviewer.pacs.node import PacsError

    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for text in paths:
        root = Path(text)
        if not root.exists():
            raise PacsError(f"{root}: no such file or folder")
        for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if not f.is_file() or f.name == "DICOMDIR":
                continue
            try:
                with f.open("rb") as fh:
                    head = fh.read(132)
            except OSError as exc:
                skipped.append((f, exc.strerror or str(exc)))
                continue
            if head[128:132] == b"DICM":
                files.append(f)
            elif root.is_file():
                raise PacsError(f"{f}: not a DICOM file (no DICM preamble)")
            else:
                skipped.append((f, "not a DICOM file"))
    return files, skipped


def _send(client: Any, paths: list[str], anonymize: bool = False, key_file: str | None = None,
          keep_dates: bool = False, *, written_deidentified: bool = False) -> int:
    """C-STORE / STOW-RS the DICOM files under ``paths``; with ``anonymize`` de-identified copies (PS3.15 E.1).

    Every send is recorded in the audit log (``sent``, Study Instance UIDs as they went out, counts);
    ``written_deidentified`` says the files themselves are de-identified (e.g. ``infer --dicom --anonymize``).
    Returns 1 when any file was not stored (one ``failed`` line each on stderr), else 0.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from medviewer import audit
    from medviewer.errors import MedViewerError
    from medviewer.pacs.node import PacsError

    if key_file and not anonymize:
        raise PacsError("--pseudonym-key needs --anonymize")
    deid = None
    if anonymize:
        from medviewer.deid import DeidOptions, anonymize_dataset, load_key

        options = DeidOptions(keep_dates=keep_dates)
        key = load_key(key_file) if key_file else None

        def deid(ds: Any) -> Any:
            return anonymize_dataset(ds, options, key)
    files, skipped = _dicom_files(paths)
    if not files:
        raise PacsError(f"{' '.join(paths)}: no DICOM files to send")
    studies: list[str] = []
    stored = 0
    failed: list[tuple[str, str]] = []
    batch: list[Any] = []
    names: dict[str, Path] = {}

    def flush() -> None:
        nonlocal stored
        if batch:
            try:
                outcome = client.store(batch)
            except MedViewerError as exc:  # refused, unreachable, HTTP error: audited, then reported
                _audit("sent", "serious failure" if not stored else "minor failure", studies,
                       {"instances": stored, "failed": len(failed) + len(batch), "de-identified": anonymize
                        or written_deidentified, "destination": str(client.node), "error": str(exc)[:200]})
                raise
            stored += len(outcome.stored)
            failed.extend((str(names.get(uid, uid)), why) for uid, why in outcome.failed)
            batch.clear()

    for f in files:
        try:
            ds = dcmread(f)
            uid = str(ds.SOPInstanceUID)
        except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:
            failed.append((str(f), f"unreadable ({' '.join(str(exc).split())})"))
            continue
        if deid is not None:
            try:
                ds = deid(ds)
            except (MedViewerError, ValueError, KeyError, TypeError, AttributeError) as exc:
                failed.append((str(f), f"not de-identified ({' '.join(str(exc).split())})"))
                continue
            uid = str(ds.SOPInstanceUID)
        if ds.get("StudyInstanceUID") and str(ds.StudyInstanceUID) not in studies:
            studies.append(str(ds.StudyInstanceUID))
        names[uid] = f
        batch.append(ds)
        if len(batch) >= 32:
            flush()
    flush()
    outcome = (audit.Outcome.SUCCESS if not failed else
               audit.Outcome.MINOR_FAILURE if stored else audit.Outcome.SERIOUS_FAILURE)
    try:
        audit.record(audit.AuditEvent.SENT, outcome=outcome, objects=audit.object_refs(studies),
                     detail={"instances": stored, "failed": len(failed), "de-identified": anonymize or written_deidentified,
                             "destination": str(client.node)})
    except (MedViewerError, ValueError) as exc:
        print(f"medviewer: warning: audit record not written: {exc}", file=sys.stderr)
    what = "de-identified instance" if anonymize else "instance"
    _print(f"sent {stored} of {len(files)} {what}{'s' * (len(files) != 1)} to {client.node}")
    for f, why in skipped:
        print(f"  skipped {f}: {why}", file=sys.stderr)
    for f, why in failed:
        print(f"  failed {f}: {why}", file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer pacs ...``; returns the exit status."""
    import logging

    from medviewer.errors import MedViewerError
    from medviewer.pacs import StudyQuery, connect, load_nodes, remove_node, retrieve_study, save_node
    from medviewer.pacs.node import nodes_file

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    cmd = args.pacs_command
    if cmd == "add":
        node = save_node(args.name, args.node)
        _print(f"saved {args.name} = {node.url} ({node.protocol}) in {nodes_file()}")
        return 0
    if cmd == "list":
        nodes = load_nodes()
        if not nodes:
            _print(f"no saved nodes ({nodes_file()}); add one with: medviewer pacs add NAME NODE")
        for name, url in nodes.items():
            _print(f"{name}\t{url}")
        return 0
    if cmd == "remove":
        remove_node(args.name)
        _print(f"removed {args.name}")
        return 0

    move = {"move_port": args.move_port, "move_bind": args.move_bind} if getattr(args, "move_port", None) else {}
    with connect(args.node, aet=args.aet, timeout=args.timeout, **move) as client:
        if cmd == "echo":
            seconds = client.echo()
            _print(f"{client.node}: OK ({seconds * 1000:.0f} ms)")
            return 0
        if cmd == "find":
            query = StudyQuery(patient_id=args.patient_id, patient_name=args.patient_name,
                               study_date=args.study_date, modality=args.modality,
                               accession_number=args.accession, study_instance_uid=args.study_uid)
            keys = sorted(query.filters())  # which keys, never their values (a patient's name or ID)
            try:
                matches = client.find_studies(query, limit=args.limit)
            except MedViewerError as exc:
                _audit("queried", "serious failure", [], {"keys": keys, "source": str(client.node),
                                                          "error": str(exc)[:200]})
                raise
            _audit("queried", "success", [m.study_instance_uid for m in matches][:100],
                   {"keys": keys, "matches": len(matches), "source": str(client.node)})
            for note in getattr(client, "notes", []) or []:
                print(f"medviewer: warning: {client.node}: {note}", file=sys.stderr)
            if args.json:
                _print(json.dumps([m.to_json() for m in matches], indent=2))
                return 0
            for m in matches:
                n = "?" if m.number_of_study_related_instances is None else m.number_of_study_related_instances
                _print(f"{_date(m.study_date) or '(no date)'}  {m.patient_id or '(no ID)'}  "
                       f"{m.patient_name or '(no name)'}  {'/'.join(m.modalities_in_study) or '-'}  "
                       f"{n} inst  acc {m.accession_number or '-'}  {m.study_description or ''}\n"
                       f"    {m.study_instance_uid}")
            print(f"{len(matches)} stud{'ies' if len(matches) != 1 else 'y'}", file=sys.stderr)
            return 0
        if cmd == "get":
            where = {"source": str(client.node), "series": args.series}
            try:
                result = retrieve_study(client, args.study_uid, Path(args.out), series_instance_uid=args.series,
                                        progress=not args.no_progress)
            except (MedViewerError, KeyboardInterrupt) as exc:
                why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)[:200]
                _audit("retrieved", "serious failure", [args.study_uid], {**where, "error": why})
                raise
            total = len(result.expected)
            _audit("retrieved", "success" if not result.missing else "minor failure", [args.study_uid],
                   {**where, "instances": len(result.written), "already_present": result.skipped,
                    "missing": len(result.missing)})
            _print(f"{result.study_dir()}: {total - len(result.missing)} of {total} instances "
                   f"({len(result.written)} retrieved, {result.skipped} already present)")
            for note in result.notes:  # e.g. C-GET ended with warning status B000, with its counts
                print(f"medviewer: warning: {client.node}: {note}", file=sys.stderr)
            if result.missing:
                shown = ", ".join(r.sop_instance_uid for r in result.missing[:5])
                more = f" (+{len(result.missing) - 5} more)" if len(result.missing) > 5 else ""
                print(f"medviewer: error: {client.node}: partial retrieval, {len(result.missing)} of {total} "
                      f"instances missing: {shown}{more}", file=sys.stderr)
                return 1
            return 0
        if cmd == "send":
            return _send(client, args.paths, args.anonymize, args.pseudonym_key, args.keep_dates)
    raise AssertionError(cmd)  # argparse restricts the choices
