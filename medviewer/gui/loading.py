"""Opening studies in the workstation: folder scan, first-image preview, series into viewports, prefetch.

:class:`SeriesLoader` runs :func:`medviewer.io.scan` in a Qt worker task and adds what it finds to the
window's :class:`~medviewer.workstation.session.ReadingSession`. When a single folder is opened, its first
file is shown at once (:meth:`ReadingSession.preview`, through ``scan(on_first=...)``) while the other
headers are read -- ordering the slices needs them all -- and the full series then replaces the preview on
the same image. Frames are decoded by a :class:`~medviewer.gui.workers.PrefetchTask` per series, the
wanted frame first; thumbnails start once the first image is on screen.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import cv2
from PySide6.QtCore import QObject, QTimer

from medviewer.gui.dialogs import batch_message_box
from medviewer.gui.menus import update_recent_menu
from medviewer.gui.workers import FnTask, PrefetchTask, Task
from medviewer.workstation.session import series_key

__all__ = ["SeriesLoader", "failure_lines"]

#: decode failures of several series arriving within this many ms are reported in one dialog
DECODE_FAILURES_COALESCE_MS = 300


def failure_lines(skipped: list[Any]) -> list[str]:
    """``name: reason`` per skipped file (a scan's :class:`~medviewer.io.scan.Skipped`), printable (a
    non-UTF-8 file name is shown with backslash escapes)."""
    return [f"{_printable(str(s.path))}: {s.reason}" for s in skipped]


def _printable(name: str) -> str:
    """``name`` with the bytes of a non-UTF-8 file name as backslash escapes (Qt and stderr need UTF-8)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class SeriesLoader(QObject):
    """Opens paths into ``win`` (a :class:`~medviewer.gui.main_window.MainWindow`) and keeps its viewports fed.

    Attributes
    ----------
    scanning
        True while a scan runs (a preview may already be shown).
    t_first_image
        Seconds from the last :meth:`open_paths` to its first image on screen (None until then).
    prefetchers
        The :class:`PrefetchTask` of each series key.
    batch_dialog
        The last dialog listing a batch of failures (:func:`~medviewer.gui.dialogs.batch_message_box`), or None.
    warnings
        One-line warnings reported (files skipped from an otherwise opened folder).
    """

    def __init__(self, win: Any) -> None:
        super().__init__(win)
        self.win = win
        self.reading = win.reading
        self.prefetchers: dict[str, PrefetchTask] = {}
        self.scanning = False
        self.t_open: float | None = None
        self.t_first_image: float | None = None
        self._first_image_pending = False
        self._reported: set[str] = set()
        self._pending_thumbs: list[str] = []
        self.batch_dialog: Any = None
        self.warnings: list[str] = []
        self._decode_failures: list[str] = []
        self._decode_timer = QTimer(self)
        self._decode_timer.setSingleShot(True)
        self._decode_timer.setInterval(DECODE_FAILURES_COALESCE_MS)
        self._decode_timer.timeout.connect(self._flush_decode_failures)

    def open_paths(self, paths: list[str]) -> None:
        """Scan files/folders in a worker, add their studies and show the first new series. A single folder's
        first file is shown while the others are read (the series replaces it when ordered)."""
        paths = [str(p) for p in paths if str(p)]
        if not paths:
            return
        win, reading = self.win, self.reading
        first = Path(paths[0])
        win.settings.last_folder = str(first if first.is_dir() else first.parent)
        win.set_status(f"Reading {', '.join(Path(p).name for p in paths[:3])}{'…' if len(paths) > 3 else ''}")
        self.t_open, self.t_first_image = time.perf_counter(), None
        self.scanning = True
        win.browser.observe(reading)  # the browser lists what the session announces (no-op once observing)

        def work(task: Task) -> Any:
            from medviewer.io import scan

            last = [0.0]

            def progress(done: int, total: int) -> None:
                task.check()
                now = time.perf_counter()
                if now - last[0] > 0.05 or done == total:  # a few updates a second, not one per file
                    last[0] = now
                    task.emit("progress", done, total)

            def preview(inst: Any) -> None:
                try:
                    task.emit("item", reading.preview(inst))
                except Exception:  # noqa: BLE001 - the scan reports the file; no preview then
                    pass

            return scan(paths, progress=progress, on_first=preview if len(paths) == 1 else None)

        task = FnTask(work, "scan")
        task.signals.progress.connect(self._on_scan_progress)
        task.signals.item.connect(self._on_preview)
        task.signals.result.connect(lambda res, ps=paths: self._on_scanned(res, ps))
        task.signals.failed.connect(self._on_scan_failed)
        win.start(task)

    def _on_scan_progress(self, done: int, total: int) -> None:
        bar = self.win.progress
        bar.setVisible(True)
        bar.setRange(0, max(total, 1))
        bar.setValue(done)
        bar.setFormat(f"scan {done}/{total}")

    def _on_scan_failed(self, reason: str) -> None:
        self.scanning = False
        self.win.progress.setVisible(False)
        self.win.error("Could not open", reason)

    def _on_preview(self, item: tuple[str, Any]) -> None:
        key, src = item
        if self.reading.sources.get(key) is src:  # already open
            return
        vp = self.win.active
        self._first_image_pending = True
        vp.set_source(src, key)
        vp.on_frame_decoded(0)
        self._after_image_shown(vp)

    def _on_scanned(self, result: Any, paths: list[str]) -> None:
        win = self.win
        self.scanning = False
        win.progress.setVisible(False)
        studies, skipped = list(result.studies), list(result.skipped)
        if not studies:
            if len(skipped) > 1:  # one dialog for the batch, every file listed under its details
                where = paths[0] if len(paths) == 1 else f"{len(paths)} items"
                self._report_batch("Could not open", f"{where}: no readable image; {len(skipped)} files could not "
                                                     f"be opened, e.g. {failure_lines(skipped)[0]}", skipped)
            else:
                reason = failure_lines(skipped)[0] if skipped else "no DICOM, PNG or JPEG image found"
                win.error("Could not open", reason)
            return
        for p in paths:
            win.settings.add_recent(p)
        update_recent_menu(win.menu_bar, win)
        new_keys = self.reading.add_scan(result)  # the browser observes its series_added events
        self._pending_thumbs += new_keys  # started once the first image is on screen
        msg = f"Opened {sum(len(s.series) for s in studies)} series"
        if result.non_images:  # presentation states and SRs: read, applied or listed, not skipped
            msg += f" with {result.non_image_summary()}"
        if skipped:
            first = f"{_printable(Path(str(skipped[0].path)).name)}: {skipped[0].reason}"
            msg += f"; skipped {len(skipped)} file(s), e.g. {first}"
            self._report_batch("Some files could not be opened", f"{len(skipped)} file(s) could not be opened and "
                               f"were skipped, e.g. {first}", skipped, warning=True)
        win.set_status(msg)
        keys = new_keys or [series_key(studies[0].series[0])]
        # first series into the active viewport, further ones into the other visible empty viewports
        visible = [v for v in win.viewports if v.isVisibleTo(win)]
        targets = [win.active] + [v for v in visible if v is not win.active and v.source is None]
        for vp, key in zip(targets, keys, strict=False):
            self.load_series(key, vp, keep=True)
        for vp in win.viewports:  # a preview elsewhere: its full series, on the same image
            if vp.source is not None and self.reading.sources.get(vp.source_key) not in (None, vp.source):
                self.load_series(vp.source_key, vp, keep=True, activate=False)
        win.browser.select(keys[0])
        if not self._first_image_pending:
            self._start_pending_thumbnails()

    def _start_pending_thumbnails(self) -> None:
        keys, self._pending_thumbs = self._pending_thumbs, []
        for key in keys:
            self._start_thumbnail(key)

    def _start_thumbnail(self, key: str) -> None:
        src = self.reading.sources[key]

        def work(task: Task) -> Any:
            k = len(src) // 2
            stored = src.decode(k)
            pipe = src.pipeline(k)
            img = pipe.render(stored, pipe.default_window(stored))
            h, w = img.shape[:2]
            s = 72 / max(h, w)
            return key, cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)

        task = FnTask(work, "thumbnail")
        task.signals.result.connect(lambda r: self.reading.set_thumbnail(*r))  # the browser observes it
        self.win.start(task)

    def load_series(self, key: str, vp: Any = None, keep: bool = False, activate: bool = True) -> None:
        """Show series ``key`` in ``vp`` (default: the active viewport) from its first image and prefetch its frames;
        ``keep``: a viewport showing the series' preview stays on the same image and window; ``activate``: make
        ``vp`` the active viewport."""
        win = self.win
        src = self.reading.sources.get(key)
        if src is None:
            return
        vp = vp or win.active
        if activate:
            win.set_active(vp)
        start, window = 0, None  # the first image in display order, as PACS viewers do
        upgrade = keep and vp.source_key == key and vp.source is not None and vp.source is not src
        if upgrade:
            start = src.index_of(*vp.source.frames[vp.state.frame]) or 0
            window = (vp.state.center_w, vp.state.width_w) if vp.state.width_w is not None else None
        self._first_image_pending = self._first_image_pending or not (upgrade and vp.has_image())
        vp.set_source(src, key, frame=start)
        if window is not None and src.cached(start) is not None:
            vp.on_frame_decoded(start)
            if (vp.state.center_w, vp.state.width_w) != window:  # the reader changed it on the preview
                vp.set_window(*window)
        pf = self.prefetchers.get(key)
        if pf is None or pf.done.is_set() or pf.source is not src:
            pf = PrefetchTask(src, start)
            pf.signals.item.connect(lambda k, key=key: self._on_frame_decoded(key, k))
            pf.signals.progress.connect(lambda d, n, key=key: self._on_prefetch_progress(key, d, n))
            pf.signals.frameFailed.connect(lambda k, reason, key=key: self._on_frame_failed(key, k, reason))
            self.prefetchers[key] = pf
            win.start(pf)
        else:
            pf.want(start)
        if src.cached(vp.state.frame) is not None:
            vp.on_frame_decoded(vp.state.frame)
            self._after_image_shown(vp)
        win.active_changed()

    def want_frame(self, vp: Any, k: int) -> None:
        """``vp`` waits for frame ``k``: decode it next (or say why it cannot be)."""
        pf = self.prefetchers.get(vp.source_key)
        if pf is not None and not pf.done.is_set() and pf.source is vp.source:
            pf.want(k)
        elif vp.source is not None and pf is not None and k in pf.errors:
            vp.message = f"Image {k + 1} could not be decoded: {pf.errors[k]}"
            vp.update()

    def _on_frame_decoded(self, key: str, k: int) -> None:
        for vp in self.win.viewports:
            if vp.source_key == key and vp.state.frame == k and not vp.has_image():
                vp.on_frame_decoded(k)
                self._after_image_shown(vp)

    def _on_frame_failed(self, key: str, k: int, reason: str) -> None:
        shown = [vp for vp in self.win.viewports if vp.source_key == key and vp.state.frame == k]
        for vp in shown:
            vp.message = f"Image {k + 1} could not be decoded"
            vp.update()
        if shown and key not in self._reported:
            self._reported.add(key)
            self._decode_failures.append(reason)  # several series failing at once: one dialog
            if not self._decode_timer.isActive():
                self._decode_timer.start()
        else:
            self.win.set_status(f"Image {k + 1}: {reason}")

    def _flush_decode_failures(self) -> None:
        failures, self._decode_failures = self._decode_failures, []
        if len(failures) == 1:
            self.win.error("Could not decode image", failures[0])
        elif failures:
            self._report_batch("Could not decode images", f"{len(failures)} images could not be decoded, e.g. "
                                                          f"{failures[0]}", failures)

    def _report_batch(self, title: str, line: str, failures: list[Any], warning: bool = False) -> None:
        """One report for a batch of failures: a dialog with the summary ``line`` and every failure under its
        details (stderr in non-interactive runs). An error (``warning=False``) is recorded in the window's
        ``errors`` as :meth:`MainWindow.error` does; a warning (some files of an opened folder) in :attr:`warnings`."""
        win = self.win
        details = [f if isinstance(f, str) else failure_lines([f])[0] for f in failures]
        (self.warnings if warning else win.errors).append(line)
        win.set_status(f"{title}: {line}")
        if getattr(win, "interactive", True):
            if self.batch_dialog is not None:
                try:
                    self.batch_dialog.close()  # a newer batch replaces the last one: never a pile of dialogs
                except RuntimeError:  # already deleted on close
                    pass
            self.batch_dialog = batch_message_box(win, title, line, details, warning=warning)
        else:
            print(f"medviewer: {'warning' if warning else title}: {line}", file=sys.stderr)
            for d in details:
                print(f"  {d}", file=sys.stderr)

    def _after_image_shown(self, vp: Any) -> None:
        if self._first_image_pending and vp.has_image():
            self._first_image_pending = False
            if self.t_open is not None and self.t_first_image is None:
                self.t_first_image = time.perf_counter() - self.t_open
            self.win.firstImageShown.emit()
            if not self.scanning:
                self._start_pending_thumbnails()
        if vp is self.win.active:
            self.win.ai_view.sync()
        self.win.ai_view.maybe_auto_run()

    def _on_prefetch_progress(self, key: str, done: int, total: int) -> None:
        if key != self.win.active.source_key:
            return
        bar = self.win.progress
        bar.setVisible(done < total)
        bar.setRange(0, total)
        bar.setValue(done)
        bar.setFormat(f"loaded {done}/{total}")
