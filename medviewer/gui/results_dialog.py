"""AI > Export results as DICOM… and AI > Save results to PACS…: the active image's AI result as a TID 1500 SR
and an overlay Secondary Capture (:func:`medviewer.workstation.results.write_result_dicom`), optionally
de-identified (PS3.15 Basic Profile, with an optional pseudonym key file so the UIDs match ``medviewer anonymize``),
written into a folder or stored on a saved PACS node (:func:`medviewer.workstation.results.send_files`).

The writing and the network work run in a :class:`~medviewer.gui.workers.FnTask` off the GUI thread; Cancel stops
it between objects; a failure is one dialog with a one-line reason; every export and send is recorded in the
audit trail (``results-exported``, ``sent``; objects by UID as they went out).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from PySide6.QtCore import QThreadPool, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medviewer.gui.workers import FnTask, Task

__all__ = ["ResultsDialog"]


class ResultsDialog(QDialog):
    """Write (``to_pacs=False``) or send (``to_pacs=True``) the AI result of ``win``'s active image as DICOM.

    Signals
    -------
    done_with(dict)
        After a run that was not cancelled before its first object: ``{"paths": [...] (export), "stored": [SOP UIDs], "failed": [(name, reason)],
        "cancelled": bool, "study_uids": [...]}``.
    """

    done_with = Signal(object)

    def __init__(self, win: Any, to_pacs: bool, parent: QWidget | None = None, *,
                 pool: QThreadPool | None = None) -> None:
        super().__init__(parent or win)
        self.win = win
        self.to_pacs = to_pacs
        self._pool = pool or win.io_pool
        self._task: Task | None = None
        self.running = False
        self.setWindowTitle("Save AI results to PACS" if to_pacs else "Export AI results as DICOM")
        form = QFormLayout()
        self.node = QComboBox(editable=True)
        self.folder = QLineEdit(str(Path(win.settings.last_folder) / "ai-results"))
        if to_pacs:
            from medviewer.pacs import load_nodes

            try:
                self.node.addItems(list(load_nodes()))
            except Exception as exc:  # a broken nodes file is shown, not raised
                self.node.setToolTip(str(exc))
            self.node.lineEdit().setPlaceholderText("a saved node (File > Query / retrieve from PACS…) or a URL")
            form.addRow("PACS node", self.node)
        else:
            row = QHBoxLayout()
            browse = QPushButton("…")
            browse.clicked.connect(self._browse)
            row.addWidget(self.folder, 1)
            row.addWidget(browse)
            form.addRow("Folder", row)
        self.anonymize = QCheckBox("De-identify (DICOM PS3.15 Basic Profile: patient pseudonym, new UIDs)")
        self.key_file = QLineEdit()
        self.key_file.setPlaceholderText("optional pseudonym key file: UIDs as `medviewer anonymize` gives them")
        self.key_file.setEnabled(False)
        self.anonymize.toggled.connect(self.key_file.setEnabled)
        form.addRow("", self.anonymize)
        form.addRow("Key file", self.key_file)
        self.start_button = QPushButton("Send" if to_pacs else "Export")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("The SR (scores, flags, applicability, regions) and the overlay as a Secondary Capture")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addLayout(buttons)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export into", self.folder.text())
        if d:
            self.folder.setText(d)

    def cancel(self) -> None:
        """Cancel the run under way (it stops before the next object), else close the dialog."""
        if self.running and self._task is not None:
            self._task.cancel()
            self.status.setText("Cancelling …")
        else:
            self.reject()

    def start(self) -> bool:
        """Start writing / sending the active image's result in the background; False (status says why) when
        there is nothing to do or an input is wrong."""
        win = self.win
        vp = win.active
        entry = win.prediction_for(vp)
        if entry is None or vp.source is None:
            self.status.setText("No AI result for this image: run the model first")
            return False
        key = None
        deid = self.anonymize.isChecked()
        if deid and self.key_file.text().strip():
            from medviewer.deid import load_key
            from medviewer.errors import MedViewerError

            try:
                key = load_key(self.key_file.text().strip())
            except (MedViewerError, OSError, ValueError) as exc:
                self.status.setText(str(exc).splitlines()[0])
                return False
        node = self.node.currentText().strip()
        if self.to_pacs and not node:
            self.status.setText("Choose a PACS node")
            return False
        source, k = vp.source, vp.state.frame
        # one report per model: every model whose findings may be shown for this image (several models
        # installed), else the selected model's result (it records why it is not assessed)
        ai = getattr(win, "ai", None)
        results = ai.results(source, k) if ai is not None and hasattr(ai, "results") else []
        entries = [r.entry for r in results if r.entry is not None and r.shown] or [entry]
        settings = win.settings
        alpha, cmap = float(settings.heatmap_opacity), str(settings.colormap)
        folder = None if self.to_pacs else Path(self.folder.text().strip() or ".")

        def work(task: Task) -> dict[str, Any]:
            import pydicom

            from medviewer.workstation.results import send_files, write_result_dicom

            out = folder if folder is not None else Path(tempfile.mkdtemp(prefix="medviewer-send-"))
            try:
                paths, per_model = [], []
                for e in entries:  # several models: each report in a folder named after its model
                    where = out / e.package.card.name if len(entries) > 1 else out
                    written = write_result_dicom(source, k, e, where, deidentify=deid, key=key, alpha=alpha,
                                                 colormap=cmap)
                    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in written]
                    paths += written
                    per_model.append((e.package, uids, len(written)))
                    task.check()
                heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
                res: dict[str, Any] = {
                    "paths": [str(p) for p in paths] if folder is not None else [],
                    "sop_uids": [str(h.SOPInstanceUID) for h in heads],
                    "study_uids": sorted({str(h.StudyInstanceUID) for h in heads}),
                    "stored": [], "failed": [], "cancelled": False, "node": node, "deidentified": deid,
                    "model": entries[0].package, "reports": per_model,
                }
                task.emit("progress", 1, len(paths) + 1)
                task.check()
                if self.to_pacs:
                    report = send_files(node, paths, cancel=lambda: task.cancelled,
                                        progress=lambda d, n: task.emit("progress", d + 1, n + 1))
                    res.update(stored=report.stored, failed=report.failed, cancelled=report.cancelled,
                               node=report.destination or node)
                return res
            finally:
                if folder is None:
                    shutil.rmtree(out, ignore_errors=True)

        task = FnTask(work, "send results" if self.to_pacs else "export results")
        task.signals.result.connect(self._done)
        task.signals.failed.connect(self._failed)
        task.signals.finished.connect(self._finished)
        task.signals.progress.connect(self._progress)
        self._task = task
        self.running = True
        self.start_button.setEnabled(False)
        self.status.setText(("Sending to " + node if self.to_pacs else "Writing") + " …")
        win.start(task, self._pool)
        return True

    def _progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _done(self, res: dict[str, Any]) -> None:
        win = self.win
        audit = getattr(win, "audit", None)
        if self.to_pacs:
            n, ok = len(res["sop_uids"]), len(res["stored"])
            if audit is not None and (ok or res["failed"]):
                audit.sent(res["node"], res["study_uids"], res["stored"], stored=ok, failed=len(res["failed"]),
                           deidentified=res["deidentified"])
            if res["failed"]:
                why = "; ".join(f"{name}: {reason}" for name, reason in res["failed"])
                self.status.setText(f"Stored {ok} of {n} objects")
                win.error("Save results to PACS failed", f"{len(res['failed'])} of {n} objects not stored: {why}")
            elif res["cancelled"]:
                self.status.setText(f"Cancelled: stored {ok} of {n} objects on {res['node']}")
            else:
                self.status.setText(f"Stored the SR and the SC on {res['node']}")
                win.set_status(f"AI results stored on {res['node']}")
        else:
            if audit is not None:  # one record per model's report
                for package, uids, n in res.get("reports") or [(res["model"], res["sop_uids"], len(res["paths"]))]:
                    audit.exported("dicom-sr-sc", uids, deidentified=res["deidentified"], model=package,
                                   detail={"objects": n})
            self.status.setText("Wrote " + ", ".join(Path(p).name for p in res["paths"])
                                + (f" ({len(res['reports'])} models)" if len(res.get("reports") or []) > 1 else ""))
            win.set_status(f"AI results written to {Path(res['paths'][0]).parent}")
        self.done_with.emit(res)

    def _failed(self, reason: str) -> None:
        title = "Save results to PACS failed" if self.to_pacs else "Export of AI results failed"
        self.status.setText(f"{title}: {reason}")
        self.win.error(title, reason)

    def _finished(self) -> None:
        self.running = False
        self.start_button.setEnabled(True)
        self.cancel_button.setText("Close")
