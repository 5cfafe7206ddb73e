"""Retrieving a study into a folder: resume by SOP Instance UID, progress, count verification.

Layout: ``OUT/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (DICOM Part 10 files,
PS3.10). An instance whose file exists is not retrieved again -- the folder is the cache, keyed by SOP
Instance UID -- and each file is written to a temporary name and renamed, so an interrupted retrieval
never leaves a truncated file that would later count as present. After the retrieval the expected
instances (from the image-level query) are checked against the folder; what is missing is reported.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medviewer.pacs.model import InstanceRef, PacsClient
from medviewer.pacs.node import PacsError

__all__ = ["RetrieveResult", "instance_path", "retrieve_study", "write_instance"]

_SAFE = set("0123456789.")


def _uid_name(uid: str) -> str:
    uid = str(uid).strip()
    if not uid or not set(uid) <= _SAFE:  # UIDs are digits and dots (PS3.5 9.1); anything else is refused
        raise PacsError(f"{uid!r}: not a DICOM UID")
    return uid


def instance_path(out: Path, study: str, series: str, sop: str) -> Path:
    """``out/STUDY/SERIES/SOP.dcm`` for the given UIDs (raises PacsError for a non-UID)."""
    return Path(out) / _uid_name(study) / _uid_name(series) / f"{_uid_name(sop)}.dcm"


def write_instance(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a Part 10 file at ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.is_implicit_VR is not False else ExplicitVRLittleEndian
        ds.file_meta = meta
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class RetrieveResult:
    """What :func:`retrieve_study` did.

    Attributes
    ----------
    expected
        Every instance the PACS lists for the study (or series).
    skipped
        How many were already in the folder (not retrieved again).
    written
        Files written by this call.
    missing
        Expected instances still absent afterwards (empty on a complete retrieval).
    unexpected
        SOP Instance UIDs received that the query did not list (also written).
    cancelled
        True when the retrieval was cancelled before it finished.
    notes
        The client's warnings about this retrieval (:attr:`~medviewer.pacs.model.PacsClient.notes`: e.g. a
        C-GET/C-MOVE that ended with failed sub-operations), one line each.
    """

    out: Path
    expected: list[InstanceRef]
    skipped: int = 0
    written: list[Path] = field(default_factory=list)
    missing: list[InstanceRef] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    def study_dir(self) -> Path:
        """The folder the study's files are in."""
        return self.out / self.expected[0].study_instance_uid if self.expected else self.out


def retrieve_study(client: PacsClient, study_instance_uid: str, out: Path, *,
                   series_instance_uid: str | None = None,
                   progress: Callable[[int, int], None] | bool = False,
                   cancel: threading.Event | None = None) -> RetrieveResult:
    """Retrieve a study (or one of its series) into ``out``, skipping instances already there.

    Parameters
    ----------
    client
        A connected :class:`~medviewer.pacs.model.PacsClient`.
    study_instance_uid, series_instance_uid
        What to retrieve.
    out
        Destination folder (created).
    progress
        True: a tqdm progress bar on stderr; a callable: called as ``progress(done, total)`` after each
        instance (``done`` counts skipped ones too), e.g. from a GUI worker; False: silent.
    cancel
        Set it (from another thread) to stop after the instance in flight.

    Returns
    -------
    RetrieveResult
        Check :attr:`RetrieveResult.missing`; a partial retrieval is not an exception.

    Raises
    ------
    PacsError
        The PACS lists no instance for the study/series (no such study), or a network failure.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PacsError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    client.notes = []
    expected = client.list_instances(study_instance_uid, series_instance_uid)
    if not expected:
        what = f"series {series_instance_uid} of study" if series_instance_uid else "study"
        raise PacsError(f"{client.node}: no such {what} {study_instance_uid} (the query matched no instance)")
    result = RetrieveResult(out, expected)
    todo: dict[str, list[InstanceRef]] = {}
    whole: dict[str, int] = {}
    for ref in expected:
        whole[ref.series_instance_uid] = whole.get(ref.series_instance_uid, 0) + 1
        path = instance_path(out, ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)
        if path.is_file() and path.stat().st_size > 0:
            result.skipped += 1
        else:
            todo.setdefault(ref.series_instance_uid, []).append(ref)
    total = len(expected)
    expected_uids = {r.sop_instance_uid for r in expected}

    bar = None
    report: Callable[[int, int], None] | None = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=result.skipped, unit="inst", desc="retrieve", leave=False,
                   dynamic_ncols=True)
    elif callable(progress):
        report = progress
        report(result.skipped, total)
    done = [result.skipped]
    lock = threading.Lock()

    def sink(ds: Dataset) -> None:
        sop = str(ds.SOPInstanceUID)
        path = instance_path(out, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop)
        try:
            write_instance(ds, path)
        except OSError as exc:
            raise PacsError(f"{path}: cannot write ({exc.strerror or exc})") from None
        with lock:
            result.written.append(path)
            if sop not in expected_uids:
                result.unexpected.append(sop)
            done[0] += 1
            if bar is not None:
                bar.update(1)
            if report is not None:
                report(done[0], total)

    try:
        for series, refs in todo.items():
            if cancel is not None and cancel.is_set():
                break
            uids: Sequence[str] | None = None if len(refs) == whole[series] else [r.sop_instance_uid for r in refs]
            client.retrieve(study_instance_uid, series, uids, sink,
                            sop_class_uids=[r.sop_class_uid for r in refs], cancel=cancel)
    finally:
        if bar is not None:
            bar.close()
    result.cancelled = bool(cancel is not None and cancel.is_set())
    result.notes = list(client.notes)
    if result.unexpected:
        result.notes.append(f"{len(result.unexpected)} instances arrived that the PACS's query did not list "
                            f"(kept; e.g. {result.unexpected[0]})")
    result.missing = [r for r in expected if not instance_path(
        out, r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid).is_file()]
    return result
