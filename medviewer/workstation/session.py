"""The reading session, Qt-free: the opened studies, their frames, measurements and AI results.

A :class:`ReadingSession` is the model the workstation's views observe (the napari / 3D Slicer way: the
logic lives outside the widgets). It holds

* the studies a folder scan (:func:`medviewer.io.scan`) found, and one
  :class:`~medviewer.workstation.frames.FrameSource` per series, by series key (the Series Instance UID,
  PS3.3 C.7.3.1; ``"file:<path>"`` for a PNG/JPEG);
* a one-image *preview* of a folder while its scan is still running (:meth:`ReadingSession.preview`), which
  the full series replaces when the scan ends -- the reader sees an image at once, not after every header of
  the folder has been read;
* the measurements drawn on each frame, by (series key, frame index) (:class:`Measurements`: every viewport
  showing a frame observes its ``measurement_added``/``measurement_removed`` events);
* a thumbnail per series (:meth:`ReadingSession.set_thumbnail`), for the study browser;
* AI results by :class:`PredictionKey` -- SOP Instance UID, frame number and the SHA-256 of the model that
  produced them, so a result is never shown as another model's.

Changes are announced with `psygnal <https://psygnal.readthedocs.io>`_ events (:class:`SessionEvents`);
they are emitted in the thread that made the change (a worker for scans and inference), so a Qt view relays
them to its GUI thread.

Example
-------
>>> from medviewer.io import scan  # doctest: +SKIP
>>> s = ReadingSession()  # doctest: +SKIP
>>> s.events.series_added.connect(lambda key, src: print(key, len(src)))  # doctest: +SKIP
>>> s.add_scan(scan("study/"))  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from psygnal import Signal, SignalGroup

from medviewer.workstation.frames import FrameSource, frame_identity, instance_identity

__all__ = ["ReadingSession", "SessionEvents", "Measurements", "MeasurementEvents", "PredictionKey", "PredictionEntry",
           "series_key"]

#: a frame of the session: (series key, frame index from 0), as :meth:`ViewportModel.frame_uid` gives it
FrameUid = tuple[str, int]


def series_key(series: Any) -> str:
    """A key unique within the session: the Series Instance UID, else ``"file:<first file's path>"``."""
    uid = getattr(series, "series_instance_uid", "") or ""
    first = series.instances[0].path if getattr(series, "instances", None) else ""
    return str(uid) if uid else f"file:{first}"


class PredictionKey(NamedTuple):
    """What an AI result belongs to: one frame of one SOP Instance, scored by one model (by its weights)."""

    sop_instance_uid: str  #: SOP Instance UID (0008,0018); ``"file:<path>"`` for a PNG/JPEG
    frame: int  #: frame number within the instance, from 0
    model_sha256: str  #: SHA-256 of the model's ``model.onnx`` (its card's ``sha256``)


@dataclass
class PredictionEntry:
    """One AI result as the workstation keeps it.

    Attributes
    ----------
    key
        :class:`PredictionKey`.
    prediction
        :class:`medviewer.inference.Prediction`, after the intended-use policy ran (``applicability``: a typed
        :class:`~medviewer.inference.applicability.Assessment`).
    provider
        The execution provider that actually ran the model, e.g. ``"CPUExecutionProvider"``.
    note
        ``(text, is_warning)``: the session's CUDA fallback warning (True) or notice (False); text None if none.
    package
        The :class:`medviewer.inference.ModelPackage` that produced it.
    """

    key: PredictionKey
    prediction: Any
    provider: str
    note: tuple[str | None, bool]
    package: Any

    def summary(self) -> str:
        """The one-line verdict on the image, for its viewport and the status bar, with the model's probability:
        ``"<model>: flagged pneumonia (P=0.99)"``, ``"<model>: no finding at the operating point (pneumonia
        P=0.12)"`` or ``"<model>: outside intended use: <reasons>"`` (no probability is shown then)."""
        pred, card = self.prediction, self.package.card
        name = card.name
        app = pred.applicability
        if app is not None and app.withheld:  # the one withhold rule (Assessment.withheld)
            return f"{name}: outside intended use: " + "; ".join(app.reasons)
        scores = getattr(pred, "scores", {}) or {}
        if pred.flagged:
            return f"{name}: flagged " + ", ".join(
                f"{lab} (P={scores[lab]:.2f})" if lab in scores else lab for lab in pred.flagged)
        positive = [lab for lab in card.positive_labels if lab in scores]
        top = max(positive, key=scores.__getitem__) if positive else None
        return f"{name}: no finding at the operating point" + ("" if top is None else f" ({top} P={scores[top]:.2f})")


class SessionEvents(SignalGroup):
    """Events of a :class:`ReadingSession` (psygnal; emitted in the thread that made the change)."""

    study_opened = Signal(object)  #: a :class:`medviewer.io.Study` seen for the first time
    series_added = Signal(str, object)  #: series key, its :class:`FrameSource` (new, or replacing a preview)
    preview_added = Signal(str, object)  #: series key, a one-image :class:`FrameSource` shown while scanning
    prediction_added = Signal(object)  #: a :class:`PredictionEntry`
    thumbnail_added = Signal(str, object)  #: series key, its thumbnail (uint8 ``(h, w)`` or ``(h, w, 3)``)
    measurement_added = Signal(object, object)  #: frame ``(series key, frame index)``, the measurement
    measurement_removed = Signal(object, object)  #: frame ``(series key, frame index)``, the measurement


class MeasurementEvents(SignalGroup):
    """The events of a :class:`Measurements` store used on its own (a session's store uses :class:`SessionEvents`)."""

    measurement_added = Signal(object, object)  #: frame ``(series key, frame index)``, the measurement
    measurement_removed = Signal(object, object)  #: frame ``(series key, frame index)``, the measurement


class Measurements(Mapping):
    """Measurements by frame: ``(series key, frame index) -> [measurement, ...]`` (read-only mapping; a list
    copy per frame), changed only through :meth:`add` and :meth:`remove`, which emit ``measurement_added`` /
    ``measurement_removed`` on :attr:`events`. A measurement is any object (the GUI's
    :class:`medviewer.gui.measure.Measurement`: shape and two points in image pixel coordinates).

    Parameters
    ----------
    events
        The group to emit on, with ``measurement_added`` and ``measurement_removed`` signals (the session's
        :class:`SessionEvents`); default a new :class:`MeasurementEvents`.

    It also knows which series hold measurements the reader has not saved (:meth:`unsaved_series`): a
    reader's add or remove marks the series, :meth:`mark_saved` clears it once its reading state is written,
    and what a saved presentation state brings or takes back (``loaded=True``) does not count, so closing the
    workstation can ask before anything the reader made is lost.

    Thread-safe; events are emitted in the thread that made the change, after the change.
    """

    def __init__(self, events: Any = None) -> None:
        self.events = events if events is not None else MeasurementEvents()
        self._by_frame: dict[FrameUid, list[Any]] = {}
        self._dirty: set[str] = set()
        self._lock = threading.RLock()

    def __getitem__(self, uid: FrameUid) -> list[Any]:
        with self._lock:
            return list(self._by_frame[uid])

    def __iter__(self) -> Iterator[FrameUid]:
        with self._lock:
            return iter(list(self._by_frame))

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_frame)

    def add(self, uid: FrameUid, measurement: Any, *, loaded: bool = False) -> None:
        """Add ``measurement`` to frame ``uid``; emits ``measurement_added(uid, measurement)``. ``loaded``: it
        comes from a saved reading state (the series is not marked unsaved)."""
        uid = (str(uid[0]), int(uid[1]))
        with self._lock:
            self._by_frame.setdefault(uid, []).append(measurement)
            if not loaded:
                self._dirty.add(uid[0])
        self.events.measurement_added.emit(uid, measurement)

    def remove(self, uid: FrameUid, measurement: Any = None, *, loaded: bool = False) -> list[Any]:
        """Remove ``measurement`` from frame ``uid`` (``None``: all of the frame's); returns what was removed
        (empty when nothing matched) and emits ``measurement_removed(uid, m)`` for each. ``loaded``: a saved
        state's measurements withdrawn (the series is not marked unsaved)."""
        uid = (str(uid[0]), int(uid[1]))
        with self._lock:
            items = self._by_frame.get(uid, [])
            gone = list(items) if measurement is None else [m for m in items if m is measurement]
            kept = [m for m in items if all(m is not g for g in gone)]
            if kept:
                self._by_frame[uid] = kept
            else:
                self._by_frame.pop(uid, None)
            if gone and not loaded:
                self._dirty.add(uid[0])
        for m in gone:
            self.events.measurement_removed.emit(uid, m)
        return gone

    def unsaved_series(self) -> list[str]:
        """Keys of the series whose measurements the reader changed since they were last saved, sorted."""
        with self._lock:
            return sorted(self._dirty)

    def mark_saved(self, series_key: str) -> None:
        """The reading state of ``series_key`` was written: its measurements are saved."""
        with self._lock:
            self._dirty.discard(str(series_key))


class ReadingSession:
    """Opened studies, their frame sources by series key, measurements and AI results (see the module doc).

    Thread-safe: scans and inference add to it from worker threads while the GUI thread reads it.
    """

    def __init__(self) -> None:
        self.events = SessionEvents()
        self.studies: list[Any] = []
        self.sources: dict[str, FrameSource] = {}
        self.previews: dict[str, FrameSource] = {}
        #: measurements by (series key, frame index); every viewport observes their events and draws those of
        #: the frame it shows, so every viewport showing an image shows its measurements
        self.measurements = Measurements(self.events)
        #: thumbnails by series key (:meth:`set_thumbnail`)
        self.thumbnails: dict[str, Any] = {}
        self._predictions: dict[PredictionKey, PredictionEntry] = {}
        self._lock = threading.RLock()

    # -- studies and series ----------------------------------------------------------------------------
    def preview(self, instance: Any) -> tuple[str, FrameSource]:
        """A one-image :class:`FrameSource` of ``instance`` (a :class:`medviewer.io.Instance` read while the folder
        scan goes on), its first frame decoded here (call it from a worker thread); emits ``preview_added``.

        Raises
        ------
        medviewer.errors.ReadError
            The pixels cannot be decoded.
        """
        src = FrameSource([instance])
        src.decode(0)
        key = str(getattr(instance, "series_instance_uid", "") or "") or f"file:{instance.path}"
        with self._lock:
            if key in self.sources:  # already open: nothing to preview
                return key, self.sources[key]
            self.previews[key] = src
        self.events.preview_added.emit(key, src)
        return key, src

    def add_scan(self, result: Any) -> list[str]:
        """Add the studies of a :class:`medviewer.io.ScanResult`; returns the keys of the series not open before,
        in the scan's order. A series previewed while scanning gets its full source, which takes over the
        preview's decoded pixels (``series_added`` is emitted for it too)."""
        new: list[str] = []
        added: list[tuple[str, FrameSource]] = []
        opened: list[Any] = []
        with self._lock:
            known = {getattr(s, "study_instance_uid", None) for s in self.studies}
            for st in getattr(result, "studies", []) or []:
                if st.study_instance_uid not in known or not st.study_instance_uid:
                    self.studies.append(st)
                    opened.append(st)
                for se in st.series:
                    key = series_key(se)
                    old = self.sources.get(key)
                    if old is not None:  # more instances of an open series: one series with all of them
                        merged = self._merged(old, se)
                        if merged is not None:
                            self.sources[key] = merged
                            new.append(key)
                            added.append((key, merged))
                        continue
                    src = FrameSource(list(se.instances), se)
                    pre = self.previews.pop(key, None)
                    if pre is not None:
                        src.adopt(pre)
                    self.sources[key] = src
                    new.append(key)
                    added.append((key, src))
        for st in opened:
            self.events.study_opened.emit(st)
        for key, src in added:
            self.events.series_added.emit(key, src)
        return new

    @staticmethod
    def _merged(old: FrameSource, series: Any) -> FrameSource | None:
        """``old`` plus the instances of ``series`` it lacks (by SOP Instance UID), re-ordered as a scan orders a
        series (:func:`medviewer.io.scan.order_instances`), with ``old``'s decoded pixels; None when nothing is new."""
        from medviewer.io.scan import order_instances

        have = {instance_identity(i) for i in old.instances}
        extra = [i for i in series.instances if instance_identity(i) not in have]
        if not extra:
            return None
        ordered = order_instances(list(old.instances) + extra)[0]
        src = FrameSource(ordered, series)
        src.adopt(old)
        return src

    def source(self, key: str) -> FrameSource | None:
        """The frame source of series ``key`` (the preview while its scan runs), or None."""
        with self._lock:
            return self.sources.get(key) or self.previews.get(key)

    def set_thumbnail(self, key: str, image: Any) -> None:
        """Keep ``image`` (uint8 ``(h, w)`` or ``(h, w, 3)``, a small rendering of series ``key``) as the series'
        thumbnail; emits ``thumbnail_added``."""
        with self._lock:
            self.thumbnails[key] = image
        self.events.thumbnail_added.emit(key, image)

    # -- AI results ------------------------------------------------------------------------------------
    @staticmethod
    def prediction_key(source: FrameSource, k: int, model_sha256: str) -> PredictionKey:
        """The :class:`PredictionKey` of frame ``k`` of ``source`` scored by the model with ``model_sha256``."""
        uid, frame = frame_identity(source, k)
        return PredictionKey(uid, frame, str(model_sha256))

    def add_prediction(self, entry: PredictionEntry) -> None:
        """Keep ``entry`` (replacing an earlier result of the same key); emits ``prediction_added``."""
        with self._lock:
            self._predictions[entry.key] = entry
        self.events.prediction_added.emit(entry)

    def prediction(self, key: PredictionKey | None) -> PredictionEntry | None:
        """The result kept for ``key``, or None."""
        if key is None:
            return None
        with self._lock:
            return self._predictions.get(key)

    def predictions(self) -> list[PredictionEntry]:
        """Every result kept, oldest first."""
        with self._lock:
            return list(self._predictions.values())

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._predictions
