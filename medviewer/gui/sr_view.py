"""The "AI reports (SR)" dock: findings of TID 1500 reports found among the opened files (ours or another
vendor's, :mod:`medviewer.workstation.sr_reports`). Their image regions are drawn on the referenced images by
the AI layer (:meth:`medviewer.gui.ai_view.AiView.update_layers`); double-clicking a finding with a region
shows its image."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from medviewer.workstation.sr_reports import SrReport, finding_text

__all__ = ["SrPanel"]


class SrPanel(QWidget):
    """A list of the reports' findings; emits ``findingActivated(sop_instance_uid, frame)`` for one with a region."""

    findingActivated = Signal(str, int)  # noqa: N815 - Qt naming

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.note = QLabel("No AI report (DICOM SR) in the opened studies")
        self.note.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.note)
        lay.addWidget(self.list, 1)
        self.list.itemDoubleClicked.connect(self._activated)

    def add_reports(self, reports: list[SrReport]) -> None:
        """List ``reports``: one heading per report (description, manufacturer), one line per finding."""
        for r in reports:
            head = QListWidgetItem(f"{r.description or 'Structured report'} — {r.manufacturer or 'unknown'} "
                                   f"({len(r.findings)} findings)")
            font = head.font()
            font.setBold(True)
            head.setFont(font)
            self.list.addItem(head)
            for f in r.findings:
                item = QListWidgetItem("   " + finding_text(f))
                uid = f.get("referenced_sop_instance_uid")
                if uid and f.get("polyline") is not None:
                    frames = f.get("referenced_frame_numbers") or [1]
                    item.setData(Qt.UserRole, (str(uid), int(frames[0]) - 1))
                    item.setToolTip("Double-click to show the region on its image")
                self.list.addItem(item)
        n = sum(1 for _ in range(self.list.count()))
        if n:
            self.note.setText("Findings of AI reports (DICOM SR, TID 1500) in the opened studies")

    def _activated(self, item: QListWidgetItem) -> None:
        ref: Any = item.data(Qt.UserRole)
        if ref:
            self.findingActivated.emit(ref[0], ref[1])
