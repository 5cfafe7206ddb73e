"""``medviewer info PATH... [--json]``: the patient/study/series tree of files and folders.

Text output (one line per patient, study and series)::

    Patient Pancreas-CT-CB_001  ID Pancreas-CT-CB_001  sex M
      Study 2012-07-06  PANCREAS  uid 1.3.6.1...
        Series 2  CT  "PANCREAS DI, iDose (3)"  134 instances  512x512  0.703x0.703 mm (PixelSpacing)  HU
          slices 3 mm apart (position order)  Implicit VR Little Endian  uid 1.3.6.1...
        Series 3  PR  1 presentation state (Grayscale Softcopy Presentation State Storage), not an image  uid ...
    Skipped 2 files:
      .../LICENSE: not a DICOM, PNG or JPEG file (unrecognised content)

``--json`` prints ``{"studies": [{"study_instance_uid", "patient_id", ..., "series": [{"series_instance_uid",
"modality", ..., "instances": [{"path", "sop_instance_uid", "instance_number", "image_position_patient",
...}]}]}], "non_images": [{"path", "kind", "sop_class_uid", "sop_class_name", "sop_instance_uid",
"study_instance_uid", "series_instance_uid", "modality"}], "skipped": [{"path", "reason"}]}`` with instances in
display order; ``"non_images"`` only when there are any.

Non-image objects -- presentation states and structured reports, recognised by SOP Class UID
(:attr:`medviewer.io.scan.ScanResult.non_images`) -- are listed under their study, one line per series and
SOP class, and never as files that could not be opened: the workstation applies a presentation state over
the images it references and shows an SR's findings. Those of a study with no image here are listed after
the tree.

Pixel spacing and units are the first instance's frame 1, as :mod:`medviewer.io.header` reads them: the
spacing's source is ``PixelSpacing`` (in the patient), ``ImagerPixelSpacing`` (at the detector) or
``NominalScannedPixelSpacing`` (PS3.3 10.7.1.3); ``"units"`` is the Rescale Type defined term of the
modality values (``HU``; ``US`` = unspecified), shown in the text tree unless unspecified.

Exit status: 0 when at least one image or non-image object (presentation state, SR) was read, 1 otherwise: a
single bad file or an empty folder is a one-line error; a folder with files but nothing readable prints the
skipped list, then a one-line error.
Nothing is decoded: problems only the pixels show (a blank frame, a Modality LUT whose data disagree with
its descriptor) are found by ``render`` and ``infer``, not here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medviewer.errors import MedViewerError, display_path
from medviewer.io import RescaleType, quiet_pydicom_warnings, read_instance, transfer_syntax_name
from medviewer.io.scan import NonImage, ScanResult, Series, Study, scan

__all__ = ["add_parser", "run", "result_to_json", "format_tree"]

_EPILOG = """examples:
  medviewer info image.dcm                      # one file: its patient, study and series
  medviewer info STUDY_FOLDER                   # every file below it, grouped; unreadable ones under 'Skipped'
  medviewer info STUDY_FOLDER --json > tree.json
  medviewer info a.dcm b.png CT_FOLDER          # files and folders mixed
  medviewer info PR_state.dcm                   # a presentation state or SR: listed as a non-image object

Nothing is decoded (fast on large folders); 'render' and 'infer' find what only the pixels show.
Presentation states and structured reports are listed under their study as non-image objects, not skipped.
Exit status: 0 when at least one image or non-image object was read, 1 otherwise (one error line on stderr)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``info`` on the ``medviewer`` subcommand parser."""
    p = subparsers.add_parser(
        "info", help="print the patient/study/series tree of DICOM/PNG/JPEG files and folders",
        description="Print the patient/study/series tree (modality, size, pixel spacing, transfer syntax, "
                    "instance counts) of files and folders. Unreadable files are listed under 'skipped'.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the text tree")
    p.set_defaults(run=run)
    return p


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _series_json(series: Series) -> dict[str, Any]:
    head = series.instances[0]
    return {
        "series_instance_uid": series.series_instance_uid,
        "modality": series.modality,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "rows": head.rows,
        "columns": head.columns,
        "pixel_spacing": list(head.pixel_spacing) if head.pixel_spacing else None,
        "pixel_spacing_source": head.pixel_spacing_source.value if head.pixel_spacing_source else None,
        "units": head.units.value,
        "transfer_syntax": transfer_syntax_name(head.transfer_syntax_uid) if head.is_dicom else None,
        "ordered_by": series.ordered_by.value,
        "slice_spacing_mm": series.slice_spacing_mm,
        "number_of_instances": len(series.instances),
        "number_of_frames": series.number_of_frames,
        "instances": [
            {
                "path": display_path(inst.path),
                "sop_instance_uid": inst.sop_instance_uid,
                "instance_number": inst.instance_number,
                "image_position_patient": list(inst.image_position_patient)
                if inst.image_position_patient else None,
                "number_of_frames": inst.number_of_frames,
            }
            for inst in series.instances
        ],
        "duplicates": [display_path(inst.path) for inst in series.duplicates],
        "gaps": [{"index": g.index, "missing": g.missing, "distance_mm": g.distance_mm,
                  "expected_mm": g.expected_mm} for g in series.gaps],
    }


def _study_json(study: Study) -> dict[str, Any]:
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "series": [_series_json(s) for s in study.series],
    }


def result_to_json(result: ScanResult) -> dict[str, Any]:
    """The ``--json`` document of a scan (see the module docstring)."""
    doc: dict[str, Any] = {"studies": [_study_json(st) for st in result.studies]}
    if result.non_images:  # only when there are any: the document of an image folder keeps its two keys
        doc["non_images"] = [_non_image_json(n) for n in result.non_images]
    doc["skipped"] = [{"path": display_path(s.path), "reason": s.reason} for s in result.skipped]
    return doc


def _non_image_json(obj: NonImage) -> dict[str, Any]:
    return {"path": display_path(obj.path), "kind": obj.kind, "sop_class_uid": obj.sop_class_uid,
            "sop_class_name": obj.sop_class_name, "sop_instance_uid": obj.sop_instance_uid,
            "study_instance_uid": obj.study_instance_uid, "series_instance_uid": obj.series_instance_uid,
            "modality": obj.modality}


def _non_image_lines(objects: list[NonImage], indent: str) -> list[str]:
    """One line per (series, SOP class) of non-image objects, e.g. ``Series  PR  2 presentation states
    (Grayscale Softcopy Presentation State Storage), not images  uid 1.2...``."""
    groups: dict[tuple[str, str], list[NonImage]] = {}
    for obj in objects:
        groups.setdefault((obj.series_instance_uid, obj.sop_class_uid), []).append(obj)
    lines = []
    for (series_uid, _cls), objs in groups.items():
        head, n = objs[0], len(objs)
        what = f"{n} {head.kind}{'s' * (n != 1)} ({head.sop_class_name}), not {'an image' if n == 1 else 'images'}"
        uid = f"  uid {series_uid}" if series_uid else f"  {display_path(head.path)}"
        lines.append(f"{indent}Series  {head.modality or '-'}  {what}{uid}")
    return lines


def _series_lines(series: Series) -> list[str]:
    head = series.instances[0]
    number = "-" if series.series_number is None else str(series.series_number)
    desc = f'"{series.series_description}"' if series.series_description else ""
    frames = f" ({series.number_of_frames} frames)" if series.number_of_frames != len(series.instances) else ""
    spacing = (f"{head.pixel_spacing[0]:.4g}x{head.pixel_spacing[1]:.4g} mm ({head.pixel_spacing_source.value})"
               if head.pixel_spacing and head.pixel_spacing_source else "no pixel spacing")
    units = "" if head.units == RescaleType.US else head.units.value
    count = len(series.instances)
    parts = [f"Series {number}", series.modality, desc, f"{count} instance{'s' * (count != 1)}{frames}",
             f"{head.columns}x{head.rows}", head.photometric_interpretation.value, spacing, units]
    line = "    " + "  ".join(p for p in parts if p)
    detail = []
    if series.slice_spacing_mm:
        detail.append(f"slices {series.slice_spacing_mm:.4g} mm apart")
    if count > 1:
        detail.append(f"{series.ordered_by.value.replace('_', ' ')} order")
    if head.is_dicom:
        detail.append(transfer_syntax_name(head.transfer_syntax_uid))
        detail.append(f"uid {series.series_instance_uid}")
    else:
        detail.append(display_path(head.path))
    lines = [line, "      " + "  ".join(detail)]
    if series.duplicates:
        lines.append(f"      {len(series.duplicates)} duplicate file(s) of SOP Instances already listed")
    for gap in series.gaps:
        where = (f"{gap.distance_mm:.4g} mm between neighbours, {gap.expected_mm:.4g} mm expected"
                 if gap.distance_mm is not None else "instance numbers jump")
        lines.append(f"      gap before instance #{gap.index + 1}: ~{gap.missing} missing ({where})")
    return lines


def format_tree(result: ScanResult) -> str:
    """The text tree of a scan (see the module docstring)."""
    lines: list[str] = []
    by_study: dict[str, list[NonImage]] = {}
    for obj in result.non_images:
        by_study.setdefault(obj.study_instance_uid, []).append(obj)
    for (pid, name), studies in result.patients().items():
        head = studies[0].series[0].instances[0] if studies and studies[0].series else None
        sex = f"  sex {head.patient_sex}" if head is not None and head.patient_sex else ""
        age = f"  age {head.patient_age}" if head is not None and head.patient_age else ""
        who = f"Patient {name or '(no name)'}  ID {pid or '(none)'}{sex}{age}"
        lines.append(who if head is None or head.is_dicom else "Image file (no patient data)")
        for st in studies:
            uid = f"  uid {st.study_instance_uid}" if st.study_instance_uid else ""
            desc = f"  {st.study_description}" if st.study_description else ""
            lines.append(f"  Study {_date(st.study_date) or '(no date)'}{desc}{uid}")
            for series in st.series:
                lines.extend(_series_lines(series))
            lines.extend(_non_image_lines(by_study.pop(st.study_instance_uid, []) if st.study_instance_uid
                                          else [], "    "))
    if not result.studies:
        lines.append("No readable images." if not result.non_images else "No images.")
    rest = [obj for objs in by_study.values() for obj in objs]
    if rest:
        summary = ScanResult(non_images=rest).non_image_summary()
        lines.append(f"Non-image objects ({summary}){' of studies without images here' if result.studies else ''}:")
        for study_uid in dict.fromkeys(obj.study_instance_uid for obj in rest):
            lines.append(f"  Study uid {study_uid or '(none)'}")
            lines.extend(_non_image_lines([o for o in rest if o.study_instance_uid == study_uid], "    "))
    if result.skipped:
        lines.append(f"Skipped {len(result.skipped)} file{'s' * (len(result.skipped) != 1)}:")
        lines.extend(f"  {display_path(s.path)}: {s.reason}" for s in result.skipped)
    return "\n".join(lines)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer info``; returns the exit status."""
    quiet_pydicom_warnings()
    paths = [Path(p) for p in args.paths]
    result = scan(paths)
    found = bool(result.studies or result.non_images)
    if len(paths) == 1 and not found and not _is_dir(paths[0]) and paths[0].name.upper() != "DICOMDIR":
        read_instance(paths[0])  # a single bad file: one-line ReadError, exit 1, via the dispatcher
    if not found and not result.skipped:
        where = " ".join(display_path(p) for p in paths)
        raise MedViewerError(f"{where}: no files found (empty folder)" if all(_is_dir(p) for p in paths)
                             else f"{where}: no DICOM, PNG or JPEG images found")
    text = json.dumps(result_to_json(result), indent=2) if args.json else format_tree(result)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0 if found else 1
    if not found:
        n = len(result.skipped)
        print(f"medviewer: error: no readable DICOM, PNG or JPEG images ({n} file{'s' * (n != 1)} skipped, "
              f"see above)", file=sys.stderr)
    return 0 if found else 1
