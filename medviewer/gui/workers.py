"""Background work of the Qt views: scanning, decoding/prefetching, thumbnails (inference and model scans run
on the :class:`~medviewer.workstation.ai.AiController`'s ``concurrent.futures`` workers).

Each job is a :class:`Task` (a ``QRunnable``) run on a ``QThreadPool``; results come back to the GUI
thread through queued signals of :class:`TaskSignals`. A task can be cancelled: it stops at its next
check point and its result is never delivered.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Signal

from medviewer.errors import DEBUG_ENV, MedViewerError, error_line

__all__ = ["TaskSignals", "Task", "FnTask", "PrefetchTask", "WORKER_MODULES", "warm_imports", "DEBUG_ENV"]

#: what the worker threads use (scan, decoding, thumbnails; the AI controller's model scan, validation,
#: sessions, scoring, intended use). Imported by one thread (the AI controller's model thread, first thing
#: after the window is built) while every worker task waits for it (:meth:`Task.run`): Python
#: imports one module at a time per module lock, and two threads importing modules that import each other
#: can see a partially initialised module (``ImportError: cannot import name 'import_string' from
#: partially initialized module 'pydantic._internal._validators'`` once showed as "Model not loaded").
WORKER_MODULES = (
    "numpy", "numpy.random", "numpy.ma", "cv2", "pydicom", "pydantic", "platformdirs", "pwd",
    "medviewer.io", "medviewer.io.scan", "medviewer.imaging", "medviewer.workstation.frames",
    "medviewer.inference.card", "medviewer.inference.ood", "medviewer.inference.package",
    "medviewer.inference.registry", "medviewer.inference.session", "medviewer.inference.batch",
    "medviewer.inference.heatmap", "medviewer.inference.regions", "medviewer.workstation.intended_use",
    "medviewer.export.dicom_ai",  # reading a study's AI results (DICOM SR) from a worker
)
_warm_lock = threading.Lock()
_warmed = False


def warm_imports() -> float:
    """Import :data:`WORKER_MODULES` and onnxruntime (through :mod:`medviewer.inference._ort`, which sets its
    log level) in the calling thread; a second caller waits until the first is done. Idempotent; returns the
    seconds it took (about 0.4 s on the first call, 0 afterwards). The window runs it on the AI controller's
    model thread before the model scan (:meth:`AiController.prepare`), so the GUI thread never waits for it.

    A module that fails to import (e.g. onnxruntime missing) is left for the worker that needs it to
    report as a one-line error; nothing is raised here.
    """
    global _warmed
    import importlib
    import time

    t0 = time.perf_counter()
    with _warm_lock:
        if _warmed:
            return 0.0
        for name in WORKER_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:  # reported by the worker that needs it
                pass
        try:
            from medviewer.inference._ort import _onnxruntime

            _onnxruntime()
        except ImportError:
            pass
        _warmed = True
    return time.perf_counter() - t0


class TaskSignals(QObject):
    """Signals of a task (created in, and delivered to, the GUI thread)."""

    progress = Signal(int, int)  # done, total
    item = Signal(object)  # intermediate result (e.g. a decoded frame index)
    result = Signal(object)  # final result (not emitted when cancelled or failed)
    failed = Signal(str)  # one-line reason
    frameFailed = Signal(int, str)  # noqa: N815 - frame index, one-line reason (prefetch)
    finished = Signal()  # always, last


class Task(QRunnable):
    """Base class: implement :meth:`work`; call :meth:`check` at safe points to honour cancellation."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.setAutoDelete(False)
        self.name = name or type(self).__name__
        self.signals = TaskSignals()
        self._cancel = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    class Cancelled(Exception):
        pass

    def check(self) -> None:
        if self._cancel.is_set():
            raise Task.Cancelled

    def work(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def emit(self, signal_name: str, *args: Any) -> None:
        """Emit one of :attr:`signals` from the worker; a no-op once the receiver side is gone
        (application shutting down), so a late worker never raises."""
        try:
            getattr(self.signals, signal_name).emit(*args)
        except RuntimeError:  # "Signal source has been deleted"
            self._cancel.set()

    def run(self) -> None:  # worker thread
        try:
            warm_imports()  # waits while another thread imports what workers use (returns at once afterwards)
            res = self.work()
        except Task.Cancelled:
            pass
        except Exception as exc:  # reported as a one-line reason; the app goes on
            if not isinstance(exc, MedViewerError):  # unexpected: one line on stderr, the trace when debugging
                if os.environ.get(DEBUG_ENV):
                    traceback.print_exc()
                else:
                    print(f"medviewer: internal error in the {self.name} task: {error_line(exc)} "
                          f"(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
            if not self.cancelled:
                self.emit("failed", error_line(exc))
        else:
            if not self.cancelled:
                self.emit("result", res)
        finally:
            self.done.set()
            self.emit("finished")


class FnTask(Task):
    """Run ``fn(task)`` in the pool; ``fn`` may call ``task.check()`` and ``task.signals.progress``."""

    def __init__(self, fn: Callable[[Task], Any], name: str = "") -> None:
        super().__init__(name)
        self.fn = fn

    def work(self) -> Any:
        return self.fn(self)


class PrefetchTask(Task):
    """Decode the frames of a :class:`~medviewer.workstation.frames.FrameSource`, wanted frame first.

    Emits ``item(k)`` for every decoded frame (the viewport redraws when ``k`` is the one it shows),
    ``frameFailed(k, reason)`` for a frame that cannot be decoded, and ``progress(n_done, n_frames)``. :meth:`want` moves a frame to the front of the queue
    (scrolling ahead of the prefetch). Decoding errors of one frame are reported and skipped.
    """

    def __init__(self, source: Any, start: int = 0) -> None:
        super().__init__("prefetch")
        self.source = source
        self._wanted = start
        self._lock = threading.Lock()
        self.errors: dict[int, str] = {}

    def want(self, k: int) -> None:
        with self._lock:
            self._wanted = k

    def _order(self, center: int, todo: set[int]) -> int:
        # nearest to the wanted frame, preferring forward (scroll direction of a reader)
        return min(todo, key=lambda k: (abs(k - center) - (0.5 if k > center else 0)))

    def work(self) -> None:
        n = len(self.source)
        todo = set(range(n))
        last_wanted = None
        while todo:
            self.check()
            with self._lock:
                w = self._wanted
            if w != last_wanted and w in todo:
                k = w
            else:
                k = self._order(w, todo)
            last_wanted = w
            todo.discard(k)
            try:
                self.source.decode(k)
            except Exception as exc:  # keep the rest of the series
                self.errors[k] = error_line(exc)
                self.emit("frameFailed", k, error_line(exc))
                continue
            self.emit("item", k)
            self.emit("progress", n - len(todo), n)
