"""Study/series browser: patient -> study -> series tree with thumbnails; drag a series to a viewport.

A view of the :class:`~medviewer.workstation.session.ReadingSession` (:meth:`SeriesBrowser.observe`): it adds
a series when the session announces it (``preview_added`` while a folder is scanned, ``series_added`` when
the series is complete and ordered) and its icon on ``thumbnail_added``. Session events come from worker
threads; the browser relays them to the GUI thread through queued Qt signals.

Under each study, the saved reading states found for it (DICOM presentation states,
:class:`~medviewer.workstation.presentation.FoundState`, :meth:`SeriesBrowser.set_presentation_states`) are
listed newest first, the one applied marked; double click (or Enter) on another emits
:attr:`SeriesBrowser.presentationStateActivated` with its path, and the window applies it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shiboken6
from PySide6.QtCore import QByteArray, QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from medviewer.gui.viewport import SERIES_MIME, numpy_to_qimage
from medviewer.workstation.session import ReadingSession, series_key  # re-exported: the key is the session's
from medviewer.workstation.text_overlays import format_date, format_person_name

__all__ = ["SeriesBrowser", "series_key"]

THUMB = 72
#: item data role holding a saved reading state's path (series items hold their key in Qt.UserRole)
STATE_ROLE = Qt.UserRole + 1


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
    """Tree of the reading session's studies; emits :attr:`seriesActivated` with a series key on double click.

    Parameters
    ----------
    parent
        Parent widget.
    reading
        The session to show (:meth:`observe`); may be given later.
    """

    seriesActivated = Signal(str)
    presentationStateActivated = Signal(str)  # the path of a saved reading state (GSPS) chosen in the tree
    # session events relayed to the GUI thread (AutoConnection: queued when emitted by a worker)
    _sourceArrived = Signal(str, object, bool)  # series key, FrameSource, is a preview
    _thumbnailArrived = Signal(str, object)

    def __init__(self, parent: QWidget | None = None, reading: ReadingSession | None = None) -> None:
        super().__init__(parent)
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
        self._states: list[Any] = []  # FoundState, newest first
        self._applied: set[str] = set()  # paths of the states applied
        self._state_items: dict[str, QTreeWidgetItem] = {}  # path -> item
        self._reading: ReadingSession | None = None
        self._sourceArrived.connect(self._show_source)
        self._thumbnailArrived.connect(self.set_thumbnail)
        if reading is not None:
            self.observe(reading)

    # -- the session ---------------------------------------------------------------------------------
    @property
    def reading(self) -> ReadingSession | None:
        """The session shown, or None."""
        return self._reading

    def observe(self, reading: ReadingSession) -> None:
        """Show ``reading``: what it holds now, and every series, preview and thumbnail it announces from now
        on. Observing the session already shown does nothing; another one replaces it (the tree is cleared)."""
        if reading is self._reading:
            return
        if self._reading is not None:
            ev = self._reading.events
            ev.preview_added.disconnect(self._relay_preview)
            ev.series_added.disconnect(self._relay_series)
            ev.thumbnail_added.disconnect(self._relay_thumbnail)
            self.clear()
        self._reading = reading
        ev = reading.events
        ev.preview_added.connect(self._relay_preview)
        ev.series_added.connect(self._relay_series)
        ev.thumbnail_added.connect(self._relay_thumbnail)
        for key, src in list(reading.sources.items()):
            self._show_source(key, src, False)
        for key, src in list(reading.previews.items()):
            self._show_source(key, src, True)
        for key, thumb in list(reading.thumbnails.items()):
            self.set_thumbnail(key, thumb)

    def _relay_preview(self, key: str, src: Any) -> None:
        if shiboken6.isValid(self):
            self._sourceArrived.emit(key, src, True)

    def _relay_series(self, key: str, src: Any) -> None:
        if shiboken6.isValid(self):
            self._sourceArrived.emit(key, src, False)

    def _relay_thumbnail(self, key: str, thumb: Any) -> None:
        if shiboken6.isValid(self):
            self._thumbnailArrived.emit(key, thumb)

    def _double(self, item: QTreeWidgetItem, _col: int = 0) -> None:
        key = item.data(0, Qt.UserRole)
        if key:
            self.seriesActivated.emit(str(key))
            return
        path = item.data(0, STATE_ROLE)
        if path:
            self.presentationStateActivated.emit(str(path))

    def _study_item(self, inst: Any) -> QTreeWidgetItem:
        """The tree item of ``inst``'s study under its patient (made when new)."""
        pid = str(getattr(inst, "patient_id", "") or "")
        pname = format_person_name(getattr(inst, "patient_name", "")) or "(no name)"
        pkey = f"{pid}|{pname}"
        pitem = self._patients.get(pkey)
        if pitem is None:
            pitem = QTreeWidgetItem([f"{pname}  ·  {pid}" if pid else pname])
            f = pitem.font(0)
            f.setBold(True)
            pitem.setFont(0, f)
            self.tree.addTopLevelItem(pitem)
            self._patients[pkey] = pitem
        skey = str(getattr(inst, "study_instance_uid", "") or "") or pkey
        sitem = self._studies.get(skey)
        if sitem is None:
            date = format_date(getattr(inst, "study_date", ""))
            desc = getattr(inst, "study_description", "") or "(study)"
            sitem = QTreeWidgetItem([" ".join(x for x in (date, desc) if x)])
            pitem.addChild(sitem)
            self._studies[skey] = sitem
            self._show_states()  # states found before the study's first series arrived
        pitem.setExpanded(True)
        sitem.setExpanded(True)
        return sitem

    def _show_source(self, key: str, src: Any, preview: bool) -> None:
        """Add (or, for a series replacing its preview, update) the item of series ``key``."""
        if self._reading is not None and not preview and self._reading.sources.get(key) is not src:
            return  # a stale event
        item = self._items.get(key)
        if item is not None and preview:
            return  # the full series (or its preview) is already listed
        se = getattr(src, "series", None)
        first = src.instances[0]
        meta = se if se is not None else first  # a preview has only its first instance
        n = len(src.instances)
        frames = len(src)
        num = getattr(meta, "series_number", None)
        desc = getattr(meta, "series_description", "") or ""
        title = " ".join(x for x in (str(getattr(meta, "modality", "") or ""),
                                     f"#{num}" if num is not None else "", desc) if x)
        if preview:
            count = "reading the folder…"
        else:
            count = f"{frames} images" if frames != n or frames > 1 else "1 image"
        text = f"{title or 'series'}\n{count}"
        tip = f"{title}\n{count}\n{getattr(first, 'path', '')}"
        if item is None:
            item = QTreeWidgetItem([text])
            item.setData(0, Qt.UserRole, key)
            item.setFlags(item.flags() | Qt.ItemIsDragEnabled)
            self._study_item(first).addChild(item)
            self._items[key] = item
            if self._state_items:
                self._show_states()  # the states stay below the study's series
        else:
            item.setText(0, text)
        item.setToolTip(0, tip)

    def _show_states(self) -> None:
        """(Re)build the state items under their studies: newest first, after the series, the applied marked."""
        for path, item in list(self._state_items.items()):
            parent = item.parent()
            if parent is not None:
                parent.removeChild(item)
            del self._state_items[path]
        for st in self._states:
            sitem = self._studies.get(str(st.study_instance_uid))
            if sitem is None:
                continue
            path = str(st.path)
            applied = path in self._applied
            label, _, when = st.title.partition(" (")  # "LABEL (YYYY-MM-DD HH:MM, creator)"
            item = QTreeWidgetItem([f"{'✔' if applied else '◇'} {label}{' · applied' if applied else ''}\n"
                                    f"{when.rstrip(')')}"])
            item.setData(0, STATE_ROLE, path)
            item.setFlags((item.flags() | Qt.ItemIsEnabled | Qt.ItemIsSelectable) & ~Qt.ItemIsDragEnabled)
            n = len(st.state.annotations)
            item.setToolTip(0, f"Presentation state {st.title}: {n} annotation{'s' * (n != 1)}"
                               f"{' (applied)' if applied else '; double click to apply'}\n{path}")
            if applied:
                f = item.font(0)
                f.setBold(True)
                item.setFont(0, f)
            sitem.addChild(item)
            self._state_items[path] = item

    # -- public --------------------------------------------------------------------------------------
    def set_presentation_states(self, states: list[Any], applied: Any = ()) -> None:
        """List ``states`` (:class:`~medviewer.workstation.presentation.FoundState` s) under their studies, newest
        first, marking those whose path is in ``applied``; a study not listed yet gets its states when it is."""
        self._states = sorted(states, key=lambda s: s.state.created, reverse=True)
        self._applied = {str(p) for p in applied}
        self._show_states()

    def state_item(self, path: Any) -> QTreeWidgetItem | None:
        """The tree item of the saved reading state at ``path``, or None."""
        return self._state_items.get(str(path))

    def applied_states(self) -> list[str]:
        """Paths of the listed states marked applied."""
        return [p for p in self._state_items if p in self._applied]

    def set_thumbnail(self, key: str, thumb_u8: np.ndarray) -> None:
        """Set a series' icon from a small uint8 gray/RGB image."""
        item = self._items.get(key)
        if item is None:
            return
        img = numpy_to_qimage(np.ascontiguousarray(thumb_u8))
        item.setIcon(0, QIcon(QPixmap.fromImage(img)))

    def item(self, key: str) -> QTreeWidgetItem | None:
        """The tree item of series ``key`` (its ``Qt.UserRole`` data is the key), or None."""
        return self._items.get(key)

    def select(self, key: str) -> None:
        """Make series ``key`` the current item."""
        item = self._items.get(key)
        if item is not None:
            self.tree.setCurrentItem(item)

    def keys(self) -> list[str]:
        """The keys of the listed series, in the order they were added."""
        return list(self._items)

    def clear(self) -> None:
        """Remove every item (the session keeps its series)."""
        self.tree.clear()
        self._items.clear()
        self._patients.clear()
        self._studies.clear()
        self._state_items.clear()
