"""``medviewer anonymize INPUT... --out DIR``: de-identify DICOM files with the PS3.15 Basic Profile.

Each DICOM instance found in the inputs (files, folders searched recursively, DICOMDIR followed) is
written to ``DIR/<study>/<series>/<instance>.dcm``, names derived from the new UIDs (never from the
original file names, which may carry patient names). One audit record (``de-identified``) is written
with the original Study Instance UIDs, counts and options.

Exit status: 0 every DICOM instance written; 2 some failed (each printed as a one-line error); 1 nothing
written (no DICOM found, bad key, unwritable output folder).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from medviewer.errors import MedViewerError

__all__ = ["add_parser", "run", "EXIT_OK", "EXIT_SOME_FAILED"]

EXIT_OK = 0
EXIT_SOME_FAILED = 2

_EPILOG = """\
what it does (DICOM PS3.15 Annex E, Table E.1-1, 2026c):
  every attribute of the table is removed, emptied, given a dummy value or a new UID as the Basic
  Profile says (at every nesting level); private attributes are removed; Patient's Name and Patient ID
  become one pseudonym of the Patient ID; Patient Identity Removed = YES, De-identification Method and
  its Code Sequence (113100 and one code per option) are set. Pixel data is not changed: an instance
  with Burned In Annotation = YES is refused.
UIDs: 2.25.<HMAC-SHA256(key, UID)>, the same in every instance, so series and references stay intact;
  with --pseudonym-key the mapping is reproducible across runs, without it a random key is used.

examples:
  medviewer anonymize study/ --out anon/
  medviewer anonymize a.dcm b.dcm --out anon/ --keep-dates --pseudonym-key ~/.medviewer.key
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``anonymize`` on the ``medviewer`` subcommand parser."""
    p = subparsers.add_parser(
        "anonymize", help="de-identify DICOM files (PS3.15 Basic Application Level Confidentiality Profile)",
        description="De-identify DICOM files with the DICOM PS3.15 Basic Application Level Confidentiality "
                    "Profile (Table E.1-1) and the chosen retain options.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or folders (searched recursively)")
    p.add_argument("--out", metavar="DIR", required=True, type=Path, help="output folder (created)")
    p.add_argument("--profile", choices=["basic"], default="basic",
                   help="confidentiality profile (default: basic, PS3.15 E.1)")
    p.add_argument("--keep-dates", action="store_true",
                   help="Retain Longitudinal Temporal Information with Full Dates Option (113106)")
    p.add_argument("--keep-descriptors", action="store_true",
                   help="Clean Descriptors Option (113105): keep descriptions and comments, with the instance's "
                        "own identifying values (names, IDs, birth date, accession) replaced by ***")
    p.add_argument("--keep-patient-characteristics", action="store_true",
                   help="Retain Patient Characteristics Option (113108): sex, age, size, weight, ...")
    p.add_argument("--keep-device-identity", action="store_true",
                   help="Retain Device Identity Option (113109): station name, serial numbers, ...")
    p.add_argument("--keep-institution-identity", action="store_true",
                   help="Retain Institution Identity Option (113112)")
    p.add_argument("--keep-uids", action="store_true", help="Retain UIDs Option (113110)")
    p.add_argument("--pseudonym-key", metavar="FILE", type=Path, default=None,
                   help="key file (16+ bytes) for reproducible UIDs and pseudonyms (default: random per run)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def _short(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer anonymize``; returns 0 or 2. Raises MedViewerError (exit 1) when nothing is written."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from tqdm import tqdm

    from medviewer import audit
    from medviewer.deid import DeidOptions, anonymize_dataset, load_key
    from medviewer.io import quiet_pydicom_warnings, sniff_kind
    from medviewer.io.instance import FileKind
    from medviewer.io.scan import Skipped, _walk

    key = load_key(args.pseudonym_key) if args.pseudonym_key else None
    if key is None:
        import secrets

        key = secrets.token_bytes(32)
    options = DeidOptions(keep_dates=args.keep_dates, keep_descriptors=args.keep_descriptors,
                          keep_uids=args.keep_uids, keep_device_identity=args.keep_device_identity,
                          keep_institution_identity=args.keep_institution_identity,
                          keep_patient_characteristics=args.keep_patient_characteristics)
    out_dir: Path = args.out
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedViewerError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None

    quiet_pydicom_warnings()
    skipped: list[Skipped] = []
    files = _walk(args.inputs, skipped)
    named = {Path(i).resolve() for i in args.inputs}
    dicom_files, failures = [], []
    for path in files:
        if sniff_kind(path) == FileKind.DICOM:
            dicom_files.append(path)
        elif path.resolve() in named:
            failures.append(f"{path}: not a DICOM file (only DICOM is de-identified)")
    failures += [f"{s.path}: {s.reason}" for s in skipped]
    if not dicom_files:
        for line in failures[:10]:
            print(f"medviewer: failed: {line}", file=sys.stderr)
        raise MedViewerError(f"no DICOM files found in {' '.join(map(str, args.inputs))}")

    studies_in: list[str] = []
    studies_out, series_out = set(), set()
    written = 0
    for path in tqdm(dicom_files, unit="file", desc="anonymize", disable=True if args.quiet else None,
                     file=sys.stderr):
        try:
            ds = pydicom.dcmread(path, force=True)  # sniff_kind said DICOM; bare datasets too
            if ds.get("SOPClassUID") == "1.2.840.10008.1.3.10":
                raise MedViewerError("a DICOMDIR (Media Storage Directory) is not de-identified; its files are")
            out = anonymize_dataset(ds, options, key)
            study, series = str(out.get("StudyInstanceUID", "")), str(out.get("SeriesInstanceUID", ""))
            sop = str(out.get("SOPInstanceUID", "")) or _short(str(path))
            target = out_dir / _short(study or "no-study") / _short(series or "no-series") / f"{_short(sop)}.dcm"
            if target.exists() and not args.overwrite:
                raise MedViewerError(f"{target} exists (same instance given twice? use --overwrite)")
            target.parent.mkdir(parents=True, exist_ok=True)
            out.save_as(target, enforce_file_format=True)
        except MedViewerError as exc:
            failures.append(f"{path}: {exc}")
            continue
        except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            failures.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        written += 1
        if ds.get("StudyInstanceUID") and str(ds.StudyInstanceUID) not in studies_in:
            studies_in.append(str(ds.StudyInstanceUID))
        studies_out.add(study)
        series_out.add((study, series))

    outcome = (audit.Outcome.SUCCESS if not failures else
               audit.Outcome.MINOR_FAILURE if written else audit.Outcome.SERIOUS_FAILURE)
    try:
        audit.record(audit.AuditEvent.DEIDENTIFIED, outcome=outcome, objects=audit.object_refs(studies_in),
                     detail={"instances": written, "failed": len(failures), "profile": args.profile,
                             "options": [c[0] for c in options.codes()],
                             "key": "given" if args.pseudonym_key else "random"})
    except (MedViewerError, ValueError) as exc:
        print(f"medviewer: warning: audit record not written: {exc}", file=sys.stderr)

    for line in failures[:10]:
        print(f"medviewer: failed: {line}", file=sys.stderr)
    if len(failures) > 10:
        print(f"medviewer: ... and {len(failures) - 10} more failures", file=sys.stderr)
    if not written:
        raise MedViewerError("no instance was de-identified")
    print(f"{written} instances de-identified ({len(studies_out)} studies, {len(series_out)} series, "
          f"{len(failures)} failed) -> {out_dir}")
    return EXIT_SOME_FAILED if failures else EXIT_OK
