"""The frames of a series for display: a series flattened to frames, with a thread-safe pixel cache (Qt-free).

A :class:`FrameSource` wraps a :class:`medviewer.io.Series` (or a single instance): frame ``k`` is
``(instance, frame_index)`` over all instances in display order and all frames of multi-frame
instances. Stored pixels are decoded by worker threads (:meth:`decode`) and cached; the GUI thread
only reads the cache (:meth:`cached`) and never decodes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["FrameSource", "valid_spacing", "frame_identity", "instance_identity"]


def valid_spacing(spacing: Any) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` when both are finite and positive, else None (e.g. PixelSpacing 0\\0)."""
    try:
        r, c = float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(r) and np.isfinite(c)) or r <= 0 or c <= 0:
        return None
    return r, c


class FrameSource:
    """The frames of one series, their display pipelines and a bounded cache of stored pixels.

    Parameters
    ----------
    instances
        Instances in display order (:attr:`medviewer.io.Series.instances`).
    series
        The :class:`medviewer.io.Series` they came from, if any (for its UID and description).
    max_cached_bytes
        Upper bound of the pixel cache (least recently used frames are dropped).
    """

    def __init__(self, instances: list[Any], series: Any = None, max_cached_bytes: int = 1 << 30) -> None:
        if not instances:
            raise ValueError("a series needs at least one instance")
        self.series = series
        self.instances = list(instances)
        self.frames: list[tuple[Any, int]] = [
            (inst, f) for inst in self.instances for f in range(max(1, int(getattr(inst, "number_of_frames", 1) or 1)))
        ]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._max = int(max_cached_bytes)
        self._pipelines: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def uid(self) -> str:
        """Series Instance UID (or the first file's path for a raster image)."""
        uid = getattr(self.series, "series_instance_uid", None) or getattr(self.instances[0], "series_instance_uid", "")
        return str(uid or self.instances[0].path)

    def instance(self, k: int) -> Any:
        """The :class:`medviewer.io.Instance` holding frame ``k``."""
        return self.frames[k][0]

    def pipeline(self, k: int) -> Any:
        """The :class:`medviewer.imaging.DisplayPipeline` of frame ``k`` (built once per instance and frame)."""
        from medviewer.imaging import DisplayPipeline

        inst, frame = self.frames[k]
        key = (id(inst), frame)  # enhanced multi-frame: rescale/window may differ per frame
        with self._lock:
            p = self._pipelines.get(key)
        if p is None:
            p = DisplayPipeline.from_instance(inst, frame)
            with self._lock:
                self._pipelines[key] = p
        return p

    def cached(self, k: int) -> np.ndarray | None:
        """Stored pixels of frame ``k`` if decoded, else None (cheap; GUI thread)."""
        with self._lock:
            a = self._cache.get(k)
            if a is not None:
                self._cache.move_to_end(k)
            return a

    def decode(self, k: int) -> np.ndarray:
        """Decode frame ``k`` (worker thread), cache and return its stored pixels. Raises ReadError."""
        a = self.cached(k)
        if a is not None:
            return a
        inst, f = self.frames[k]
        a = inst.stored_pixels(f)
        self.pipeline(k)
        with self._lock:
            if k not in self._cache:
                self._cache[k] = a
                self._bytes += a.nbytes
                while self._bytes > self._max and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._bytes -= old.nbytes
        return a

    def n_cached(self) -> int:
        """How many frames are decoded and cached."""
        with self._lock:
            return len(self._cache)

    def spacing(self, k: int) -> tuple[float, float] | None:
        """``(row_mm, col_mm)`` of frame ``k`` (Pixel Spacing, PS3.3 C.7.6.2.1.1), None when absent or invalid."""
        return valid_spacing(getattr(self.instance(k), "pixel_spacing", None))

    def index_of(self, instance: Any, frame: int = 0) -> int | None:
        """Index ``k`` of ``(instance, frame)`` in display order, matched by SOP Instance UID (else by path);
        None when the series does not hold it."""
        want = instance_identity(instance)
        for k, (inst, f) in enumerate(self.frames):
            if f == frame and instance_identity(inst) == want:
                return k
        return None

    def adopt(self, other: FrameSource) -> int:
        """Take over the decoded pixels and pipelines ``other`` holds for frames this source has too (the
        same SOP Instance and frame), e.g. from the one-image preview shown while the folder scan was still
        running; returns how many frames were adopted."""
        n = 0
        for j, (inst, f) in enumerate(other.frames):
            a = other.cached(j)
            k = self.index_of(inst, f)
            if a is None or k is None:
                continue
            with self._lock:
                if k not in self._cache:
                    self._cache[k] = a
                    self._bytes += a.nbytes
                    n += 1
                pipe = other._pipelines.get((id(inst), f))
                if pipe is not None:
                    self._pipelines.setdefault((id(self.frames[k][0]), f), pipe)
        return n


def instance_identity(inst: Any) -> str:
    """The SOP Instance UID of ``inst`` (``"file:<path>"`` for a PNG/JPEG, which has none)."""
    return str(getattr(inst, "sop_instance_uid", "") or f"file:{getattr(inst, 'path', '')}")


def frame_identity(source: FrameSource, k: int) -> tuple[str, int]:
    """``(SOP Instance UID, frame number within the instance)`` of frame ``k`` of ``source``: what a result
    or a measurement belongs to, whichever series or viewport shows it (a PNG/JPEG has no SOP Instance UID:
    ``"file:<path>"`` stands for it)."""
    inst, f = source.frames[k]
    return instance_identity(inst), int(f)
