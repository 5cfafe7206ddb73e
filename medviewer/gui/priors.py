"""View > Compare with prior: hang the patient's most recent comparable earlier study beside the current one.

Thin Qt glue over :mod:`medviewer.workstation.priors`: the search (opened studies by Patient ID, and the current
PACS node by Patient ID) and, for a prior found only on the PACS, its retrieval run in a worker task; then the
window switches to a 1x2 layout, CURRENT on the left (the active viewport's series) and PRIOR on the right (the
prior's matching series, on the same relative slice), linked for scroll, zoom/pan and window/level, each labelled
with its Study Date. No prior is one line in the status bar saying why; a failed retrieval is a dialog. The last
outcome's line stays in ``win.prior_message`` (the status bar may show newer news).

The *current PACS node* is ``win.prior_node`` when set, else the node of the PACS dialog when it was opened in
this session, else the only saved node (none saved, or several and no dialog opened: opened studies only).
"""

from __future__ import annotations

from typing import Any

import shiboken6
from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import QLabel

from medviewer.workstation.priors import StudyFacts, fetch_prior, find_priors, format_study_date, prior_series
from medviewer.workstation.session import series_key

__all__ = ["compare_with_prior", "current_node", "hang_prior", "HangLabel", "LINKS"]

#: what the two viewports of a comparison share
LINKS = ("scroll", "zoom", "window")
_COLOURS = {"CURRENT": "#2e7d32", "PRIOR": "#b26a00"}
#: how long the prior's window waits for its first image (ms)
WAIT_MS = 30_000


class HangLabel(QLabel):
    """``CURRENT 2024-05-01`` / ``PRIOR 2023-01-10`` at the top centre of a viewport, below the link badge and the
    corner text (on the image's black surround), removed once the viewport shows another series."""

    def __init__(self, vp: Any, role: str, date: str, key: str) -> None:
        super().__init__(f"{role}  {date}", vp)
        self.vp, self.key, self.role = vp, key, role
        self.setAttribute(Qt.WA_TransparentForMouseEvents, True)
        self.setStyleSheet(f"background: {_COLOURS.get(role, '#444')}; color: white; font-weight: bold;"
                           "padding: 2px 8px; border-radius: 4px;")
        self.adjustSize()
        self._place()
        vp.installEventFilter(self)
        vp.model.source_changed.connect(self._check)  # psygnal: a weak reference to the method
        self.show()

    def _place(self) -> None:
        self.move(max(0, (self.vp.width() - self.width()) // 2), 72)

    def _check(self, *_: Any) -> None:
        if shiboken6.isValid(self) and self.vp.source_key != self.key:
            self.vp.model.source_changed.disconnect(self._check)
            self.vp.removeEventFilter(self)
            self.setParent(None)
            self.deleteLater()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Resize:
            self._place()
        return False


def current_node(win: Any) -> str | None:
    """The PACS node to search for priors (see the module docstring), or None."""
    explicit = getattr(win, "prior_node", None)
    if explicit:
        return str(explicit)
    dialog = getattr(win, "_pacs_dialog", None)
    if dialog is not None and shiboken6.isValid(dialog):
        text = dialog.node.currentText().strip()
        if text:
            return text
    try:
        from medviewer.pacs import load_nodes

        saved = list(load_nodes())
    except Exception:  # noqa: BLE001 - a broken nodes file means no node, not a failed comparison
        return None
    return saved[0] if len(saved) == 1 else None


def compare_with_prior(win: Any) -> None:
    """Find the prior of the active viewport's study and hang it beside it (see the module docstring)."""
    from medviewer.gui.workers import FnTask

    vp = win.active
    src = vp.source
    series = getattr(src, "series", None) if src is not None else None
    if series is None:
        win.set_status("Compare with prior: open a study first" if src is None else
                       "Compare with prior: the folder is still being read")
        return
    studies, node = list(win.reading.studies), current_node(win)
    current_key = vp.source_key

    def work(task: Any) -> Any:
        search = find_priors(series, studies, node=node)
        if search.chosen is None or not search.chosen.remote:
            return search, None, search.chosen
        from medviewer.gui.pacs_dialog import default_download_dir

        task.check()
        # the window closing cancels the task, which stops the retrieval after the instance in flight
        scanned, facts = fetch_prior(search, default_download_dir(), cancel=task._cancel,  # noqa: SLF001
                                     progress=lambda done, total: task.emit("progress", done, total))
        return search, scanned, facts

    task = FnTask(work, "compare with prior")
    task.signals.progress.connect(lambda done, total: _progress(win, done, total))
    task.signals.finished.connect(lambda: win.progress.setVisible(False))
    task.signals.result.connect(lambda res: _found(win, series, current_key, *res))
    task.signals.failed.connect(lambda reason: win.error("Compare with prior", reason))
    win.set_status("Looking for a prior" + (f" (opened studies and {node})" if node else " among the opened studies")
                   + " …")
    win.start(task)


def _progress(win: Any, done: int, total: int) -> None:
    bar = win.progress
    bar.setVisible(True)
    bar.setRange(0, max(total, 1))
    bar.setValue(done)
    bar.setFormat(f"prior {done}/{total}")


def _found(win: Any, series: Any, current_key: str, search: Any, scanned: Any, facts: StudyFacts | None) -> None:
    if facts is None:
        win.prior_message = search.message()
        win.set_status(win.prior_message)
        return
    if scanned is not None:
        win.reading.add_scan(scanned)  # the browser lists the retrieved study
    study = next((st for st in win.reading.studies if st.study_instance_uid == facts.study_instance_uid), None)
    prior = prior_series(series, study) if study is not None else None
    if prior is None:
        win.set_status(f"Compare with prior: the prior {facts.label()} has no {search.modality} series to show")
        return
    hang_prior(win, current_key, series_key(prior), search.current.study_date, facts.study_date)
    where = f" (retrieved from {search.chosen.origin})" if scanned is not None and search.chosen else ""
    win.prior_message = (f"CURRENT {format_study_date(search.current.study_date)} beside PRIOR {facts.label()}{where}"
                         + (f"; {'; '.join(search.notes)}" if search.notes else ""))
    win.set_status(win.prior_message)


def hang_prior(win: Any, current_key: str, prior_key: str, current_date: str, prior_date: str) -> None:
    """Show ``current_key`` left and ``prior_key`` right in a 1x2 layout, linked (:data:`LINKS`) and labelled."""
    win.set_layout("1x2")
    left, right = win.viewports[0], win.viewports[1]
    for old in getattr(win, "_prior_labels", []):
        if shiboken6.isValid(old):
            old.key = None  # never matches: removed at once
            old._check()
    for vp in (left, right):
        for what in LINKS:
            vp.model.set_linked(what, False)  # the new pair is linked below, from where each starts
    frame = left.state.frame if left.source_key == current_key else 0
    if left.source_key != current_key:
        win.loader.load_series(current_key, left, activate=False)
    win.loader.load_series(prior_key, right, activate=False)
    n_cur, n_pri = len(left.source or []), len(right.source or [])
    if n_cur > 1 and n_pri > 1:  # the same relative position: frames of reference differ, positions do not compare
        right.set_frame(int(round(frame / (n_cur - 1) * (n_pri - 1))))
    for vp in (left, right):
        for what in LINKS:
            vp.model.set_linked(what, True)
    win._prior_labels = [HangLabel(left, "CURRENT", format_study_date(current_date), current_key),
                         HangLabel(right, "PRIOR", format_study_date(prior_date), prior_key)]
    win.set_active(left)
    _same_window_when_shown(win, left, right)


def _same_window_when_shown(win: Any, left: Any, right: Any) -> None:
    """Once both show an image, the prior takes the current's window (the link carries later changes)."""
    timer = QTimer(win)
    waited = [0]

    def attempt() -> None:
        waited[0] += 100
        if left.has_image() and right.has_image() and left.state.width_w is not None:
            right.set_window(left.state.center_w, left.state.width_w)
        elif waited[0] < WAIT_MS:
            return
        timer.stop()
        timer.deleteLater()

    timer.timeout.connect(attempt)
    timer.start(100)
