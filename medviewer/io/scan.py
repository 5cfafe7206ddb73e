"""Folder scan: find every image under some paths and group it patient -> study -> series -> instance.

DICOM files are recognised by content, not extension; a DICOMDIR (PS3.10 7.2, PS3.3 F.5), when present,
lists referenced files (files it misses are still found by walking the folder). Instances of a series are
put in display order by their position along the slice normal (Image Position (Patient) projected on the
normal of Image Orientation (Patient), PS3.3 C.7.6.2.1.1), falling back to Instance Number; duplicate
SOP Instances and gaps in the slice spacing are reported, not hidden.

Presentation states (PS3.4 B.5: SOP Classes 1.2.840.10008.5.1.4.1.1.11.x) and structured reports
(1.2.840.10008.5.1.4.1.1.88.x, key object selection included) carry no Pixel Data by design: the workstation
reads them by other means (:mod:`medviewer.workstation.presentation`, :mod:`medviewer.workstation.sr_reports`).
They are recognised by their SOP Class UID and listed in :attr:`ScanResult.non_images`, never among the files
that could not be opened (:attr:`ScanResult.skipped`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pydicom

from medviewer.errors import ReadError, error_line
from medviewer.io.files import open_regular, os_error_reason, special_file_kind
from medviewer.io.instance import Instance, read_instance

__all__ = ["scan", "ScanResult", "Study", "Series", "Skipped", "NonImage", "Gap", "order_instances", "slice_normal",
           "SliceOrder", "NON_IMAGE_CLASSES", "non_image_kind"]

_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (DICOMDIR)
#: SOP Class UID prefixes of the non-image objects a scan lists apart (PS3.4 B.5), and what each is called
NON_IMAGE_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),  # grayscale/colour/blending... softcopy PS
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report"),   # basic/enhanced/comprehensive(3D) SR, KOS, CAD SR
)
#: files :func:`scan` tries for its ``on_first`` callback before giving up on a preview
FIRST_TRIES = 4


class SliceOrder(str, Enum):
    """How a series' instances were ordered (:attr:`Series.ordered_by`)."""

    POSITION = "position"  #: along the slice normal
    INSTANCE_NUMBER = "instance_number"
    FILE_NAME = "file_name"


@dataclass(frozen=True)
class Skipped:
    """A file that was not loaded and the one-line reason."""

    path: Path
    reason: str


@dataclass(frozen=True)
class NonImage:
    """A DICOM object without pixels that the workstation reads by other means (see :data:`NON_IMAGE_CLASSES`):
    a presentation state or a structured report, with the UIDs that tie it to its study."""

    path: Path
    kind: str  #: ``"presentation state"`` or ``"structured report"``
    sop_class_uid: str
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    patient_id: str = ""
    modality: str = ""

    @property
    def sop_class_name(self) -> str:
        """The SOP Class's name (PS3.6 A.1), e.g. ``Grayscale Softcopy Presentation State Storage``."""
        return pydicom.uid.UID(self.sop_class_uid).name


def non_image_kind(sop_class_uid: str) -> str | None:
    """``"presentation state"`` / ``"structured report"`` for a SOP Class UID of :data:`NON_IMAGE_CLASSES`, else
    None (an image, or a non-image object the workstation does not read, e.g. an RT Plan)."""
    uid = str(sop_class_uid or "").strip()
    return next((kind for prefix, kind in NON_IMAGE_CLASSES if uid.startswith(prefix)), None)


def _non_image(path: Path) -> NonImage | None:
    """The :class:`NonImage` a DICOM file holds, or None when it is not one (or cannot be read)."""
    try:
        with open_regular(path) as fp:
            if fp.read(132)[128:132] != b"DICM":
                return None
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=[
                "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality"])
        sop = str(ds.get("SOPClassUID", "") or "")
        kind = non_image_kind(sop)
        if kind is None or not ds.get("StudyInstanceUID") or not ds.get("SOPInstanceUID"):
            return None  # not one, or a file cut inside its header (only the file meta left)
        return NonImage(path, kind, sop, *(str(ds.get(k, "") or "") for k in (
            "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality")))
    except Exception:  # an unreadable file stays among the skipped ones, with read_instance's reason
        return None


@dataclass(frozen=True)
class Gap:
    """A gap in a series: between ``instances[index - 1]`` and ``instances[index]``.

    ``missing`` is the estimated number of absent slices/instances; ``distance_mm`` the distance found
    between the two neighbours along the normal (None when ordered by Instance Number) and
    ``expected_mm`` the series' usual spacing.
    """

    index: int
    missing: int
    distance_mm: float | None = None
    expected_mm: float | None = None


@dataclass
class Series:
    """One series: its instances in display order.

    Attributes
    ----------
    instances : list[Instance]
        Display order (see :attr:`ordered_by`), one per SOP Instance UID.
    duplicates : list[Instance]
        Further files carrying a SOP Instance UID already in :attr:`instances` (not displayed).
    gaps : list[Gap]
        Missing slices detected from the position spacing or Instance Number sequence.
    slice_spacing_mm : float | None
        Median distance between consecutive slice positions, when ordered by position.
    """

    series_instance_uid: str
    modality: str
    series_description: str = ""
    series_number: int | None = None
    instances: list[Instance] = field(default_factory=list)
    duplicates: list[Instance] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    ordered_by: SliceOrder = SliceOrder.FILE_NAME
    slice_spacing_mm: float | None = None

    @property
    def number_of_frames(self) -> int:
        """Total frames over all instances (what the viewer scrolls through)."""
        return sum(i.number_of_frames for i in self.instances)

    @property
    def declared_samples(self) -> int:
        """Samples the whole series declares (rows x columns x samples per pixel x frames, summed over
        instances): compare with :attr:`medviewer.limits.Limits.max_series_pixels` before decoding it all
        (e.g. before prefetching every frame)."""
        return sum(i.rows * i.columns * max(1, i.samples_per_pixel) * max(1, i.number_of_frames)
                   for i in self.instances)


@dataclass
class Study:
    """One study of one patient, with its series sorted by Series Number."""

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_description: str = ""
    series: list[Series] = field(default_factory=list)


@dataclass
class ScanResult:
    """What :func:`scan` found: studies (sorted by patient, date), the non-image objects (presentation states,
    structured reports) and the files it skipped (could not be opened)."""

    studies: list[Study] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    cancelled: bool = False
    non_images: list[NonImage] = field(default_factory=list)

    def non_image_summary(self) -> str:
        """``"1 presentation state, 2 structured reports"`` (empty when there are none)."""
        counts: dict[str, int] = {}
        for n in self.non_images:
            counts[n.kind] = counts.get(n.kind, 0) + 1
        return ", ".join(f"{c} {k}{'s' * (c != 1)}" for k, c in counts.items())

    @property
    def series(self) -> list[Series]:
        """All series of all studies, in order."""
        return [s for st in self.studies for s in st.series]

    @property
    def instances(self) -> list[Instance]:
        """All instances in display order."""
        return [i for s in self.series for i in s.instances]

    def patients(self) -> dict[tuple[str, str], list[Study]]:
        """Studies grouped by (Patient ID, Patient's Name)."""
        out: dict[tuple[str, str], list[Study]] = {}
        for st in self.studies:
            out.setdefault((st.patient_id, st.patient_name), []).append(st)
        return out


# ------------------------------------------------------------------ ordering
def slice_normal(orientation: Iterable[float]) -> np.ndarray | None:
    """Unit normal of an image plane: row direction x column direction (PS3.3 C.7.6.2.1.1)."""
    v = np.asarray(list(orientation), dtype=np.float64)
    if v.shape != (6,):
        return None
    n = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(n)
    return None if norm < 1e-6 else n / norm


def _by_number(inst: Instance) -> tuple:
    return (inst.instance_number is None, inst.instance_number or 0, inst.path.name)


def order_instances(instances: list[Instance]) -> tuple[list[Instance], SliceOrder, list[Gap], float | None]:
    """Put one series' instances in display order.

    By position along the slice normal when every instance has a position and they share one
    orientation (within 1e-3): ascending distance, reversed when Instance Number runs the other way so
    the familiar numbering order is kept. Else by Instance Number, else by file name.

    Returns
    -------
    (ordered, ordered_by, gaps, spacing_mm)
    """
    if len(instances) < 2:
        return list(instances), SliceOrder.POSITION if instances and instances[0].image_position_patient \
            else SliceOrder.INSTANCE_NUMBER, [], None
    first = instances[0].image_orientation_patient
    normal = slice_normal(first) if first else None
    same_plane = normal is not None and all(
        i.image_position_patient is not None and i.image_orientation_patient is not None
        and np.allclose(i.image_orientation_patient, first or (), atol=1e-3) for i in instances)
    if same_plane:
        assert normal is not None  # same_plane implies it
        dist = np.array([float(np.dot(i.image_position_patient or (0.0, 0.0, 0.0), normal)) for i in instances])
        order = sorted(range(len(instances)), key=lambda k: (dist[k], _by_number(instances[k])))
        numbers = [instances[k].instance_number for k in order]
        if all(n is not None for n in numbers) and len(set(numbers)) > 1:
            rho = np.corrcoef(np.arange(len(numbers)), np.asarray(numbers, np.float64))[0, 1]
            if np.isfinite(rho) and rho < 0:
                order = order[::-1]
        ordered = [instances[k] for k in order]
        d = dist[order]
        steps = np.abs(np.diff(d))
        moving = steps[steps > 1e-3]
        gaps: list[Gap] = []
        spacing = float(np.median(moving)) if moving.size else None
        if spacing:
            for k, step in enumerate(steps):
                if step > 1.5 * spacing:
                    gaps.append(Gap(k + 1, int(round(step / spacing)) - 1, float(step), spacing))
        return ordered, SliceOrder.POSITION, gaps, spacing
    if all(i.instance_number is not None for i in instances):
        ordered = sorted(instances, key=_by_number)
        gaps = []
        for k in range(1, len(ordered)):
            jump = ordered[k].instance_number - ordered[k - 1].instance_number  # type: ignore[operator]
            if jump > 1:
                gaps.append(Gap(k, jump - 1))
        return ordered, SliceOrder.INSTANCE_NUMBER, gaps, None
    return sorted(instances, key=_by_number), SliceOrder.FILE_NAME, [], None


# ------------------------------------------------------------------ discovery
#: Most components a Referenced File ID may have (PS3.10 8.5 allows 8; real media use a few).
_MAX_FILE_ID_COMPONENTS = 32
#: Longest referenced path accepted, in bytes (Linux PATH_MAX is 4096; a component is at most 255).
_MAX_REFERENCED_PATH = 1024
_MAX_COMPONENT = 255


def _referenced_path(folder: Path, ref: object, refused: set[str] | None = None) -> Path | str:
    """The file a Referenced File ID (0004,1500) names, inside `folder`; else the reason it is refused.

    PS3.10 8.5 / PS3.12: components are relative to the DICOMDIR's folder. A component that is ``..``,
    absolute, empty, or carries a separator or NUL is refused, as is a path that (after resolving
    symbolic links) lies outside `folder` -- a DICOMDIR must never make us open ``/etc/passwd``. Such a
    link's own path is added to `refused`, so the folder walk does not read it either.
    """
    parts = [ref] if isinstance(ref, str) else list(ref)  # type: ignore[call-overload]
    parts = [str(p).strip() for p in parts]
    shown = "\\".join(parts)[:120]
    if not parts or len(parts) > _MAX_FILE_ID_COMPONENTS:
        return f"Referenced File ID '{shown}' has {len(parts)} components; refused"
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part or ":" in part:
            return f"Referenced File ID '{shown}' leaves the DICOMDIR's folder or is malformed; refused"
        if len(part.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT:
            return f"Referenced File ID component of {len(part)} characters is too long; refused"
    candidate = folder.joinpath(*parts)
    if len(os.fsencode(candidate)) > _MAX_REFERENCED_PATH:
        return f"Referenced File ID '{shown}...' is {len(os.fsencode(candidate))} bytes long; refused"
    base = os.path.realpath(folder)
    real = os.path.realpath(candidate)
    if os.path.commonpath([base, real]) != base:
        if refused is not None:
            refused.add(os.path.abspath(candidate))
        return f"Referenced File ID '{shown}' resolves outside the DICOMDIR's folder; refused"
    return candidate


def _dicomdir_files(path: Path, skipped: list[Skipped] | None = None,
                    refused: set[str] | None = None) -> list[Path] | None:
    """Files referenced by a DICOMDIR, or None when `path` is not one; refused references are added to
    `skipped` with the reason."""
    try:
        with open_regular(path) as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) != _MEDIA_DIRECTORY \
                and "DirectoryRecordSequence" not in ds:
            return None
        out = []
        for rec in ds.get("DirectoryRecordSequence", []):
            try:
                ref = rec.get("ReferencedFileID")
            except Exception:
                ref = None
            if not ref:
                continue
            target = _referenced_path(path.parent, ref, refused)
            if isinstance(target, str):
                if skipped is not None:
                    skipped.append(Skipped(path, target))
                continue
            out.append(target)
        return out
    except Exception:
        return None


def _stat_problem(p: Path) -> str | None:
    """None for a regular file that can be stat'ed; else why it is skipped (never opens it)."""
    try:
        st = os.stat(p)
    except OSError as exc:
        return os_error_reason(exc)
    except ValueError as exc:
        return f"invalid file name ({exc})"
    kind = special_file_kind(st.st_mode)
    return None if kind is None else f"is {kind}, not a regular file; refused"


def _walk(paths: Iterable[str | Path], skipped: list[Skipped]) -> list[Path]:
    files: list[Path] = []
    refused: set[str] = set()  # links a DICOMDIR named that resolve outside its folder
    seen: set[str] = set()

    def add(p: Path, why_missing: str | None = None) -> None:
        problem = _stat_problem(p)
        if problem is not None:
            if why_missing and problem == "no such file":
                problem = why_missing
            skipped.append(Skipped(p, problem))
            return
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    def on_error(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else Path("?")
        skipped.append(Skipped(where, f"cannot list folder: {os_error_reason(exc)}"))

    for raw in paths:
        root = Path(raw)
        try:
            is_dir = root.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            problem = _stat_problem(root)
            if problem is not None:
                skipped.append(Skipped(root, "no such file or folder" if problem == "no such file" else problem))
                continue
            listed = _dicomdir_files(root, skipped, refused) if root.name.upper() == "DICOMDIR" else None
            if listed is None:
                add(root)
                continue
            for p in listed:
                add(p, "referenced by DICOMDIR but missing")
            continue
        for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = Path(dirpath)
            if "DICOMDIR" in filenames:
                listed = _dicomdir_files(here / "DICOMDIR", skipped, refused)
                if listed is not None:
                    for p in listed:
                        add(p, "referenced by DICOMDIR but missing")
                    filenames = [f for f in filenames if f != "DICOMDIR"]
            for f in sorted(filenames):
                if not f.startswith(".") and os.path.abspath(here / f) not in refused:
                    add(here / f)
    return files


def _group(instances: list[Instance]) -> list[Study]:
    studies: dict[str, Study] = {}
    series: dict[tuple[str, str], list[Instance]] = {}
    for inst in instances:
        study_key = inst.study_instance_uid if inst.is_dicom else f"file:{inst.path}"
        series_key = inst.series_instance_uid if inst.is_dicom else f"file:{inst.path}"
        if study_key not in studies:
            studies[study_key] = Study(
                study_instance_uid=inst.study_instance_uid, patient_id=inst.patient_id,
                patient_name=inst.patient_name, study_date=inst.study_date,
                study_description=inst.study_description or ("" if inst.is_dicom else inst.path.name))
        series.setdefault((study_key, series_key), []).append(inst)
    for (study_key, _), members in series.items():
        unique: dict[str, Instance] = {}
        dups: list[Instance] = []
        for inst in members:
            key = inst.sop_instance_uid or f"file:{inst.path}"
            if key in unique:
                dups.append(inst)
            else:
                unique[key] = inst
        ordered, how, gaps, spacing = order_instances(list(unique.values()))
        head = ordered[0]
        studies[study_key].series.append(Series(
            series_instance_uid=head.series_instance_uid, modality=head.modality,
            series_description=head.series_description, series_number=head.series_number,
            instances=ordered, duplicates=dups, gaps=gaps, ordered_by=how, slice_spacing_mm=spacing))
    out = list(studies.values())
    for st in out:
        st.series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_description))
    out.sort(key=lambda st: (st.patient_id, st.patient_name, st.study_date, st.study_instance_uid,
                             st.study_description))
    return out


def scan(paths: str | Path | Iterable[str | Path],
         progress: Callable[[int, int], bool | None] | None = None,
         on_first: Callable[[Instance], None] | None = None) -> ScanResult:
    """Find and read (headers only) every DICOM/PNG/JPEG file under `paths`, grouped and ordered.

    Parameters
    ----------
    paths
        Files and/or folders (recursed; hidden entries skipped). DICOMDIR files are followed.
    progress
        Called as ``progress(done, total)`` after each file; returning ``False`` cancels the scan (the
        result then holds what was read so far and ``cancelled`` is True).
    on_first
        Called with the first file (in walk order: folders and names sorted) that reads as an image, before
        the other files are read, when more than one file was found -- a viewer shows it while the rest of
        the headers are read (ordering needs them all). Up to :data:`FIRST_TRIES` files are tried; the
        instance is reused in the result, not read twice.

    Returns
    -------
    ScanResult
        ``studies`` (patient -> study -> series -> instances in display order), ``non_images``
        (presentation states and structured reports, by SOP Class UID) and ``skipped`` files with the
        one-line reason each (not an image, truncated, no Pixel Data...).
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    result = ScanResult()
    files = _walk(paths, result.skipped)
    instances: list[Instance] = []
    total = len(files)
    early: dict[int, Instance | BaseException] = {}
    if on_first is not None and total > 1:
        for i, path in enumerate(files[:FIRST_TRIES]):
            try:
                first_instance = read_instance(path)
            except Exception as exc:  # recorded below, in order, like any other file
                early[i] = exc
                continue
            early[i] = first_instance
            on_first(first_instance)
            break
    for done, path in enumerate(files, start=1):
        try:
            got = early.pop(done - 1, None)
            if isinstance(got, BaseException):
                raise got
            instances.append(got if got is not None else read_instance(path))
        except ReadError as exc:
            found = _non_image(path)
            if found is not None:
                result.non_images.append(found)
            else:
                result.skipped.append(Skipped(path, exc.reason))
        except RecursionError:
            result.skipped.append(Skipped(path, "unreadable: data nested too deeply"))
        except Exception as exc:  # a reader bug on one odd file must not abort a folder scan
            result.skipped.append(Skipped(path, f"unreadable: {error_line(exc)}"))
        if progress is not None and progress(done, total) is False:
            result.cancelled = True
            break
    result.studies = _group(instances)
    return result
