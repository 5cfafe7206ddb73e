"""The PACS dialog: saved nodes, study query, results table, retrieve with progress and cancel.

All network work (echo, C-FIND/QIDO-RS, C-GET/WADO-RS) runs on the global ``QThreadPool`` as
:class:`~medviewer.gui.workers.FnTask` s; results come back through queued signals, so the GUI never
waits on the network. A retrieval can be cancelled (it stops after the instance in flight; what arrived
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

    def __init__(self, parent: QWidget | None = None, *, pool: QThreadPool | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS")
        self.resize(980, 560)
        self._pool = pool or QThreadPool.globalInstance()
        self._task: Task | None = None
        self._cancel: threading.Event | None = None
        self._running = False
        self._delivered = False
        self._what = ""
        self.matches: list[dict[str, Any]] = []

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

        self.echo_button.clicked.connect(self.echo)
        self.search_button.clicked.connect(self.search)
        self.retrieve_button.clicked.connect(self.retrieve)
        self.triage_button.clicked.connect(self.triage)
        self.cancel_button.clicked.connect(self.cancel)
        self.table.itemDoubleClicked.connect(lambda _item: self.retrieve())
        browse.clicked.connect(self._browse)
        self.reload_nodes()

    # -- helpers ----------------------------------------------------------------------------------------
    def reload_nodes(self) -> None:
        """Fill the node box with the saved nodes (a broken saved-nodes file is shown, not raised)."""
        from medviewer.pacs import load_nodes

        text = self.node.currentText()
        self.node.clear()
        try:
            self.node.addItems(list(load_nodes()))
        except Exception as exc:
            self.status.setText(str(exc))
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

    def _connect(self) -> Any:
        from medviewer.pacs import connect

        return connect(self.node.currentText().strip(), aet=self.aet.text().strip() or "MEDVIEWER", timeout=30.0)

    def _start(self, fn, on_result, what: str, cancel: threading.Event | None = None) -> FnTask:
        self._busy(True)
        self._cancel = cancel
        self.status.setText(what + " …")
        task = FnTask(fn, what)
        # bound methods, not lambdas: Qt drops the connections when the dialog is deleted first
        task.signals.result.connect(on_result)
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

    def _failed(self, reason: str) -> None:
        if self._stale():
            return
        self._delivered = True
        self.status.setText(f"{self._what} failed: {reason}")

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
        def work(_task: Task) -> float:
            with self._connect() as client:
                return client.echo()

        self._start(work, self._echoed, "Echo")

    def _echoed(self, seconds: float) -> None:
        if self._stale():
            return
        self._delivered = True
        self.status.setText(f"{self.node.currentText()}: OK ({seconds * 1000:.0f} ms)")

    def search(self) -> None:
        """Study-level query with the fields' values, in the background; fills the table."""
        from medviewer.pacs import StudyQuery

        query = StudyQuery(patient_id=self.patient_id.text().strip(), patient_name=self.patient_name.text().strip(),
                           study_date=self.study_date.text().strip(), modality=self.modality.text().strip(),
                           accession_number=self.accession.text().strip())

        def work(_task: Task) -> list[dict[str, Any]]:
            with self._connect() as client:
                return [m.to_json() for m in client.find_studies(query)]

        self._start(work, self._show_matches, "Search")

    def triage(self) -> None:
        """Hand every listed study to the triage worklist (``triageRequested``): it retrieves and scores them."""
        uids = [str(m.get("StudyInstanceUID")) for m in self.matches if m.get("StudyInstanceUID")]
        if not uids:
            self.status.setText("Search first: the studies listed are the ones triaged")
            return
        self.triageRequested.emit(self.node.currentText().strip(), self.aet.text().strip() or "MEDVIEWER", uids,
                                  self.out_dir.text().strip() or str(default_download_dir()))
        self.status.setText(f"Triage of {len(uids)} stud{'y' if len(uids) == 1 else 'ies'} started in the worklist")

    def _show_matches(self, matches: list[dict[str, Any]]) -> None:
        if self._stale():
            return
        self._delivered = True
        self.matches = matches
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
        self.status.setText(f"{len(matches)} stud{'y' if len(matches) == 1 else 'ies'}")

    def selected_study(self) -> str | None:
        """Study Instance UID of the selected row, or None."""
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.matches[rows[0].row()]["StudyInstanceUID"]

    def retrieve(self) -> None:
        """Retrieve the selected study into the folder, in the background, with progress and cancel."""
        from medviewer.pacs import retrieve_study

        study = self.selected_study()
        if study is None:
            self.status.setText("Select a study first.")
            return
        out = Path(self.out_dir.text().strip() or default_download_dir())
        cancel = threading.Event()

        def work(task: Task) -> Any:
            with self._connect() as client:
                return retrieve_study(client, study, out, cancel=cancel,
                                      progress=lambda done, total: task.emit("progress", done, total))

        self._start(work, self._retrieved, "Retrieve", cancel)

    def _progress(self, done: int, total: int) -> None:
        if self._stale():
            return
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _retrieved(self, result: Any) -> None:
        if self._stale():
            return
        self._delivered = True
        total = len(result.expected)
        have = total - len(result.missing)
        if result.cancelled:
            self.status.setText(f"Cancelled: {have} of {total} instances in {result.study_dir()} "
                                "(retrieve again to resume).")
        elif result.missing:
            self.status.setText(f"Partial: {len(result.missing)} of {total} instances missing "
                                f"(e.g. {result.missing[0].sop_instance_uid}); retrieve again to resume.")
        else:
            self.status.setText(f"Retrieved {total} instances ({len(result.written)} new) into {result.study_dir()}")
            self.studyRetrieved.emit(result.study_dir())

    def cancel(self) -> None:
        """Stop the running task: a retrieval stops after the instance in flight and reports what it has;
        an echo or a query is abandoned (its answer is dropped)."""
        if not self.busy or self._delivered:  # nothing runs, or its answer is already shown
            return
        if self._cancel is not None:
            self._cancel.set()
            self.status.setText("Cancelling …")
        elif self._task is not None:
            self._task.cancel()
            self.status.setText("Cancelled.")
            self._finished()

    def done(self, r: int) -> None:
        """Closing the dialog cancels what runs."""
        self.cancel()
        super().done(r)
