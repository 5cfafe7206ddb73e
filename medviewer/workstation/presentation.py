"""A viewport's reading state to and from DICOM presentation states (Qt-free).

:func:`state_of_viewport` collects what a reader did to the series a :class:`~medviewer.workstation.viewport.
ViewportModel` shows -- its window, rotation and flips, the part of the image on screen, and the measurements
of the session drawn on any frame of that series -- into a
:class:`~medviewer.export.presentation_state.ReadingState`; :func:`write_presentation_state` saves it as a
GSPS next to the study's files. :func:`find_presentation_states` lists the GSPS among opened files (newest
first) and :func:`apply_to_viewport` puts one back: window, geometry and the measurements, on the same images
at the same pixels (so the same mm).

Measurements are duck-typed (``shape`` with a ``value`` of ``distance``/``rect``/``ellipse``, points ``p0`` and
``p1`` in image pixels), as :class:`medviewer.workstation.measure.Measurement` is; the caller passes the factory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medviewer.export.presentation_state import (
    GSPS_SOP_CLASS,
    Annotation,
    PresentationStateError,
    ReadingState,
    build_presentation_state,
    read_presentation_state,
)
from medviewer.workstation.viewport import ViewportModel

__all__ = ["FoundState", "state_of_viewport", "apply_to_viewport", "withdraw", "save_unsaved",
           "write_presentation_state", "find_presentation_states", "latest_for", "states_of_study"]

_SHAPES = ("distance", "rect", "ellipse")


@dataclass
class FoundState:
    """A presentation state found among opened files."""

    path: Path
    state: ReadingState
    study_instance_uid: str
    referenced: frozenset[str]  #: SOP Instance UIDs of the images it applies to

    @property
    def title(self) -> str:
        """``LABEL (YYYY-MM-DD HH:MM, creator)`` for lists and the status bar."""
        c = self.state.created
        when = f"{c[:4]}-{c[4:6]}-{c[6:8]} {c[8:10]}:{c[10:12]}" if len(c) >= 12 else "undated"
        who = f", {self.state.creator}" if self.state.creator else ""
        return f"{self.state.label or 'presentation state'} ({when}{who})"


def state_of_viewport(model: Any, measurements: Any, label_of: Callable[[Any, int, Any], str] | None = None,
                      label: str = "MEASUREMENTS") -> ReadingState:
    """The reading state of the series `model` shows (see the module docstring).

    Parameters
    ----------
    model
        A :class:`~medviewer.workstation.viewport.ViewportModel` with a source.
    measurements
        The session's :class:`~medviewer.workstation.session.Measurements` (by ``(series key, frame)``).
    label_of
        ``label_of(measurement, frame_index, source) -> str``: the text saved with each measurement.

    Raises
    ------
    ValueError
        The viewport shows nothing.
    """
    source, key = model.source, model.source_key
    if source is None:
        raise ValueError("the viewport shows no image")
    s = model.state
    rotation, flip_h = _to_dicom(int(s.rotation), bool(s.flip_h), bool(s.flip_v))
    w, h = model.view_size
    corners = [model.to_image(x, y) for x, y in ((0, 0), (w, 0), (0, h), (w, h))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    state = ReadingState(window=(float(s.center_w), float(s.width_w)) if s.width_w is not None else None,
                         rotation=rotation, flip_h=flip_h, label=label,
                         displayed_area=(min(xs), min(ys), max(xs), max(ys)) if w > 1 and h > 1 else None)
    for (k_key, k), items in ((uid, measurements[uid]) for uid in list(measurements)):
        if k_key != key or not 0 <= k < len(source):
            continue
        inst, frame = source.frames[k]
        for m in items:
            shape = str(getattr(m.shape, "value", m.shape))
            if shape not in _SHAPES:
                continue
            text = label_of(m, k, source) if label_of is not None else ""
            state.annotations.append(Annotation(shape, [tuple(m.p0), tuple(m.p1)], str(inst.sop_instance_uid),
                                                int(frame), text))
    return state


def write_presentation_state(model: Any, measurements: Any, folder: str | Path | None = None,
                             label_of: Callable[[Any, int, Any], str] | None = None, creator: str = "") -> Path:
    """Save the reading state of the series `model` shows as a GSPS file; returns its path.

    `folder` defaults to the folder of the series' first file (the study's folder, where
    :func:`find_presentation_states` finds it when the study is opened again). Every image of the series is
    referenced, so the window applies to all of them.

    Raises
    ------
    ValueError
        The viewport shows nothing, or a series without DICOM headers (PNG/JPEG).
    medviewer.export.presentation_state.PresentationStateError
        highdicom or the inputs cannot make a valid object.
    OSError
        The file cannot be written.
    """
    state = state_of_viewport(model, measurements, label_of)
    state.creator = creator
    source = model.source
    headers = [inst.dataset for inst in source.instances if getattr(inst, "dataset", None) is not None]
    if not headers:
        raise ValueError("the series has no DICOM headers (PNG/JPEG): a presentation state cannot reference it")
    ds = build_presentation_state(headers, state)
    out_dir = Path(folder) if folder is not None else Path(source.instances[0].path).parent
    path = out_dir / f"PR_{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def apply_to_viewport(found: FoundState, model: Any, measurements: Any,
                      make: Callable[[str, tuple[float, float], tuple[float, float]], Any],
                      keep: list[tuple[tuple[str, int], Any]] | None = None) -> dict[str, int]:
    """Apply a presentation state to the series `model` shows: its measurements are added to the session on
    the frames they belong to (matched by SOP Instance UID and frame), then its window, rotation, flip and
    displayed area are set on the viewport. ``keep``, when given, receives ``((series key, frame), measurement)``
    for each measurement added (for :func:`withdraw` when another state is chosen).

    Returns
    -------
    dict
        ``added`` measurements and ``skipped`` annotations (other series' images, text, other graphics).
    """
    source, key = model.source, model.source_key
    added = skipped = 0
    frames = {(str(inst.sop_instance_uid), int(f)): k for k, (inst, f) in enumerate(source.frames)}
    for a in found.state.annotations:
        k = frames.get((a.sop_instance_uid, a.frame))
        if k is None or a.kind not in _SHAPES:
            skipped += 1
            continue
        m = make(a.kind, a.points[0], a.points[1])
        measurements.add((key, k), m, loaded=True)
        if keep is not None:
            keep.append(((key, k), m))
        added += 1
    st = found.state
    if st.window is not None:
        model.set_window(float(st.window[0]), max(1.0, float(st.window[1])))
    model.state.rotation, model.state.flip_h, model.state.flip_v = _from_dicom(int(st.rotation), bool(st.flip_h))
    if st.displayed_area is not None:
        model.state.centre_on(st.displayed_area, *model.view_size, fill=1.0)
    model.view_changed.emit()
    return {"added": added, "skipped": skipped}


def withdraw(measurements: Any, items: Iterable[tuple[tuple[str, int], Any]]) -> int:
    """Remove the measurements a presentation state added (``keep`` of :func:`apply_to_viewport`) from the
    session; those the reader drew since stay. Returns how many were removed."""
    return sum(len(measurements.remove(uid, m, loaded=True)) for uid, m in items)


def save_unsaved(measurements: Any, sources: Mapping[str, Any], models: Iterable[Any],
                 label_of: Callable[[Any, int, Any], str] | None = None) -> tuple[list[Path], list[str]]:
    """Write a presentation state for every series with unsaved measurements
    (:meth:`~medviewer.workstation.session.Measurements.unsaved_series`), each into its series' folder, and
    mark it saved.

    A series shown in one of ``models`` (viewport models) is saved with that viewport's display state (window,
    rotation, flip, displayed area); one shown nowhere with a fresh model on ``sources[key]`` (its file window,
    no rotation). Returns the paths written and one line per series that could not be saved (e.g. PNG/JPEG
    images, which a presentation state cannot reference, or an unwritable folder); those stay unsaved.
    """
    shown = {m.source_key: m for m in models if getattr(m, "source", None) is not None}
    written: list[Path] = []
    problems: list[str] = []
    for key in measurements.unsaved_series():
        model = shown.get(key)
        if model is None:
            source = sources.get(key)
            if source is None:
                problems.append(f"{key}: the series is no longer open")
                continue
            model = ViewportModel()
            model.set_source(source, key)
        try:
            written.append(write_presentation_state(model, measurements, None, label_of))
        except (ValueError, OSError, PresentationStateError) as exc:
            problems.append(f"{_series_name(model)}: {exc}")
            continue
        measurements.mark_saved(key)
    return written, problems


def _series_name(model: Any) -> str:
    inst = model.source.instance(0) if model.source is not None and len(model.source) else None
    desc = str(getattr(inst, "series_description", "") or "") if inst is not None else ""
    return desc or model.source_key


def _to_dicom(rotation: int, flip_h: bool, flip_v: bool) -> tuple[int, bool]:
    """The viewport's flips-then-rotation -> GSPS rotation-then-horizontal-flip (PS3.3 C.10.6).

    A vertical flip is a horizontal flip followed by a half turn; a horizontal flip followed by a clockwise
    rotation r equals the rotation -r followed by the flip."""
    rotation %= 360
    if flip_v:
        flip_h, rotation = not flip_h, (rotation + 180) % 360
    return ((-rotation) % 360 if flip_h else rotation), flip_h


def _from_dicom(rotation: int, flip_h: bool) -> tuple[int, bool, bool]:
    """GSPS rotation and flip -> the viewport's ``(rotation, flip_h, flip_v)`` (the inverse of :func:`_to_dicom`)."""
    rotation = int(rotation) % 360
    return ((-rotation) % 360 if flip_h else rotation), flip_h, False


def find_presentation_states(paths: Iterable[str | Path], cancel: Callable[[], bool] | None = None) -> list[FoundState]:
    """The Grayscale Softcopy Presentation States among the files under `paths`, newest first. Unreadable
    files and other objects are passed over."""
    import pydicom

    found: list[FoundState] = []
    for f in _files(paths):
        if cancel is not None and cancel():
            break
        try:
            with f.open("rb") as fh:
                if fh.read(132)[128:132] != b"DICM":
                    continue
            meta = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            if str(meta.get("SOPClassUID", "")) != GSPS_SOP_CLASS:
                continue
            ds = pydicom.dcmread(f)
            state = read_presentation_state(ds)
            refs = frozenset(str(i.ReferencedSOPInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])
                             for i in s.get("ReferencedImageSequence", []))
        except Exception:  # noqa: BLE001 - a broken file is passed over, never the whole search
            continue
        found.append(FoundState(f, state, str(ds.get("StudyInstanceUID", "")), refs))
    found.sort(key=lambda s: s.state.created, reverse=True)
    return found


def latest_for(found: Iterable[FoundState], sop_instance_uids: Iterable[str]) -> FoundState | None:
    """The newest presentation state that applies to any of these images, or None."""
    wanted = set(sop_instance_uids)
    hits = [s for s in found if s.referenced & wanted]
    return max(hits, key=lambda s: s.state.created) if hits else None


def states_of_study(found: Iterable[FoundState], study_instance_uid: str) -> list[FoundState]:
    """The presentation states of one study (by Study Instance UID), newest first."""
    return sorted((s for s in found if s.study_instance_uid == study_instance_uid), key=lambda s: s.state.created,
                  reverse=True)


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
