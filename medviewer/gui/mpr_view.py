"""The MPR layout: axial, coronal and sagittal planes of a CT/MR series with a linked crosshair (thin Qt view).

All state lives in :class:`medviewer.workstation.mpr.MprModel` (crosshair in patient mm, shared window, slab);
this module only paints its images and forwards the mouse:

- left click / drag: move the crosshair there (the other two planes follow); with the toolbar's Distance or
  Ellipse ROI tool (or Shift held for a distance), draw a measurement instead: lengths in mm, ROI statistics
  in HU, kept in patient coordinates;
- wheel: scroll the plane under the cursor (Shift: 5 planes);
- right drag: window/level, shared by the three planes; double click: the default window;
- the toolbar above the planes: slab thickness in mm and projection (MIP/MinIP/mean), and the layout:
  ``1x3`` (axial, coronal, sagittal side by side) or ``2x2`` (the acquired plane -- the slices as stored --
  top left, then axial, coronal, sagittal; :meth:`MprView.set_layout`).

:func:`show_mpr` opens it from the main window (View > Layout MPR, Ctrl+3, ``medviewer PATH --layout mpr``):
the volume of the active viewport's series is built in a worker task, reusing the frames already decoded;
a series that is not one volume gives a dialog with the one-line reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medviewer.imaging import Window
from medviewer.imaging.mpr import ACQUIRED, PLANES
from medviewer.workstation.mpr import PLANE_COLOURS, MprModel

__all__ = ["MprPlaneView", "MprView", "show_mpr", "show_mpr_layout", "hide_mpr", "LAYOUTS"]

#: the MPR layouts: name -> (plane, row, column) of each plane shown
LAYOUTS = {
    "1x3": (("axial", 0, 0), ("coronal", 0, 1), ("sagittal", 0, 2)),
    "2x2": ((ACQUIRED, 0, 0), ("axial", 0, 1), ("coronal", 1, 0), ("sagittal", 1, 1)),
}



def layout_key(name: str) -> str:
    """``"2x2"``, ``"2×2"``, ``"1X3"`` ... -> the :data:`LAYOUTS` key; ValueError naming the choices otherwise."""
    key = str(name).lower().replace("×", "x")
    if key not in LAYOUTS:
        raise ValueError(f"MPR layout {name!r}: one of {', '.join(LAYOUTS)}")
    return key

class MprPlaneView(QWidget):
    """One plane of an :class:`MprModel`: image fitted with its aspect in mm, labels, reference lines."""

    def __init__(self, model: MprModel, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model, self.name = model, name
        self.setMinimumSize(120, 120)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.ClickFocus)
        self._drag: tuple[Any, QPointF] | None = None
        self._drawing: tuple[str, tuple[float, float], tuple[float, float]] | None = None
        #: the tool of the left button: "crosshair", "distance" or "ellipse" (set by :class:`MprView`)
        self.tool = "crosshair"
        self._qimage: QImage | None = None
        self._shown: np.ndarray | None = None

    # ---------------------------------------------------------------- geometry
    def image_rect(self) -> QRectF:
        """Where the image is drawn: fitted into the widget, square pixels, centred."""
        h, w = self.model.planes[self.name].size
        s = min(self.width() / w, self.height() / h) * 0.98
        return QRectF((self.width() - w * s) / 2, (self.height() - h * s) / 2, w * s, h * s)

    def to_image(self, pos: QPointF) -> tuple[float, float]:
        """Widget point -> display point of the plane's image."""
        r = self.image_rect()
        h, w = self.model.planes[self.name].size
        return (pos.x() - r.x()) * w / r.width(), (pos.y() - r.y()) * h / r.height()

    def to_widget(self, x: float, y: float) -> QPointF:
        """Display point of the plane's image -> widget point."""
        r = self.image_rect()
        h, w = self.model.planes[self.name].size
        return QPointF(r.x() + x * r.width() / w, r.y() + y * r.height() / h)

    # ---------------------------------------------------------------- painting
    def paintEvent(self, _e: Any) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.black)
        img = self.model.image(self.name)
        if img is not self._shown:
            self._shown = img
            self._qimage = QImage(img.data, img.shape[1], img.shape[0], img.strides[0], QImage.Format_Grayscale8)
        r = self.image_rect()
        p.setRenderHint(QPainter.SmoothPixmapTransform, True)
        p.drawImage(r, self._qimage)
        cx, cy = self.model.crosshair_display(self.name)
        c = self.to_widget(cx, cy)
        c = QPointF(int(c.x()) + 0.5, int(c.y()) + 0.5)  # crisp one-pixel lines
        gap = 12.0  # the lines stop short of the point itself so the anatomy under it stays visible
        for other, kind, _pos in self.model.reference_lines(self.name):
            p.setPen(QPen(QColor(*PLANE_COLOURS[other]), 1))
            if kind == "v":
                p.drawLine(QPointF(c.x(), r.top()), QPointF(c.x(), c.y() - gap))
                p.drawLine(QPointF(c.x(), c.y() + gap), QPointF(c.x(), r.bottom()))
            else:
                p.drawLine(QPointF(r.left(), c.y()), QPointF(c.x() - gap, c.y()))
                p.drawLine(QPointF(c.x() + gap, c.y()), QPointF(r.right(), c.y()))
        self._paint_measurements(p)
        p.setPen(QPen(QColor(*PLANE_COLOURS[self.name]), 2))
        p.drawRect(self.rect().adjusted(1, 1, -1, -1))
        font = QFont(self.font())
        font.setPointSize(11)
        font.setBold(True)
        p.setFont(font)
        p.setPen(QColor(255, 210, 80))
        labels = self.model.labels(self.name)
        m = 6
        fm = p.fontMetrics()
        p.drawText(QPointF(r.left() + m, r.center().y() + fm.ascent() / 2), labels["left"])
        p.drawText(QPointF(r.right() - m - fm.horizontalAdvance(labels["right"]), r.center().y() + fm.ascent() / 2),
                   labels["right"])
        p.drawText(QPointF(r.center().x() - fm.horizontalAdvance(labels["top"]) / 2, r.top() + m + fm.ascent()),
                   labels["top"])
        p.drawText(QPointF(r.center().x() - fm.horizontalAdvance(labels["bottom"]) / 2, r.bottom() - m),
                   labels["bottom"])
        font.setBold(False)
        font.setPointSize(9)
        p.setFont(font)
        p.setPen(QColor(*PLANE_COLOURS[self.name]))
        p.drawText(QPointF(8, 8 + p.fontMetrics().ascent()), self.model.caption(self.name))
        p.setPen(QColor(220, 220, 220))
        w = self.model.window
        if w is not None:
            p.drawText(QPointF(8, self.height() - 8), f"W {w.width:.0f} / L {w.center:.0f}")
        p.end()

    def _paint_measurements(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.Antialiasing, True)
        pen = QPen(QColor(80, 230, 255), 1.5)
        font = QFont(self.font())
        font.setPointSize(9)
        p.setFont(font)
        shapes = [(m.kind, self.model.display_of(self.name, m.p0), self.model.display_of(self.name, m.p1), m.label())
                  for m in self.model.measurements_on(self.name)]
        if self._drawing is not None:
            kind, a, b = self._drawing
            shapes.append((kind, a, b, ""))
        for kind, a, b, text in shapes:
            pa, pb = self.to_widget(*a), self.to_widget(*b)
            p.setPen(pen)
            if kind == "distance":
                p.drawLine(pa, pb)
            else:
                p.drawEllipse(QRectF(pa, pb).normalized())
            if text:  # right of the shape, or left of it where the text would leave the widget
                x = max(pa.x(), pb.x()) + 6
                if x + p.fontMetrics().horizontalAdvance(text) > self.width() - 4:
                    x = min(pa.x(), pb.x()) - 6 - p.fontMetrics().horizontalAdvance(text)
                at = QPointF(max(4.0, x), max(pa.y(), pb.y()))
                p.setPen(QColor(0, 0, 0))
                p.drawText(at + QPointF(1, 1), text)  # a shadow: legible on bone and on air
                p.setPen(QColor(255, 255, 255))
                p.drawText(at, text)
        p.setRenderHint(QPainter.Antialiasing, False)

    # ---------------------------------------------------------------- mouse
    def mousePressEvent(self, e: Any) -> None:  # noqa: N802
        pos = e.position()
        self._drag = (e.button(), pos)
        if e.button() != Qt.LeftButton:
            return
        tool = "distance" if e.modifiers() & Qt.ShiftModifier else self.tool
        if tool == "crosshair":
            self.model.click(self.name, *self.to_image(pos))
        else:
            a = self.to_image(pos)
            self._drawing = (tool, a, a)

    def mouseMoveEvent(self, e: Any) -> None:  # noqa: N802
        if self._drag is None:
            return
        button, last = self._drag
        pos = e.position()
        if button == Qt.LeftButton and self._drawing is not None:
            self._drawing = (self._drawing[0], self._drawing[1], self.to_image(pos))
            self.update()
        elif button == Qt.LeftButton:
            self.model.click(self.name, *self.to_image(pos))
        elif button == Qt.RightButton:
            self.model.drag_window(pos.x() - last.x(), pos.y() - last.y())
        self._drag = (button, pos)

    def mouseReleaseEvent(self, e: Any) -> None:  # noqa: N802
        self._drag = None
        drawing, self._drawing = self._drawing, None
        if drawing is None:
            return
        kind, a, _ = drawing
        b = self.to_image(e.position())
        if abs(b[0] - a[0]) + abs(b[1] - a[1]) < 2:  # a click, not a drawing
            self.update()
            return
        try:
            (self.model.add_distance if kind == "distance" else self.model.add_ellipse)(self.name, a, b)
        except ValueError:
            self.update()

    def mouseDoubleClickEvent(self, e: Any) -> None:  # noqa: N802
        w = self.model.volume.default_window
        if w is not None and e.button() == Qt.RightButton:
            self.model.set_window(w.center, w.width)

    def wheelEvent(self, e: Any) -> None:  # noqa: N802
        steps = e.angleDelta().y() // 120 or (1 if e.angleDelta().y() > 0 else -1 if e.angleDelta().y() < 0 else 0)
        if steps:
            self.model.step(self.name, -int(steps) * (5 if e.modifiers() & Qt.ShiftModifier else 1))


class MprView(QWidget):
    """The MPR layout: a slab toolbar over three :class:`MprPlaneView` side by side (axial, coronal, sagittal),
    or over four in a 2x2 grid with the acquired plane (see :data:`LAYOUTS`, :meth:`set_layout`)."""

    def __init__(self, model: MprModel, parent: QWidget | None = None, layout: str = "1x3") -> None:
        super().__init__(parent)
        self.model = model
        self.setStyleSheet("background: #000; color: #ddd;")
        bar = QHBoxLayout()
        bar.setContentsMargins(6, 2, 6, 2)
        bar.addWidget(QLabel("Slab"))
        self.slab = QDoubleSpinBox()
        self.slab.setRange(0.0, 200.0)
        self.slab.setSingleStep(5.0)
        self.slab.setSuffix(" mm")
        self.slab.setValue(model.slab_mm)
        self.projection = QComboBox()
        self.projection.addItems(["MIP", "MinIP", "Mean"])
        bar.addWidget(self.slab)
        bar.addWidget(self.projection)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Left button"))
        self.tool = QComboBox()
        self.tool.addItems(["Crosshair", "Distance", "Ellipse ROI"])
        self.tool.currentIndexChanged.connect(self._tool_changed)
        bar.addWidget(self.tool)
        self.clear = QPushButton("Clear measurements")
        self.clear.clicked.connect(model.clear_measurements)
        bar.addWidget(self.clear)
        bar.addSpacing(12)
        self.layout_box = QComboBox()
        self.layout_box.addItems(["1×3", "2×2"])
        self.layout_box.setToolTip("1×3: axial, coronal, sagittal; 2×2: the acquired plane with the three reformats")
        bar.addWidget(self.layout_box)
        bar.addSpacing(12)
        self.info = QLabel("")
        bar.addWidget(self.info, 1)
        self.slab.valueChanged.connect(self._slab_changed)
        self.projection.currentIndexChanged.connect(self._slab_changed)
        self.grid = QGridLayout()
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(2)
        self.planes = {name: MprPlaneView(model, name) for name in (*PLANES, ACQUIRED)}
        self.layout_name = ""
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(0)
        col.addLayout(bar)
        col.addLayout(self.grid, 1)
        self.set_layout(layout)
        self.layout_box.currentIndexChanged.connect(lambda i: self.set_layout(("1x3", "2x2")[i]))
        model.changed.connect(self._on_changed)
        self._on_changed("crosshair")

    def set_layout(self, name: str) -> None:
        """Show the planes as ``"1x3"`` (axial, coronal, sagittal in a row) or ``"2x2"`` (acquired, axial /
        coronal, sagittal). Raises ValueError for another name."""
        key = layout_key(name)
        for view in self.planes.values():
            self.grid.removeWidget(view)
            view.hide()
        for r in range(3):
            self.grid.setRowStretch(r, 0)
            self.grid.setColumnStretch(r, 0)
        for plane, r, c in LAYOUTS[key]:
            self.grid.addWidget(self.planes[plane], r, c)
            self.grid.setRowStretch(r, 1)
            self.grid.setColumnStretch(c, 1)
            self.planes[plane].show()
        self.layout_name = key
        self.layout_box.blockSignals(True)
        self.layout_box.setCurrentIndex(list(LAYOUTS).index(key))
        self.layout_box.blockSignals(False)

    def shown_planes(self) -> list[str]:
        """Names of the planes the current layout shows, in reading order."""
        return [plane for plane, _r, _c in LAYOUTS[self.layout_name]]

    def _tool_changed(self, i: int) -> None:
        for v in self.planes.values():
            v.tool = ("crosshair", "distance", "ellipse")[i]

    def _slab_changed(self, *_: Any) -> None:
        self.model.set_slab(self.slab.value(), ("mip", "minip", "mean")[self.projection.currentIndex()])

    def _on_changed(self, _what: str) -> None:
        m = self.model
        x, y, z = m.crosshair
        units = m.volume.pipeline.units.label or ""
        self.info.setText(f"crosshair x {x:.1f}  y {y:.1f}  z {z:.1f} mm   value {m.value_at_crosshair():.0f} {units}")
        for v in self.planes.values():
            v.update()

    def closeEvent(self, e: Any) -> None:  # noqa: N802
        self.model.changed.disconnect(self._on_changed)
        super().closeEvent(e)


# ---------------------------------------------------------------------- main window glue
def hide_mpr(win: Any) -> None:
    """Leave the MPR layout (the viewports come back through ``win.set_layout``)."""
    view = getattr(win, "mpr_view", None)
    if view is not None:
        view.hide()
    timer = getattr(win, "_mpr_wait", None)
    if timer is not None:
        timer.stop()


def show_mpr_layout(win: Any, name: str) -> None:
    """Show the MPR layout in ``win`` with the planes laid out as ``name`` (``"1x3"`` or ``"2x2"``): the
    shown MPR view changes its grid; otherwise the volume is built (:func:`show_mpr`) and shown that way.
    Raises ValueError for another name."""
    key = layout_key(name)
    view = getattr(win, "mpr_view", None)
    if view is not None and view.isVisible():
        view.set_layout(key)
        return
    show_mpr(win, layout=key)


def show_mpr(win: Any, wait_ms: int = 120_000, layout: str | None = None) -> None:
    """Show the active viewport's series as MPR in ``win`` (a :class:`~medviewer.gui.main_window.MainWindow`),
    its planes laid out as ``layout`` (a key of :data:`LAYOUTS`; None: as the last MPR view, else 1x3).

    While a folder is still being scanned (``medviewer PATH --layout mpr``) it waits for the full series. The
    volume is built in a worker task from the series' frames (the decoded ones are reused); a series that is
    not one volume is reported with :meth:`MainWindow.error` (a dialog, or stderr for ``--screenshot``).
    """
    from medviewer.gui.workers import FnTask
    from medviewer.imaging.mpr import build_volume

    hide_mpr(win)
    src, key = win.active.source, win.active.source_key
    full = src is not None and win.reading.sources.get(key) is src and not win.loader.scanning
    if not full:
        if src is None and not win.loader.scanning and not win._tasks:
            win.set_status("MPR: open a CT or MR series first")
            return
        waited = [0]
        timer = QTimer(win)
        win._mpr_wait = timer

        def again() -> None:
            waited[0] += 100
            s = win.active.source
            if (s is not None and win.reading.sources.get(win.active.source_key) is s and not win.loader.scanning) \
                    or waited[0] > wait_ms:
                timer.stop()
                show_mpr(win, 0, layout)

        timer.timeout.connect(again)
        timer.start(100)
        return
    win.set_status(f"MPR: building the volume of {len(src)} images…")

    def built(volume: Any) -> None:
        if win.active.source is not src:
            return  # another series was opened meanwhile
        old = getattr(win, "mpr_view", None)
        if old is not None:
            win.grid.removeWidget(old)
            old.close()
            old.deleteLater()
        model = MprModel(volume)
        # asked for (View > Layout MPR 2x2), else the reader's layout survives a new series
        grid = layout or (old.layout_name if old is not None else "1x3")
        vp = win.active
        if vp.state.width_w is not None and volume.default_window is not None:  # the reader's window
            model.window = Window(vp.state.center_w, max(1.0, vp.state.width_w), volume.pipeline.voi_function)
        win.mpr_view = MprView(model, layout=grid)
        for v in win.viewports:
            v.setVisible(False)
        win.grid.addWidget(win.mpr_view, 0, 0, 2, 2)
        win.mpr_view.show()
        act = win.actions.get(_mpr_command())
        if act is not None:
            act.setChecked(True)
        sp = volume.spacing
        win.set_status(f"MPR: {volume.shape[0]} x {volume.shape[1]} x {volume.shape[2]} voxels, "
                       f"{sp[0]:.2f} x {sp[1]:.3f} x {sp[2]:.3f} mm" + "".join(f"; {n}" for n in volume.notes))

    task = FnTask(lambda t: build_volume(src), "MPR volume")
    task.signals.result.connect(built)
    task.signals.failed.connect(lambda reason: win.error("Cannot show MPR", reason))
    win.start(task)


def _mpr_command() -> Any:
    from medviewer.gui.keybindings import Command

    return getattr(Command, "LAYOUT_MPR", None)
