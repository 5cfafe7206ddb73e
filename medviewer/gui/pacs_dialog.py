"""The PACS dialog: saved nodes, study query, results table, retrieve with progress and cancel.

The dialog is a view of a Qt-free :class:`~medviewer.workstation.pacs_browser.PacsBrowser`: its ``run_*``
methods (echo, C-FIND/QIDO-RS, C-GET/WADO-RS, audited) run on the global ``QThreadPool`` as
:class:`~medviewer.gui.workers.FnTask` s, their outcomes come back through queued signals and are applied
to the browser, and the dialog redraws from the browser's state, so the GUI never waits on the network.
The PACS client's warnings (a PACS that ignored the modality or date key, a C-GET/C-MOVE that ended with
failed sub-operations, instances missing after a retrieval) are shown in an amber line under the status,
not dropped. A retrieval can be cancelled (it stops after the instance in flight; what arrived
stays in the folder and a later retrieval resumes from there). When a study has been retrieved completely
the dialog emits :attr:`PacsDialog.studyRetrieved` with its folder, for the main window to open.

Hook-up (main window)::

    dlg = PacsDialog(self)
    dlg.studyRetrieved.connect(lambda folder: self.open_paths([str(folder)]))
    dlg.show()
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QThreadPool, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medviewer.gui.workers import FnTask, Task
from medviewer.workstation.pacs_browser import PacsBrowser, RetrieveOutcome

__all__ = ["PacsDialog", "default_download_dir", "COLUMNS"]

#: results table columns: (header, StudyMatch.to_json() key)
COLUMNS = (("Date", "StudyDate"), ("Patient ID", "PatientID"), ("Patient name", "PatientName"),
           ("Modalities", "ModalitiesInStudy"), ("Instances", "NumberOfStudyRelatedInstances"),
           ("Accession", "AccessionNumber"), ("Description", "StudyDescription"),
           ("Study Instance UID", "StudyInstanceUID"))


def default_download_dir() -> Path:
    """Where retrieved studies go by default: ``platformdirs.user_cache_dir("medviewer")/pacs``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("medviewer")) / "pacs"


class PacsDialog(QDialog):
    """Query a PACS and retrieve studies, off the GUI thread.

    Signals
    -------
    studyRetrieved(object)
        The :class:`~pathlib.Path` of a completely retrieved study folder.
    """

    studyRetrieved = Signal(object)  # noqa: N815 - Qt naming
    #: (node, our AE title, Study Instance UIDs, destination folder): "Triage these studies" was pressed
    triageRequested = Signal(str, str, list, str)  # noqa: N815 - Qt naming

    def __init__(self, parent: QWidget | None = None, *, pool: QThreadPool | None = None,
                 browser: PacsBrowser | None = None) -> None:
        super().__init__(parent)
        #: the Qt-free state this dialog shows (studies, status, the PACS client's warnings)
        self.browser = browser or PacsBrowser()
        self.setWindowTitle("PACS")
        self.resize(980, 560)
        self._pool = pool or QThreadPool.globalInstance()
        self._task: Task | None = None
        self._cancel: threading.Event | None = None
        self._running = False
        self._delivered = False
        self._what = ""

        self.node = QComboBox(editable=True)
        self.node.setToolTip("http(s)://host:port/path (DICOMweb), dicom://AET@host:port (DIMSE) or a saved name")
        self.node.lineEdit().setPlaceholderText("dicom://AET@host:port or https://host/dicom-web")
        self.aet = QLineEdit("MEDVIEWER")
        self.aet.setMaxLength(16)
        self.echo_button = QPushButton("Echo")
        self.patient_id = QLineEdit()
        self.patient_name = QLineEdit()
        self.study_date = QLineEdit()
        self.study_date.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        self.modality = QLineEdit()
        self.accession = QLineEdit()
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.out_dir = QLineEdit(str(default_download_dir()))
        browse = QPushButton("…")
        self.retrieve_button = QPushButton("Retrieve")
        self.cancel_button = QPushButton("Cancel")
        self.triage_button = QPushButton("Triage these studies")
        self.triage_button.setToolTip("Retrieve every study listed and score it with the selected model in the "
                                      "triage worklist (in the background)")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setWordWrap(True)
        #: the PACS client's warnings of the last operation (hidden when there are none)
        self.notes = QLabel("")
        self.notes.setObjectName("pacsNotes")
        self.notes.setWordWrap(True)
        self.notes.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notes.setStyleSheet("QLabel#pacsNotes { color: #b36b00; }")
        self.notes.setVisible(False)

        form = QFormLayout()
        node_row = QHBoxLayout()
        node_row.addWidget(self.node, 1)
        node_row.addWidget(QLabel("our AE title"))
        node_row.addWidget(self.aet)
        node_row.addWidget(self.echo_button)
        form.addRow("Node", node_row)
        q1 = QHBoxLayout()
        for label, w in (("Patient ID", self.patient_id), ("Name", self.patient_name), ("Date", self.study_date),
                         ("Modality", self.modality), ("Accession", self.accession)):
            q1.addWidget(QLabel(label))
            q1.addWidget(w)
        q1.addWidget(self.search_button)
        form.addRow("Query", q1)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_dir, 1)
        out_row.addWidget(browse)
        out_row.addWidget(self.retrieve_button)
        out_row.addWidget(self.cancel_button)
        out_row.addWidget(self.triage_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.table, 1)
        layout.addLayout(out_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.notes)

        self.echo_button.clicked.connect(self.echo)
        self.search_button.clicked.connect(self.search)
        self.retrieve_button.clicked.connect(self.retrieve)
        self.triage_button.clicked.connect(self.triage)
        self.cancel_button.clicked.connect(self.cancel)
        self.table.itemDoubleClicked.connect(lambda _item: self.retrieve())
        browse.clicked.connect(self._browse)
        self._unsubscribe = self.browser.subscribe(self._browser_changed)
        self.reload_nodes()

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def matches(self) -> list[dict[str, Any]]:
        """The studies listed, as :meth:`StudyMatch.to_json` dicts (DICOM keywords)."""
        return [m.to_json() for m in self.browser.matches]

    def reload_nodes(self) -> None:
        """Fill the node box with the saved nodes (a broken saved-nodes file is shown, not raised)."""
        from medviewer.pacs import load_nodes

        text = self.node.currentText()
        self.node.clear()
        try:
            self.node.addItems(list(load_nodes()))
        except Exception as exc:
            self.browser.show_message(str(exc))
        if text:
            self.node.setEditText(text)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Retrieve into", self.out_dir.text())
        if folder:
            self.out_dir.setText(folder)

    def _busy(self, busy: bool) -> None:
        for w in (self.echo_button, self.search_button, self.retrieve_button):
            w.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _target(self) -> tuple[str, str]:
        """(node, our AE title) as typed."""
        return self.node.currentText().strip(), self.aet.text().strip() or "MEDVIEWER"

    def _browser_changed(self, outcome: Any) -> None:
        """The browser's state changed: redraw the status, the warnings and (after a search) the table."""
        self.status.setText(self.browser.status)
        notes = self.browser.notes
        self.notes.setText("\n".join(f"⚠ {n}" for n in notes))
        self.notes.setToolTip("Warnings from the PACS client about the last operation" if notes else "")
        self.notes.setVisible(bool(notes))
        if outcome is not None and hasattr(outcome, "matches"):
            self._fill_table()
        if isinstance(outcome, RetrieveOutcome) and outcome.complete:
            self.studyRetrieved.emit(outcome.result.study_dir())

    def _start(self, fn, what: str, cancel: threading.Event | None = None) -> FnTask:
        self._busy(True)
        self._cancel = cancel
        self.browser.show_busy(what)
        task = FnTask(fn, what)
        # bound methods, not lambdas: Qt drops the connections when the dialog is deleted first
        task.signals.result.connect(self._succeeded)
        task.signals.progress.connect(self._progress)
        task.signals.failed.connect(self._failed)
        task.signals.finished.connect(self._finished)
        self._what = what
        self._running = True
        self._delivered = False  # set when the result (or the failure) has reached the GUI thread
        self._task = task
        self._pool.start(task)
        return task

    def _stale(self) -> bool:
        """True in a slot called by an earlier task's signal (its queued signals can arrive after a new
        task has started); direct calls (no sender) are current."""
        sender = self.sender()
        return sender is not None and (self._task is None or sender is not self._task.signals)

    def _succeeded(self, outcome: Any) -> None:
        if self._stale():
            return
        self._delivered = True
        self.browser.show(outcome)

    def _failed(self, reason: str) -> None:
        if self._stale():
            return
        self._delivered = True
        self.browser.show_failure(self._what, reason)

    def _finished(self) -> None:
        if self._stale():
            return
        self._running = False
        self._busy(False)

    @property
    def busy(self) -> bool:
        """True from the start of a network task until its end has reached the GUI thread."""
        return self._running

    # -- actions ----------------------------------------------------------------------------------------
    def echo(self) -> None:
        """C-ECHO / QIDO-RS ping of the node, in the background."""
        node, aet = self._target()
        self._start(lambda _task: self.browser.run_echo(node, aet), "Echo")

    def search(self) -> None:
        """Study-level query with the fields' values, in the background; fills the table."""
        from medviewer.pacs import StudyQuery

        query = StudyQuery(patient_id=self.patient_id.text().strip(), patient_name=self.patient_name.text().strip(),
                           study_date=self.study_date.text().strip(), modality=self.modality.text().strip(),
                           accession_number=self.accession.text().strip())
        node, aet = self._target()
        self._start(lambda _task: self.browser.run_search(node, aet, query), "Search")

    def triage(self) -> None:
        """Hand every listed study to the triage worklist (``triageRequested``): it retrieves and scores them."""
        uids = [m.study_instance_uid for m in self.browser.matches if m.study_instance_uid]
        if not uids:
            self.browser.show_message("Search first: the studies listed are the ones triaged")
            return
        node, aet = self._target()
        self.triageRequested.emit(node, aet, uids, self.out_dir.text().strip() or str(default_download_dir()))
        self.browser.show_message(f"Triage of {len(uids)} stud{'y' if len(uids) == 1 else 'ies'} started in the "
                                  "worklist")

    def _fill_table(self) -> None:
        matches = self.matches
        self.table.setRowCount(len(matches))
        for row, m in enumerate(matches):
            for col, (_header, key) in enumerate(COLUMNS):
                value = m.get(key)
                text = "/".join(value) if isinstance(value, list) else "" if value is None else str(value)
                if key == "StudyDate" and len(text) == 8 and text.isdigit():
                    text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
                self.table.setItem(row, col, QTableWidgetItem(text))
        if matches:
            self.table.selectRow(0)

    def selected_study(self) -> str | None:
        """Study Instance UID of the selected row, or None."""
        rows = self.table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.browser.matches):
            return None
        return self.browser.matches[rows[0].row()].study_instance_uid

    def retrieve(self) -> None:
        """Retrieve the selected study into the folder, in the background, with progress and cancel."""
        study = self.selected_study()
        if study is None:
            self.browser.show_message("Select a study first.")
            return
        out = Path(self.out_dir.text().strip() or default_download_dir())
        cancel = threading.Event()
        node, aet = self._target()

        def work(task: Task) -> Any:
            return self.browser.run_retrieve(node, aet, study, out, cancel=cancel,
                                             progress=lambda done, total: task.emit("progress", done, total))

        self._start(work, "Retrieve", cancel)

    def _progress(self, done: int, total: int) -> None:
        if self._stale():
            return
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def cancel(self) -> None:
        """Stop the running task: a retrieval stops after the instance in flight and reports what it has;
        an echo or a query is abandoned (its answer is dropped)."""
        if not self.busy or self._delivered:  # nothing runs, or its answer is already shown
            return
        if self._cancel is not None:
            self._cancel.set()
            self.browser.show_message("Cancelling …")
        elif self._task is not None:
            self._task.cancel()
            self.browser.show_message("Cancelled.")
            self._finished()

    def done(self, r: int) -> None:
        """Closing the dialog cancels what runs."""
        self.cancel()
        super().done(r)
