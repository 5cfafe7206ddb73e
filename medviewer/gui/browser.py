"""Study/series browser: patient -> study -> series tree with thumbnails; drag a series to a viewport."""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QByteArray, QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QTreeWidget, QTreeWidgetItem, QWidget

from medviewer.gui.overlays import format_date, format_person_name
from medviewer.gui.viewport import SERIES_MIME, numpy_to_qimage
from medviewer.workstation.session import series_key  # re-exported: the key is the session's

__all__ = ["SeriesBrowser", "series_key"]

THUMB = 72




class _Tree(QTreeWidget):
    def mimeData(self, items: list[QTreeWidgetItem]) -> QMimeData:  # noqa: N802
        md = QMimeData()
        keys = [it.data(0, Qt.UserRole) for it in items if it.data(0, Qt.UserRole)]
        if keys:
            md.setData(SERIES_MIME, QByteArray(str(keys[0]).encode("utf-8")))
        return md

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return [SERIES_MIME]


class SeriesBrowser(QWidget):
    """Tree of the open studies; emits :attr:`seriesActivated` with a series key on double click."""

    seriesActivated = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from PySide6.QtWidgets import QVBoxLayout

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.tree = _Tree()
        self.tree.setHeaderHidden(True)
        self.tree.setIconSize(QSize(THUMB, THUMB))
        self.tree.setDragEnabled(True)
        self.tree.setDragDropMode(QAbstractItemView.DragOnly)
        self.tree.setIndentation(12)
        self.tree.itemDoubleClicked.connect(self._double)
        self.tree.itemActivated.connect(self._double)
        lay.addWidget(self.tree)
        self._items: dict[str, QTreeWidgetItem] = {}
        self._patients: dict[str, QTreeWidgetItem] = {}
        self._studies: dict[str, QTreeWidgetItem] = {}

    def _double(self, item: QTreeWidgetItem, _col: int = 0) -> None:
        key = item.data(0, Qt.UserRole)
        if key:
            self.seriesActivated.emit(str(key))

    def add_studies(self, studies: list[Any]) -> list[str]:
        """Add the studies of a :class:`medviewer.io.ScanResult`; returns the keys of new series."""
        new: list[str] = []
        for st in studies:
            pid = str(getattr(st, "patient_id", "") or "")
            pname = format_person_name(getattr(st, "patient_name", "")) or "(no name)"
            pkey = f"{pid}|{pname}"
            pitem = self._patients.get(pkey)
            if pitem is None:
                pitem = QTreeWidgetItem([f"{pname}  ·  {pid}" if pid else pname])
                f = pitem.font(0)
                f.setBold(True)
                pitem.setFont(0, f)
                self.tree.addTopLevelItem(pitem)
                self._patients[pkey] = pitem
            skey = str(getattr(st, "study_instance_uid", "")) or pkey
            sitem = self._studies.get(skey)
            if sitem is None:
                date = format_date(getattr(st, "study_date", ""))
                desc = getattr(st, "study_description", "") or "(study)"
                sitem = QTreeWidgetItem([" ".join(x for x in (date, desc) if x)])
                pitem.addChild(sitem)
                self._studies[skey] = sitem
            for se in st.series:
                key = series_key(se)
                if key in self._items:
                    continue
                n = len(se.instances)
                frames = sum(max(1, int(getattr(i, "number_of_frames", 1) or 1)) for i in se.instances)
                num = getattr(se, "series_number", None)
                desc = getattr(se, "series_description", "") or ""
                title = " ".join(x for x in (str(getattr(se, "modality", "") or ""),
                                             f"#{num}" if num is not None else "", desc) if x)
                count = f"{frames} images" if frames != n or frames > 1 else "1 image"
                item = QTreeWidgetItem([f"{title or 'series'}\n{count}"])
                item.setData(0, Qt.UserRole, key)
                item.setToolTip(0, f"{title}\n{count}\n{getattr(se.instances[0], 'path', '')}")
                item.setFlags(item.flags() | Qt.ItemIsDragEnabled)
                sitem.addChild(item)
                self._items[key] = item
                new.append(key)
            pitem.setExpanded(True)
            sitem.setExpanded(True)
        return new

    def set_thumbnail(self, key: str, thumb_u8: np.ndarray) -> None:
        """Set a series' icon from a small uint8 gray/RGB image."""
        item = self._items.get(key)
        if item is None:
            return
        img = numpy_to_qimage(np.ascontiguousarray(thumb_u8))
        item.setIcon(0, QIcon(QPixmap.fromImage(img)))

    def select(self, key: str) -> None:
        item = self._items.get(key)
        if item is not None:
            self.tree.setCurrentItem(item)

    def keys(self) -> list[str]:
        return list(self._items)

    def clear(self) -> None:
        self.tree.clear()
        self._items.clear()
        self._patients.clear()
        self._studies.clear()
