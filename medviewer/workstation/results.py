"""AI results of the workstation as DICOM, written and sent off the GUI thread (Qt-free).

:func:`write_result_dicom` writes the TID 1500 SR and the overlay Secondary Capture of one
:class:`~medviewer.workstation.session.PredictionEntry` (what ``medviewer infer --dicom`` writes per image,
:class:`medviewer.export.dicom_ai.DicomResultWriter`), optionally de-identified; :func:`send_files` stores
files on a PACS (C-STORE / STOW-RS) one at a time so a reader can cancel between objects. Both are called from
a worker; the GUI (``medviewer.gui.results_dialog``) records ``results-exported`` / ``sent`` audit events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["write_result_dicom", "send_files", "SendReport"]


def write_result_dicom(source: Any, k: int, entry: Any, out_dir: Path, *, deidentify: bool = False,
                       key: bytes | None = None, alpha: float = 0.4, colormap: str = "jet") -> list[Path]:
    """Write the SR and SC of ``entry`` (the result for frame ``k`` of the
    :class:`~medviewer.workstation.frames.FrameSource` ``source``) into ``out_dir``; returns the two paths.

    The overlay is rendered as ``medviewer infer --overlays`` does (heat map of the top flagged or most probable
    label at ``alpha`` with ``colormap``, region outlines, scores) on the image the model saw. With
    ``deidentify`` the objects are built on the source as ``medviewer anonymize`` writes it with ``key``
    (:func:`medviewer.export.dicom_ai.deidentified_source`).

    Raises
    ------
    medviewer.export.dicom_ai.DicomExportError
        A PNG/JPEG image (no DICOM header: no study to put results in) or a header without the UIDs.
    medviewer.deid.BurnedInAnnotationError
        ``deidentify`` on a source that declares burned-in annotation.
    """
    from medviewer.export.dicom_ai import DicomExportError, DicomResultWriter
    from medviewer.export.overlay import render_overlay
    from medviewer.imaging import display_image

    inst, frame = source.frames[k]
    ds = getattr(inst, "dataset", None)
    if ds is None or not ds.get("SOPInstanceUID"):
        raise DicomExportError(f"{Path(str(inst.path)).name}: not a DICOM image, so there is no study to store "
                               "DICOM results in")
    card = entry.package.card
    img = display_image(inst, frame=frame, stored=source.decode(k))  # what the model saw
    rgb = render_overlay(img, entry.prediction, alpha=alpha, colormap=colormap, negative_label=card.negative_label)
    multi = int(getattr(inst, "number_of_frames", 1) or 1) > 1
    writer = DicomResultWriter(out_dir, card, deidentify=True if deidentify else None, key=key)
    app = entry.prediction.applicability  # typed here; the SR writer takes the serialised form
    return writer.write(ds, entry.prediction, rgb, applicability=None if app is None else app.to_dict(),
                        frame=frame if multi else None)


@dataclass
class SendReport:
    """What :func:`send_files` did: SOP Instance UIDs stored, ``(file name, reason)`` per failure, the Study
    Instance UIDs sent, whether it was cancelled before the end, and the node's URL."""

    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    cancelled: bool = False
    destination: str = ""  #: the node's URL (a saved name resolved; never credentials)


def send_files(node: Any, paths: list[Path], *, aet: str = "MEDVIEWER", timeout: float = 30.0,
               cancel: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> SendReport:
    """Store ``paths`` (DICOM files) on ``node`` (a :class:`medviewer.pacs.Node`, URL or saved name), one object
    per request so ``cancel`` (polled before each) can stop between objects.

    Raises
    ------
    medviewer.pacs.PacsError
        The node cannot be reached or refuses the association (one line; nothing was stored).
    """
    from pydicom import dcmread

    from medviewer.pacs import connect

    report = SendReport()
    datasets = []
    for p in paths:
        ds = dcmread(p)
        datasets.append((Path(p).name, ds))
        study = str(ds.get("StudyInstanceUID", "") or "")
        if study and study not in report.study_uids:
            report.study_uids.append(study)
    with connect(node, aet=aet, timeout=timeout) as client:
        report.destination = client.node.url
        for i, (name, ds) in enumerate(datasets):
            if cancel is not None and cancel():
                report.cancelled = True
                break
            outcome = client.store([ds])
            report.stored.extend(outcome.stored)
            report.failed.extend((name, why) for _uid, why in outcome.failed)
            if progress is not None:
                progress(i + 1, len(datasets))
    return report
