"""AI results stored as DICOM SR (TID 1500), ours or another vendor's, found among opened files (Qt-free).

:func:`find_sr_reports` reads the Comprehensive 3D / Comprehensive / Enhanced SR files under some paths with
:func:`medviewer.export.dicom_ai.read_sr_findings`; :class:`SrReports` keeps their findings by the SOP Instance
UID (and frame) of the image they reference, and :meth:`SrReports.overlay_prediction` turns a frame's image
regions into what the one AI overlay (:mod:`medviewer.workstation.overlay`) draws: outlines with their tags, no
heat map. SCOORD coordinates (PS3.3 C.18.6.1.1: ``(0, 0)`` the top-left corner of the top-left pixel) become the
overlay's pixel-index contours by subtracting 0.5. Regions in patient coordinates (SCOORD3D) are listed, not
drawn. When several of our reports reference one image (``medviewer infer --models`` and the workstation write
one report per model), each region's tag names the report's model (:func:`report_source`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["SR_SOP_CLASSES", "SrReport", "SrReports", "find_sr_reports", "finding_text", "report_source"]

#: Comprehensive 3D SR, Comprehensive SR, Enhanced SR (PS3.4 B.5)
SR_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22")


@dataclass
class SrReport:
    """One TID 1500 report: its file name, SOP Instance UID, Study Instance UID, series description, manufacturer
    and the measurement groups (:func:`~medviewer.export.dicom_ai.read_sr_findings`)."""

    name: str
    sop_instance_uid: str
    study_instance_uid: str
    description: str
    manufacturer: str
    findings: list[dict[str, Any]] = field(default_factory=list)


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for text in paths:
        p = Path(text)
        try:
            if p.is_dir():
                out.extend(sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")))
            elif p.is_file():
                out.append(p)
        except OSError:
            continue
    return out


def find_sr_reports(paths: Iterable[str | Path], cancel: Any = None) -> list[SrReport]:
    """The TID 1500 reports among the files under ``paths`` (files and folders, recursive). Files that are not
    DICOM, not a structured report of the three classes, or not a Measurement Report are passed over;
    ``cancel()`` (optional) is polled per file."""
    import pydicom

    from medviewer.export.dicom_ai import read_sr_findings

    reports: list[SrReport] = []
    for f in _files(paths):
        if cancel is not None and cancel():
            break
        try:
            with f.open("rb") as fh:
                head = fh.read(132)
            if head[128:132] != b"DICM":
                continue
            meta = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            if str(meta.get("SOPClassUID", "")) not in SR_SOP_CLASSES:
                continue
            ds = pydicom.dcmread(f)
            findings = read_sr_findings(ds)
        except Exception:  # noqa: BLE001 - any unreadable file is passed over, never the whole task
            continue  # (hostile corpus: 20,000-deep nesting, pydicom's BytesLengthException on a bit flip)
        reports.append(SrReport(f.name, str(ds.get("SOPInstanceUID", "")), str(ds.get("StudyInstanceUID", "")),
                                str(ds.get("SeriesDescription", "") or ""), str(ds.get("Manufacturer", "") or ""),
                                findings))
    return reports


#: the Series Description our TID 1500 reports start with (``medviewer.export.sr_writer``: "AI results <model> <version>")
_OURS = "AI results "


def report_source(report: SrReport) -> str:
    """Who made ``report``, in a few words: the model of our reports (their Series Description is ``"AI results
    <model> <version>"``), else the Series Description, the Manufacturer or the file name."""
    desc = report.description.strip()
    if desc.startswith(_OURS):
        return desc[len(_OURS):].strip() or desc
    return desc or report.manufacturer.strip() or report.name


def finding_text(f: dict[str, Any]) -> str:
    """One line for a finding: ``"<finding> (<tracking id>): <measurement> 0.93, <evaluation>: Present"``."""
    name = f.get("finding") or "finding"
    tid = f.get("tracking_identifier")
    parts = [f"{k} {v:.3g}" for k, v in (f.get("measurements") or {}).items()]
    parts += [f"{k}: {v}" for k, v in (f.get("evaluations") or {}).items()]
    region = f" [{f['graphic_type']}]" if f.get("graphic_type") else ""
    return f"{name}{f' ({tid})' if tid and tid != name else ''}{region}" + (": " + ", ".join(parts) if parts else "")


def _contour(graphic_type: str, pts: np.ndarray) -> np.ndarray:
    """SCOORD points -> an outline in pixel-index coordinates (x, y), float ``(M, 2)``."""
    gt = graphic_type.upper()
    if gt == "CIRCLE" and len(pts) >= 2:
        r = float(np.hypot(*(pts[1] - pts[0])))
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = pts[0] + r * np.stack([np.cos(t), np.sin(t)], 1)
    elif gt == "ELLIPSE" and len(pts) >= 4:
        c = pts[:2].mean(0)
        a, b = pts[1] - c, pts[3] - pts[2:4].mean(0)
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)[:, None]
        pts = c + np.cos(t) * a + np.sin(t) * b
    elif gt in ("POINT", "MULTIPOINT"):
        x0, y0 = pts.min(0) - 3
        x1, y1 = pts.max(0) + 3
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return np.asarray(pts, np.float64) - 0.5


class SrReports:
    """The findings of the opened studies' AI reports, by referenced image.

    :meth:`add` takes :class:`SrReport` s; :meth:`regions` gives a frame's drawable regions and
    :meth:`overlay_prediction` an object the AI overlay draws (``regions``, no ``cams``, no applicability).
    """

    def __init__(self) -> None:
        self.reports: list[SrReport] = []
        self._by_image: dict[tuple[str, int | None], list[tuple[SrReport, dict[str, Any]]]] = {}

    def add(self, reports: Iterable[SrReport]) -> list[SrReport]:
        """Add reports not seen before (by SOP Instance UID); returns the new ones."""
        known = {r.sop_instance_uid for r in self.reports}
        new = [r for r in reports if r.sop_instance_uid not in known]
        for r in new:
            self.reports.append(r)
            for f in r.findings:
                uid = f.get("referenced_sop_instance_uid")
                if uid and f.get("polyline") is not None and len(f["polyline"]):
                    frames = f.get("referenced_frame_numbers") or [None]
                    for fr in frames:
                        self._by_image.setdefault((str(uid), None if fr is None else int(fr) - 1), []).append((r, f))
        return new

    def __len__(self) -> int:
        return len(self.reports)

    def regions(self, sop_instance_uid: str, frame: int = 0) -> list[Any]:
        """Drawable regions on frame ``frame`` (from 0) of an image: objects with ``label``, ``bbox`` (x0, y0, x1,
        y1 pixels), ``contour`` (float ``(M, 2)`` pixel-index x, y) and ``peak`` (the first measurement, else 0)."""
        out = []
        hits = self._by_image.get((str(sop_instance_uid), frame), []) + self._by_image.get((str(sop_instance_uid),
                                                                                          None), [])
        # several of our reports (one per model) on this image: each region names its model
        several = len({id(r) for r, _f in hits if r.description.startswith(_OURS)}) > 1
        for report, f in hits:
            contour = _contour(str(f.get("graphic_type") or "POLYLINE"), np.asarray(f["polyline"], float))
            x0, y0 = np.floor(contour.min(0)).astype(int)
            x1, y1 = np.ceil(contour.max(0)).astype(int) + 1
            values = list((f.get("measurements") or {}).values())
            label = str(f.get("finding") or "finding") + (f" · {report_source(report)}" if several else "")
            out.append(SimpleNamespace(label=label, bbox=(int(x0), int(y0), int(x1), int(y1)), contour=contour,
                                       peak=float(values[0]) if values else 0.0))
        return out

    def overlay_prediction(self, sop_instance_uid: str, frame: int = 0) -> Any:
        """What :class:`~medviewer.workstation.overlay.AiOverlay` draws for a frame's SR regions, or None when it
        has none: ``regions``, ``labels``, ``flagged``, no CAMs, no applicability."""
        regs = self.regions(sop_instance_uid, frame)
        if not regs:
            return None
        labels = list(dict.fromkeys(r.label for r in regs))
        return SimpleNamespace(regions=regs, labels=labels, flagged=labels, cams=None, applicability=None)
