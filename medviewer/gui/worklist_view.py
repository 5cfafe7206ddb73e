"""The triage worklist dock: a folder's studies scored in the background, listed by in-scope probability.

A view of :class:`medviewer.workstation.worklist.Worklist` (Qt-free; the "CADt" triage columns of a PACS
worklist): :meth:`WorklistView.triage` scores every image under the given files/folders with the selected
model in a cancellable :class:`~medviewer.gui.workers.FnTask` (progress in the dock), and the table lists the
studies in :meth:`~medviewer.workstation.worklist.StudyTriage.sort_key` order -- studies with images inside
the model's intended use first, by their highest positive-label probability; studies entirely out of scope
after, with the reasons as tooltip; studies that could not be scored last. Unread studies are bold.
Double-click or Enter opens the study in the viewer (its image files, through ``win.open_paths``) and marks
it read; the context menu toggles read/unread. Read state is kept per Study Instance UID in the worklist's
state file, so a new triage of the same studies keeps it.

Hook-up: :func:`show_worklist` (from the AI menu, :mod:`medviewer.gui.menus`) creates the dock on first use
as ``win.worklist_dock`` / ``win.worklist_view``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medviewer.gui.overlays import format_date, format_person_name
from medviewer.gui.workers import FnTask, Task
from medviewer.inference.applicability import Status
from medviewer.workstation.worklist import NOT_SCORED

__all__ = ["WorklistView", "show_worklist", "COLUMNS", "APPLICABILITY_TEXT", "patient_text"]

#: table columns, left to right
COLUMNS = ("Patient", "Study date", "Description", "Modalities", "Top finding", "Probability",
           "AI applicability", "Read")
#: StudyTriage.applicability -> the text shown
APPLICABILITY_TEXT = {Status.IN_SCOPE: "in scope", Status.OUT_OF_SCOPE: "out of scope", Status.UNKNOWN: "unknown",
                      NOT_SCORED: "not scored"}
_REFRESH_S = 0.5  # table refresh interval while a triage runs


def patient_text(patient_name: str, patient_id: str) -> str:
    """The patient as the study browser shows it: ``FAMILY, Given  ·  ID`` (``(no name)`` when empty)."""
    name = format_person_name(patient_name) or "(no name)"
    return f"{name}  ·  {patient_id}" if patient_id else name


class _Table(QTableWidget):
    """The worklist table; Enter / Return emits :attr:`entered` with the current row."""

    entered = Signal(int)

    def keyPressEvent(self, e: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentRow() >= 0:
            self.entered.emit(self.currentRow())
            e.accept()
            return
        super().keyPressEvent(e)


class WorklistView(QWidget):
    """Triage worklist of ``win`` (a :class:`~medviewer.gui.main_window.MainWindow`).

    Parameters
    ----------
    win
        The main window: its AI controller (``win.ai``: selected model, session cache), ``win.start`` (task
        pool) and ``win.open_paths`` (opening a study) are used.
    state_file
        Where read/unread is kept (default: :func:`medviewer.workstation.worklist.read_state_file`; None: not
        kept).

    Attributes
    ----------
    worklist
        The :class:`~medviewer.workstation.worklist.Worklist` shown (None before the first triage).
    entries
        The :class:`~medviewer.workstation.worklist.StudyTriage` of each table row, in row order.

    Signals
    -------
    studyOpened(str)
        Study Instance UID of a study opened from the list.
    triageFinished(str)
        The status line at the end of a triage (done, cancelled or failed).
    """

    studyOpened = Signal(str)  # noqa: N815 - Qt naming
    triageFinished = Signal(str)  # noqa: N815 - Qt naming

    def __init__(self, win: Any, state_file: Path | None | bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.win = win
        self.state_file = state_file
        self.worklist: Any = None
        self.entries: list[Any] = []
        self.paths: list[str] = []
        self._task: Task | None = None
        self._last_refresh = 0.0
        self.models: list[str] = []  #: the names of the models of the last triage

        self.table = _Table(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.folder_button = QPushButton("Triage a folder…")
        self.again_button = QPushButton("Triage again")
        self.again_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Score a folder's studies with the selected model: AI > Triage a folder…")
        self.status.setWordWrap(True)

        row = QHBoxLayout()
        for w in (self.folder_button, self.again_button, self.cancel_button):
            row.addWidget(w)
        row.addWidget(self.progress, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(row)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.status)

        self.folder_button.clicked.connect(self.triage_folder_dialog)
        self.again_button.clicked.connect(lambda: self.triage(self.paths))
        self.cancel_button.clicked.connect(self.cancel)
        self.table.cellDoubleClicked.connect(lambda r, _c: self.open_row(r))
        self.table.entered.connect(self.open_row)
        self.table.customContextMenuRequested.connect(self._context_menu)

    # -- running ---------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a triage runs (until its end has reached the GUI thread)."""
        return self._task is not None

    def triage_folder_dialog(self) -> None:
        """Ask for a folder and triage it."""
        start = getattr(getattr(self.win, "settings", None), "last_folder", "") or ""
        folder = QFileDialog.getExistingDirectory(self, "Triage a folder", start)
        if folder:
            self.triage([folder])

    def triage(self, paths: Sequence[str | Path]) -> Task | None:
        """Score every image under ``paths`` (files or folders, recursively) with the selected model in a
        background task, cancelling a triage that runs; the table fills as images are scored. Read state is
        kept from the state file. Returns the task, or None when no model is selected (said in the status)."""
        from medviewer.workstation.worklist import triage_folder

        self.paths = [str(p) for p in paths]
        return self._run(lambda session, wl, task: triage_folder(
            session, self.paths, worklist=wl, cancel=lambda: task.cancelled,
            progress=lambda done, total: task.emit("progress", done, total)))

    def triage_pacs(self, node: str, aet: str, study_instance_uids: Sequence[str], out: str | Path) -> Task | None:
        """Retrieve the studies from ``node`` (C-GET / WADO-RS, resuming, into ``out``) and score them, in the
        background, like :meth:`triage`; a study that cannot be retrieved is listed with its error.
        Returns the task, or None when no model is selected."""
        from medviewer.pacs import connect
        from medviewer.workstation.worklist import triage_pacs

        uids = [str(u) for u in study_instance_uids]
        self.paths = [str(Path(out) / u) for u in uids]  # "Triage again" re-scores what was retrieved

        def work(session: Any, wl: Any, task: Task) -> Any:
            with connect(node, aet=aet or "MEDVIEWER", timeout=30.0) as client:
                return triage_pacs(session, client, uids, Path(out), worklist=wl, cancel=lambda: task.cancelled,
                                   progress=lambda done, total: task.emit("progress", done, total))

        return self._run(work, f"{len(uids)} stud{'y' if len(uids) == 1 else 'ies'} from {node}")

    def _run(self, score: Any, what: str = "") -> Task | None:
        from medviewer.workstation.worklist import Worklist

        ai = self.win.ai
        package = ai.package
        if package is None:
            self._set_status("No model selected: choose one in the AI panel first")
            return None
        self.cancel()
        wl = Worklist(self.state_file)
        self.worklist = wl
        packages = ai.ordered_packages()  # every installed model, the preferred first
        self.models = [p.card.name for p in packages]

        def work(task: Task) -> Any:
            sessions = [ai.session(p) for p in packages]  # process-wide cache: opened once per model and provider
            task.check()
            return score(sessions, wl, task)

        task = FnTask(work, "triage")
        self._task = task
        task.signals.progress.connect(self._progress)
        task.signals.result.connect(self._done)
        task.signals.failed.connect(self._failed)
        task.signals.finished.connect(self._finished)
        self.progress.setRange(0, 0)  # busy until the scan has counted the images
        self._busy(True)
        names = ", ".join(f"{p.card.name} {p.card.version}" for p in packages)
        self._set_status(f"Triage{' of ' + what if what else ''} with {names} …")
        self.fill()
        self.win.start(task)
        return task

    def cancel(self) -> None:
        """Stop the running triage (after the batch in flight); what was scored stays listed."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        self._busy(False)
        self.progress.setRange(0, 1)
        self.fill()
        n = sum(e.scored for e in self.entries)
        self._set_status(f"Cancelled: {n} of {sum(e.images for e in self.entries)} images scored "
                         "(Triage again to score them all).", finished=True)

    def _stale(self) -> bool:
        sender = self.sender()
        return sender is not None and (self._task is None or sender is not self._task.signals)

    def _busy(self, busy: bool) -> None:
        self.folder_button.setEnabled(not busy)
        self.again_button.setEnabled(not busy and bool(self.paths))
        self.cancel_button.setEnabled(busy)

    def _progress(self, done: int, total: int) -> None:
        if self._stale():
            return
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        now = time.monotonic()
        if done >= total or now - self._last_refresh >= _REFRESH_S:
            self._last_refresh = now
            self.fill()

    def _done(self, wl: Any) -> None:
        if self._stale():
            return
        self.worklist = wl
        self.fill()
        n_in = sum(e.applicability in (Status.IN_SCOPE, Status.UNKNOWN) for e in self.entries)
        n_img = sum(e.scored for e in self.entries)
        n_failed = sum(e.failed for e in self.entries)
        if len(self.models) > 1:  # scored counts (image, model) results
            n_img = sum(e.images for e in self.entries)
            self._set_status(f"{len(self.entries)} stud{'y' if len(self.entries) == 1 else 'ies'}, {n_img} images "
                             f"scored by {len(self.models)} models ({n_failed} results failed); {n_in} with images "
                             "in a model's intended use.")
            return
        self._set_status(f"{len(self.entries)} stud{'y' if len(self.entries) == 1 else 'ies'}, {n_img} images "
                         f"scored ({n_failed} failed); {n_in} with images in the model's intended use.")

    def _failed(self, reason: str) -> None:
        if self._stale():
            return
        self._set_status(f"Triage failed: {reason}")

    def _finished(self) -> None:
        if self._stale():
            return
        self._task = None
        self._busy(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        # announced only now, when the view is usable again (the result arrives before the task's end)
        self.triageFinished.emit(self.status.text())

    def _set_status(self, text: str, finished: bool = False) -> None:
        self.status.setText(text)
        if finished:
            self.triageFinished.emit(text)

    # -- the table -------------------------------------------------------------------------------------
    def fill(self) -> None:
        """(Re)fill the table from the worklist, in triage order, keeping the selected study selected."""
        selected = self.selected_study()
        self.entries = self.worklist.sorted() if self.worklist is not None else []
        self.table.setRowCount(len(self.entries))
        for r, e in enumerate(self.entries):
            prob = "" if e.top_probability is None else f"{e.top_probability:.2f}"
            finding = e.top_label or ""
            if finding and len(self.models) > 1 and e.top_model:
                finding += f" · {e.top_model}"  # several models: which one gave the top probability
            if e.top_label and e.top_label in e.flagged:
                finding += "  (flagged" + (f" by {', '.join(e.flagged_by.get(e.top_label, []))}"
                                          if len(self.models) > 1 and e.flagged_by.get(e.top_label) else "") + ")"
            texts = (patient_text(e.patient_name, e.patient_id), format_date(e.study_date), e.study_description,
                     "/".join(e.modalities), finding, prob, APPLICABILITY_TEXT.get(e.applicability, e.applicability),
                     "read" if e.read else "unread")
            tip = self._tooltip(e)
            for c, text in enumerate(texts):
                item = QTableWidgetItem(text)
                font = item.font()
                font.setBold(not e.read)
                item.setFont(font)
                if COLUMNS[c] == "Probability":
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if tip and COLUMNS[c] == "AI applicability":
                    item.setToolTip(tip)
                if c == 0:
                    item.setToolTip(f"Study Instance UID {e.study_instance_uid}")
                self.table.setItem(r, c, item)
            if e.study_instance_uid == selected:
                self.table.selectRow(r)

    @staticmethod
    def _tooltip(e: Any) -> str:
        if e.error:
            return e.error
        if e.applicability == Status.OUT_OF_SCOPE:
            return "Outside the model's intended use: " + "; ".join(e.reasons)
        if e.applicability == Status.UNKNOWN:
            return "The model card states no intended use to check against"
        if e.applicability == NOT_SCORED:
            return "Not scored (triage cancelled before this study)"
        extra = f"; {e.out_of_scope} out of scope: " + "; ".join(e.reasons) if e.out_of_scope else ""
        flags = "; ".join(f"{lab} flagged by {', '.join(models)}" for lab, models in e.flagged_by.items() if models)
        return (f"{e.in_scope} of {e.scored} scored (image, model) result(s) in the model's intended use{extra}"
                + (f"\n{flags}" if flags else ""))

    def selected_study(self) -> str | None:
        """Study Instance UID of the selected row, or None."""
        rows = self.table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.entries):
            return None
        return self.entries[rows[0].row()].study_instance_uid

    def row_of(self, study_instance_uid: str) -> int:
        """The table row of a study, or -1."""
        return next((r for r, e in enumerate(self.entries) if e.study_instance_uid == study_instance_uid), -1)

    def open_row(self, row: int) -> None:
        """Open row ``row``'s study in the viewer (its image files) and mark it read."""
        if not 0 <= row < len(self.entries):
            return
        e = self.entries[row]
        paths = [str(p) for p in e.paths] or ([str(e.folder)] if e.folder is not None else [])
        if not paths:
            self._set_status("This study has no local files to open")
            return
        self.win.open_paths(paths)
        self.set_read(row, True)
        self.studyOpened.emit(e.study_instance_uid)

    def set_read(self, row: int, read: bool) -> None:
        """Mark row ``row``'s study read or unread (kept in the state file)."""
        if self.worklist is None or not 0 <= row < len(self.entries):
            return
        try:
            self.worklist.mark_read(self.entries[row].study_instance_uid, read)
        except OSError as exc:  # the mark stays for this session; say why it is not kept
            self._set_status(f"Read state not saved: {exc}")
            self.entries[row].read = read
        self.fill()

    def _context_menu(self, pos: Any) -> None:
        row = self.table.rowAt(pos.y())
        if row < 0:
            return
        read = self.entries[row].read
        menu = QMenu(self)
        open_act = QAction("Open study", menu)
        open_act.triggered.connect(lambda: self.open_row(row))
        toggle = QAction("Mark as unread" if read else "Mark as read", menu)
        toggle.triggered.connect(lambda: self.set_read(row, not read))
        menu.addAction(open_act)
        menu.addAction(toggle)
        menu.exec(self.table.viewport().mapToGlobal(pos))


def show_worklist(win: Any, ask_folder: bool = False) -> WorklistView:
    """Show the "Triage worklist" dock of ``win`` (created on first use, tabbed at the bottom as
    ``win.worklist_dock`` with ``win.worklist_view``); ``ask_folder``: ask for a folder to triage."""
    view = getattr(win, "worklist_view", None)
    if view is None:
        view = WorklistView(win)
        dock = QDockWidget("Triage worklist", win)
        dock.setObjectName("worklist")
        dock.setWidget(view)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        win.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        win.resizeDocks([dock], [260], Qt.Orientation.Vertical)  # the viewports keep most of the height
        win.worklist_view, win.worklist_dock = view, dock
        view.triageFinished.connect(win.set_status)
    win.worklist_dock.show()
    win.worklist_dock.raise_()
    if ask_folder:
        view.triage_folder_dialog()
    return view
