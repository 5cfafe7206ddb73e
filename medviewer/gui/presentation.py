"""Saved reading state in the workstation: File > Save reading state as DICOM, and applying the newest saved
state when a study is opened (thin Qt glue over :mod:`medviewer.workstation.presentation`).

Saving writes a Grayscale Softcopy Presentation State (:mod:`medviewer.export.presentation_state`) of the
active viewport's series -- window, rotation/flip, the part of the image on screen, every measurement on its
frames with its label (length in mm, ROI mean/SD in HU) -- into the folder of the series' files. Opening
files or folders looks for presentation states among them in a worker task; once the series they reference
is shown, the newest is applied (measurements back on the same images at the same pixels, window and
geometry restored) and the status bar names it and how many others were found.

The study browser lists the states of each study, the applied one marked (:meth:`SeriesBrowser.
set_presentation_states`); choosing another there (:func:`choose_state`) withdraws the measurements the
previous one brought to that series (those drawn since stay) and applies the chosen one, loading its series
into the active viewport when no viewport shows it. A state saved here joins the list as the applied one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer

from medviewer.workstation.measure import Measurement, Shape, distance, roi_stats
from medviewer.workstation.presentation import (
    FoundState,
    apply_to_viewport,
    find_presentation_states,
    latest_for,
    withdraw,
    write_presentation_state,
)

__all__ = ["save_reading_state", "save_reading_state_to_pacs", "ask_to_save_unsaved", "find_and_apply",
           "measurement_label", "choose_state", "apply_state"]

#: how long a found state waits for the series it references to be shown (ms)
WAIT_MS = 60_000


def measurement_label(m: Any, k: int, source: Any) -> str:
    """The text saved with a measurement: ``"42.3 mm"``, or a ROI's ``"mean 55.2 SD 10.1 HU"`` when its frame is
    decoded (the ROI's statistics need the frame's modality values)."""
    if m.shape == Shape.DISTANCE:
        value, unit = distance(m.p0, m.p1, source.spacing(k))
        return f"{value:.1f} {unit}"
    stored = source.cached(k)
    if stored is None:
        return ""
    pipe = source.pipeline(k)
    stats = roi_stats(pipe.modality_values(stored), m.shape, m.p0, m.p1, source.spacing(k))
    if stats is None:
        return ""
    units = pipe.units.label
    return f"mean {stats.mean:.1f} SD {stats.sd:.1f}{' ' + units if units else ''}"


def save_reading_state(win: Any, folder: str | Path | None = None) -> Path | None:
    """Save the active viewport's reading state as a GSPS (default: into its series' folder); the path, or None
    after an error reported with :meth:`MainWindow.error`."""
    from medviewer.export.presentation_state import PresentationStateError

    vp = win.active
    if vp.source is None:
        win.set_status("Nothing to save: no image in the active viewport")
        return None
    try:
        path = write_presentation_state(vp.model, win.reading.measurements, folder, measurement_label)
    except (ValueError, OSError, PresentationStateError) as exc:
        win.error("Could not save the reading state", str(exc))
        return None
    win.reading.measurements.mark_saved(vp.source_key)
    win.set_status(f"Reading state saved as DICOM (presentation state): {path}")
    _add_saved(win, path, vp)
    return path


def save_reading_state_to_pacs(win: Any, node: str | None = None) -> Any:
    """File > Save reading state to PACS…: save the active series' reading state as File > Save reading state
    does (into its folder, listed in the browser), then store that presentation state on a PACS node (asked
    for among the saved nodes, or a URL, when ``node`` is None) in a worker task. The outcome is a status line,
    or one dialog with the PACS's reason; the send is audited (``sent``). Returns the task, or None when
    nothing was sent (no node chosen, nothing to save, or the save failed: already reported)."""
    from PySide6.QtWidgets import QInputDialog

    from medviewer.gui.workers import FnTask

    if node is None:
        from medviewer.pacs import load_nodes

        try:
            names = list(load_nodes())
        except Exception:  # noqa: BLE001 - a broken nodes file: a URL can still be typed
            names = []
        node, ok = QInputDialog.getItem(win, "Save reading state to PACS", "PACS node (a saved name or a URL):",
                                        names, 0, True)
        if not ok:
            return None
    node = str(node or "").strip()
    if not node:
        win.set_status("Save reading state to PACS: no PACS node chosen")
        return None
    study = str(getattr(win.active.current_instance(), "study_instance_uid", "") or "")  # of the state saved
    path = save_reading_state(win)
    if path is None:
        return None

    def work(task: Any) -> Any:
        from medviewer.workstation.results import send_files

        return send_files(node, [path], cancel=lambda: task.cancelled)

    def done(report: Any) -> None:
        audit = getattr(win, "audit", None)
        if audit is not None:
            audit.sent(report.destination or node, report.study_uids, report.stored, stored=len(report.stored),
                       failed=len(report.failed), deidentified=False)
        if report.failed:
            win.error("Save reading state to PACS failed", "; ".join(f"{n}: {why}" for n, why in report.failed))
        elif report.stored:
            win.set_status(f"Reading state stored on {report.destination or node} (and saved as {path.name})")

    def failed(reason: str) -> None:  # nothing stored (unreachable, refused): audited as a failed send too
        audit = getattr(win, "audit", None)
        if audit is not None:
            audit.sent(node, [study] if study else [], [], stored=0, failed=1, deidentified=False)
        win.error("Save reading state to PACS failed", reason)

    task = FnTask(work, "send reading state")
    task.signals.result.connect(done)
    task.signals.failed.connect(failed)
    return win.start(task)


def ask_to_save_unsaved(win: Any) -> bool:
    """Before the window closes: when series hold measurements the reader has not saved, ask Save / Discard /
    Cancel. Save writes a presentation state per series into its folder
    (:func:`medviewer.workstation.presentation.save_unsaved`). Returns True when the window may close (nothing
    unsaved, saved, or discarded), False to keep it open (cancelled, or a series could not be saved: the
    reason is shown and nothing is lost). Never asks in a non-interactive (``--screenshot``) window."""
    from PySide6.QtWidgets import QMessageBox

    from medviewer.workstation.presentation import save_unsaved

    unsaved = win.reading.measurements.unsaved_series()
    if not unsaved or not getattr(win, "interactive", True):
        return True
    n = len(unsaved)
    box = QMessageBox(QMessageBox.Warning, "Unsaved measurements",
                      f"Measurements in {n} series have not been saved.", parent=win)
    box.setInformativeText("Save them as DICOM presentation states in their study folders before closing?")
    box.setStandardButtons(QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel)
    box.setDefaultButton(QMessageBox.Save)
    answer = box.exec()
    if answer == QMessageBox.Discard:
        return True
    if answer != QMessageBox.Save:
        return False
    written, problems = save_unsaved(win.reading.measurements, win.reading.sources,
                                     [vp.model for vp in win.viewports], measurement_label)
    if written:
        win.set_status(f"{len(written)} reading state(s) saved as DICOM presentation states, the last: {written[-1]}")
    if problems:
        win.error("Could not save every reading state", "; ".join(problems[:3]) + (
            f" (+{len(problems) - 3} more)" if len(problems) > 3 else "") + ". The window stays open.")
        return False
    return True


def _add_saved(win: Any, path: Path, vp: Any) -> None:
    """List a state just saved in the browser as the one applied to ``vp``'s series (it is what is shown)."""
    try:
        found = find_presentation_states([path])
    except Exception:  # noqa: BLE001 - the file is written; only the listing is missed
        return
    if not found:
        return
    known = [s for s in getattr(win, "presentation_states", []) if s.path != found[0].path]
    win.presentation_states = sorted(known + found, key=lambda s: s.state.created, reverse=True)
    applied = _applied(win)
    old = applied.get(vp.source_key)
    applied[vp.source_key] = (found[0], old[1] if old else [])  # withdrawn with the state they came from
    _refresh_browser(win)


def _applied(win: Any) -> dict[str, tuple[FoundState, list]]:
    """Series key -> (the state applied to it, the measurements it added)."""
    if not hasattr(win, "presentation_applied"):
        win.presentation_applied = {}
    return win.presentation_applied


def _refresh_browser(win: Any) -> None:
    browser = getattr(win, "browser", None)
    if browser is not None and hasattr(browser, "set_presentation_states"):
        browser.set_presentation_states(getattr(win, "presentation_states", []),
                                        [st.path for st, _ in _applied(win).values()])


def apply_state(win: Any, vp: Any, found: FoundState) -> dict[str, int]:
    """Apply ``found`` to the series ``vp`` shows, in place of the state applied to it before (its measurements
    withdrawn); the browser marks it. Returns :func:`apply_to_viewport`'s counts."""
    applied = _applied(win)
    before = applied.get(vp.source_key)
    if before is not None:
        withdraw(win.reading.measurements, before[1])
    items: list = []
    counts = apply_to_viewport(found, vp.model, win.reading.measurements, _make, keep=items)
    applied[vp.source_key] = (found, items)
    _refresh_browser(win)
    vp.update()
    return counts


def choose_state(win: Any, path: str | Path) -> bool:
    """The reader chose the saved state at ``path`` (in the browser): apply it to the viewport showing its series,
    else load that series into the active viewport first. False (and a status line) when it cannot be."""
    found = next((s for s in getattr(win, "presentation_states", []) if str(s.path) == str(path)), None)
    if found is None:
        win.set_status(f"Presentation state {path} is no longer listed")
        return False
    for vp in win.viewports:
        src = vp.source
        if src is not None and vp.has_image() and win.reading.sources.get(vp.source_key) is src and \
                found.referenced & {str(getattr(i, "sop_instance_uid", "")) for i in src.instances}:
            _report(win, found, apply_state(win, vp, found))
            return True
    key = next((k for k, src in win.reading.sources.items()
                if found.referenced & {str(getattr(i, "sop_instance_uid", "")) for i in src.instances}), None)
    if key is None:
        win.set_status(f"Presentation state {found.title}: the images it refers to are not open")
        return False
    vp = win.active
    win.load_series(key, vp)
    timer = QTimer(win)
    waited = [0]

    def attempt() -> None:
        waited[0] += 100
        if vp.source_key == key and vp.has_image():
            _report(win, found, apply_state(win, vp, found))
        elif waited[0] < WAIT_MS and vp.source_key == key:
            return
        timer.stop()
        timer.deleteLater()

    timer.timeout.connect(attempt)
    timer.start(100)
    return True


def _report(win: Any, found: FoundState, counts: dict[str, int]) -> None:
    win.set_status(f"Presentation state {found.title} applied: {counts['added']} measurement(s)")


def _make(kind: str, p0: tuple[float, float], p1: tuple[float, float]) -> Measurement:
    return Measurement(Shape(kind), (float(p0[0]), float(p0[1])), (float(p1[0]), float(p1[1])))


def find_and_apply(win: Any, paths: list[str]) -> None:
    """Look for presentation states under `paths` in a worker; apply the newest to each viewport showing a series
    it references, once that series is shown (see the module docstring)."""
    from medviewer.gui.workers import FnTask

    task = FnTask(lambda t: find_presentation_states(paths, cancel=lambda: t.cancelled), "presentation states")
    task.signals.result.connect(lambda found: _apply_when_shown(win, found))
    win.start(task)


def _apply_when_shown(win: Any, found: list[FoundState]) -> None:
    if not found:
        return
    known: list[FoundState] = getattr(win, "presentation_states", [])
    seen = {s.path for s in known}
    win.presentation_states = sorted(known + [s for s in found if s.path not in seen],
                                     key=lambda s: s.state.created, reverse=True)
    _refresh_browser(win)
    applied: set[tuple[int, int]] = getattr(win, "_presentation_applied", set())
    win._presentation_applied = applied
    timer = QTimer(win)
    waited = [0]

    def attempt() -> None:
        waited[0] += 100
        done_any = False
        for vp in win.viewports:
            src = vp.source
            if src is None or not vp.has_image() or win.loader.scanning or (id(vp), id(src)) in applied:
                continue
            if win.reading.sources.get(vp.source_key) is not src:
                continue  # a preview: wait for the series
            uids = {str(getattr(inst, "sop_instance_uid", "")) for inst in src.instances}
            latest = latest_for(win.presentation_states, uids)
            if latest is None:
                continue
            applied.add((id(vp), id(src)))
            counts = apply_state(win, vp, latest)
            others = sum(1 for s in win.presentation_states if s is not latest and s.referenced & uids)
            win.set_status(f"Presentation state {latest.title} applied: {counts['added']} measurement(s)"
                           + (f"; {others} older one(s) found" if others else ""))
            vp.update()
            done_any = True
        if done_any or waited[0] >= WAIT_MS:
            timer.stop()
            timer.deleteLater()

    timer.timeout.connect(attempt)
    timer.start(100)
    attempt()
