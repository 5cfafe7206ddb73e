"""One image viewport: the Qt view of a :class:`~medviewer.workstation.viewport.ViewportModel`.

The widget holds no imaging logic and no state about what is shown: the model (Qt-free) has the view
state, the VOI choice, the frame and the render cache, and emits ``psygnal`` events the widget repaints on.
Grey-scale rendering is :class:`medviewer.imaging.DisplayPipeline` (through the model), the AI overlay
(heat map, regions, labels) is :func:`medviewer.workstation.overlay.ai_overlay_layer` drawn 1:1, so an
export shows exactly what the reader saw; measurements are :mod:`medviewer.workstation.measure`, corner text and
orientation labels :mod:`medviewer.workstation.text_overlays`. Pixels are decoded by a
:class:`~medviewer.gui.workers.PrefetchTask`; the widget only reads the cache.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import cv2
import numpy as np
import shiboken6
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QPainter,
    QPen,
    QTransform,
)
from PySide6.QtWidgets import QWidget

from medviewer.gui import theme
from medviewer.gui.viewport_paint import ViewportPainting
from medviewer.workstation.measure import Measurement, Shape
from medviewer.workstation.overlay import AiOverlay
from medviewer.workstation.session import Measurements
from medviewer.workstation.viewport import ViewportModel, ViewState

__all__ = ["Viewport", "AiOverlay", "SERIES_MIME", "numpy_to_qimage", "rgb32_qimage"]

#: MIME type of a series dragged from the browser (payload: the series key, UTF-8)
SERIES_MIME = "application/x-medviewer-series"


def numpy_to_qimage(arr: np.ndarray) -> QImage:
    """uint8 (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA -> a QImage owning a copy of the pixels.

    The pixels are copied into the image's own buffer (``QImage.bits()``): building a QImage on a
    Python buffer trips a reference-count bug of PySide6 at interpreter exit.
    """
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    h, w = arr.shape[:2]
    if arr.ndim == 2:
        fmt, ch = QImage.Format_Grayscale8, 1
    elif arr.shape[2] == 3:
        fmt, ch = QImage.Format_RGB888, 3
    elif arr.shape[2] == 4:
        fmt, ch = QImage.Format_RGBA8888, 4
    else:
        raise ValueError(f"cannot show an image of shape {arr.shape}")
    img = QImage(w, h, fmt)
    dst = np.frombuffer(img.bits(), np.uint8).reshape(h, img.bytesPerLine())
    dst[:, : w * ch] = arr.reshape(h, w * ch)
    return img


def rgb32_qimage(arr: np.ndarray) -> QImage:
    """uint8 (H, W) gray or (H, W, 3) RGB -> a ``Format_RGB32`` QImage (the format the raster engine
    scales fastest), converted by OpenCV straight into the image's buffer (one pass, no Qt conversion)."""
    arr = np.asarray(arr)
    if sys.byteorder != "little" or arr.dtype != np.uint8 or not (arr.ndim == 2 or arr.shape[2] == 3):
        return numpy_to_qimage(arr).convertToFormat(QImage.Format_RGB32)
    h, w = arr.shape[:2]
    img = QImage(w, h, QImage.Format_RGB32)  # 0xffRRGGBB per pixel: bytes B, G, R, 255 on little-endian
    dst = np.frombuffer(img.bits(), np.uint8).reshape(h, img.bytesPerLine())[:, : w * 4].reshape(h, w, 4)
    cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_GRAY2BGRA if arr.ndim == 2 else cv2.COLOR_RGB2BGRA, dst=dst)
    return img


class Viewport(ViewportPainting, QWidget):
    """An image viewport with W/L, zoom, pan, scroll, measurements, overlays and AI layers.

    ``model`` is its :class:`~medviewer.workstation.viewport.ViewportModel` (one is made when not given);
    the commands below forward to it, and the Qt signals repeat its events for Qt code.
    """

    activated = Signal(object)  # self, on mouse press
    measurementsChanged = Signal()  # the shown frame's measurements changed (here or in another viewport)
    frameChanged = Signal(int)
    windowChanged = Signal(float, float)  # centre, width
    cursorInfo = Signal(str)  # readout text for the status bar
    wantFrame = Signal(int)  # frame the viewport waits for (prefetch priority)
    seriesDropped = Signal(object, str)  # self, series key
    filesDropped = Signal(list)  # local paths

    def __init__(self, parent: QWidget | None = None, model: ViewportModel | None = None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAcceptDrops(True)
        self.setMinimumSize(160, 160)
        self.setAttribute(Qt.WA_OpaquePaintEvent)
        self.model = model if model is not None else ViewportModel()
        self.tool: Shape | None = None
        self._measurements: Measurements | None = None
        self.measurements = Measurements()  # the window gives every viewport its reading session's
        self.show_overlays = True
        self.show_patient = True
        self.active = False
        self.message = ""
        self.cine_fps = 10
        self._cine = QTimer(self)
        self._cine.timeout.connect(self._cine_step)
        self._blit: tuple[np.ndarray, QImage] | None = None  # the model's screen layer as a QImage
        self._overlay_q: tuple[np.ndarray, QImage] | None = None  # (the model's RGBA layer, its QImage)
        self._drag: dict[str, Any] | None = None
        self._drawing: Measurement | None = None
        m = self.model
        m.set_view_size(max(self.width(), 1), max(self.height(), 1))
        m.frame_changed.connect(self._on_model_frame)
        m.window_changed.connect(self._on_model_window)
        m.frame_wanted.connect(self._on_model_wants)
        for sig in (m.source_changed, m.image_ready, m.view_changed, m.overlay_changed, m.links_changed):
            sig.connect(self._repaint)

    # -- measurements (the reading session's, observed) -------------------------------------------------
    @property
    def measurements(self) -> Measurements:
        """The :class:`~medviewer.workstation.session.Measurements` store this viewport draws from and adds to
        (the reading session's, shared with the other viewports); the viewport repaints on its events for the
        frame it shows. Assigning a store disconnects the previous one."""
        return self._measurements

    @measurements.setter
    def measurements(self, store: Measurements) -> None:
        old = self._measurements
        if old is not None:
            old.events.measurement_added.disconnect(self._on_measurement)
            old.events.measurement_removed.disconnect(self._on_measurement)
        self._measurements = store
        store.events.measurement_added.connect(self._on_measurement)
        store.events.measurement_removed.connect(self._on_measurement)
        self.update()

    def _on_measurement(self, uid: tuple[str, int], _m: Any) -> None:
        if shiboken6.isValid(self) and uid == self.frame_uid():
            self.update()
            self.measurementsChanged.emit()

    # -- model events -------------------------------------------------------------------------------
    def _repaint(self, *_: Any) -> None:
        self.update()

    def _on_model_frame(self, k: int) -> None:
        self._drawing = None
        self.update()
        self.frameChanged.emit(k)

    def _on_model_window(self, center: float | None, width: float | None) -> None:
        self.update()
        if center is not None and width is not None:
            self.windowChanged.emit(float(center), float(width))

    def _on_model_wants(self, k: int) -> None:
        self.wantFrame.emit(k)

    # -- the model's state, read-only views for Qt code -----------------------------------------------
    @property
    def state(self) -> ViewState:
        """The model's :class:`~medviewer.workstation.viewport.ViewState` (geometry, window, frame)."""
        return self.model.state

    @property
    def source(self) -> Any:
        """The :class:`~medviewer.workstation.frames.FrameSource` shown, or None."""
        return self.model.source

    @property
    def source_key(self) -> str:
        return self.model.source_key

    @property
    def ai(self) -> AiOverlay | None:
        """The AI result drawn on its frame, or None."""
        return self.model.ai

    # -- source ---------------------------------------------------------------------------------
    def set_source(self, source: Any, key: str = "", frame: int = 0) -> None:
        """Show ``source`` (None clears the viewport); starts at ``frame`` with the default window."""
        self._cine.stop()
        self.message = ""
        self._drawing = None
        self.model.set_view_size(max(self.width(), 1), max(self.height(), 1))
        self.model.set_source(source, key, frame)

    def frame_uid(self) -> tuple[str, int] | None:
        """(series key, frame index) of the shown frame."""
        return self.model.frame_uid()

    def has_image(self) -> bool:
        """True when the shown frame is decoded and shown."""
        return self.model.has_image()

    def current_instance(self) -> Any:
        return self.model.current_instance()

    def spacing(self) -> tuple[float, float] | None:
        return self.model.spacing()

    def on_frame_decoded(self, k: int) -> None:
        """Slot for the prefetch: redraw when the frame we wait for arrives."""
        self.model.on_frame_decoded(k)

    # -- rendering --------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Adopt the shown frame if decoded (or ask for it) and repaint; rendering happens at paint time
        from the model's keyed cache, so nothing needs invalidating."""
        self.model.refresh()
        self.update()

    def transform(self) -> QTransform:
        m = self.model.matrix()
        return QTransform(m[0, 0], m[1, 0], m[0, 1], m[1, 1], m[0, 2], m[1, 2])

    def _screen_image(self) -> tuple[int, int, QImage] | None:
        """The model's :meth:`~medviewer.workstation.viewport.ViewportModel.screen_layer` as a QImage (made once
        per layer), or None when there is nothing of the image to draw."""
        layer = self.model.screen_layer()
        if layer is None:
            return None
        x, y, arr = layer
        if self._blit is None or self._blit[0] is not arr:
            self._blit = (arr, rgb32_qimage(np.ascontiguousarray(arr)))
        return x, y, self._blit[1]

    def _overlay_image(self, regions: bool) -> QImage | None:
        """The model's AI overlay layer at the view's geometry as a QImage (made once per layer)."""
        layer = self.model.overlay_layer(regions=regions)
        if layer is None:
            return None
        if self._overlay_q is None or self._overlay_q[0] is not layer:
            self._overlay_q = (layer, numpy_to_qimage(layer))
        return self._overlay_q[1]

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.black)
        self.paint_content(p, overlays=self.show_overlays, patient=self.show_patient, decorations=True)
        p.end()

    def paint_content(self, p: QPainter, overlays: bool = True, patient: bool = True,
                      decorations: bool = True) -> None:
        """Draw the image, the AI overlay, measurements and (optionally) the text overlays with ``p``.

        The AI overlay is the model's RGBA layer at this view's size, drawn 1:1 without transform, so
        ``render_image`` (PNG export) and the screen get the same pixels as
        :func:`medviewer.workstation.overlay.ai_overlay_layer` composited over the image."""
        p.setRenderHint(QPainter.SmoothPixmapTransform, True)
        p.setRenderHint(QPainter.Antialiasing, True)
        t = self.transform()
        if self.model.display_layer() is not None:
            blit = self._screen_image()  # the image resampled to the screen by the model: copied, never scaled
            if blit is not None:
                p.save()
                p.resetTransform()
                p.drawImage(QPointF(blit[0], blit[1]), blit[2])
                p.restore()
            layer = self._overlay_image(regions=overlays)
            if layer is not None:
                p.save()
                p.resetTransform()
                p.drawImage(QPointF(0, 0), layer)
                p.restore()
            self._paint_measurements(p, t)
        if overlays and self.source is not None:
            self._paint_text(p, patient)
            self._paint_scale_and_orientation(p)
        if decorations:
            self._paint_status(p)
            self._paint_link_badge(p)
            if self.active:
                p.setPen(QPen(QColor(theme.ACCENT), 2))
                p.setBrush(Qt.NoBrush)
                p.drawRect(self.rect().adjusted(1, 1, -1, -1))

    def _values(self) -> tuple[np.ndarray | None, str]:
        """Modality values of the shown frame (HU on CT) and their unit (cached by the model)."""
        return self.model.values()

    # -- commands (forwarded to the model) ------------------------------------------------------------
    def set_frame(self, k: int) -> None:
        self.model.set_frame(k)

    def step(self, delta: int) -> None:
        self.model.step(delta)

    def set_window(self, center: float, width: float) -> None:
        self.model.set_window(center, width)

    def default_window(self) -> None:
        self.model.default_window()

    def apply_preset(self, preset: Any) -> None:
        """Apply a :class:`medviewer.imaging.Preset` (name, center, width)."""
        self.model.apply_preset(preset)

    def toggle_invert(self) -> None:
        self.model.toggle_invert()

    def reset(self) -> None:
        self.model.reset()

    def fit(self) -> None:
        self.model.fit()

    def actual_size(self) -> None:
        self.model.actual_size()

    def rotate(self, degrees: int) -> None:
        self.model.rotate(degrees)

    def flip(self, horizontal: bool) -> None:
        self.model.flip(horizontal)

    def toggle_cine(self) -> bool:
        """Start/stop cine; returns True when playing."""
        if self._cine.isActive() or self.source is None or len(self.source) < 2:
            self._cine.stop()
            return False
        self._cine.start(max(1, int(1000 / self.cine_fps)))
        return True

    def set_cine_fps(self, fps: int) -> None:
        self.cine_fps = int(np.clip(fps, 1, 60))
        if self._cine.isActive():
            self._cine.start(max(1, int(1000 / self.cine_fps)))

    def cine_playing(self) -> bool:
        return self._cine.isActive()

    def stop_cine(self) -> None:
        """Stop cine playback (e.g. when the window closes)."""
        self._cine.stop()

    def _cine_step(self) -> None:
        if self.source is None:
            self._cine.stop()
            return
        n = len(self.source)
        self.set_frame((self.state.frame + 1) % n)

    def set_tool(self, tool: Shape | None) -> None:
        self.tool = tool
        self._drawing = None
        self.setCursor(Qt.CrossCursor if tool is not None else Qt.ArrowCursor)

    def cancel_drawing(self) -> None:
        """Drop a measurement being drawn (Esc)."""
        self._drawing = None
        self.update()

    def delete_measurements(self) -> None:
        """Delete the measurements of the shown frame (in every viewport showing it) and the one being drawn."""
        uid = self.frame_uid()
        if uid is not None:
            self.measurements.remove(uid)
        self._drawing = None
        self.update()

    def add_measurement(self, m: Measurement) -> None:
        """Add ``m`` (image pixel coordinates) to the shown frame; every viewport showing it repaints."""
        uid = self.frame_uid()
        if uid is not None:
            self.measurements.add(uid, m)

    def set_ai(self, ai: AiOverlay | None) -> None:
        """Draw ``ai`` on its frame (None: no AI overlay)."""
        self.model.set_ai(ai)

    def centre_on(self, bbox: tuple[float, float, float, float]) -> None:
        self.model.centre_on(bbox)

    def render_image(self, overlays: bool = True, patient: bool = True) -> QImage:
        """The viewport as an image for export: with/without overlays and patient identification."""
        img = QImage(self.size(), QImage.Format_RGB32)
        img.fill(Qt.black)
        p = QPainter(img)
        self.paint_content(p, overlays=overlays, patient=patient, decorations=False)
        p.end()
        return img

    # -- events ---------------------------------------------------------------------------------------
    def resizeEvent(self, event: Any) -> None:  # noqa: N802
        self.model.set_view_size(max(self.width(), 1), max(self.height(), 1))
        super().resizeEvent(event)

    def mousePressEvent(self, e: Any) -> None:  # noqa: N802
        self.activated.emit(self)
        self.setFocus()
        pos = e.position()
        self._drag = {"button": e.button(), "start": pos, "last": pos,
                      "width": self.state.width_w, "anchor": pos}
        if e.button() == Qt.LeftButton and self.tool is not None and self.has_image():
            ip = self.model.to_image(pos.x(), pos.y())
            self._drawing = Measurement(self.tool, ip, ip)
        e.accept()

    def mouseMoveEvent(self, e: Any) -> None:  # noqa: N802
        pos = e.position()
        d = self._drag
        if d is None:
            self._readout(pos.x(), pos.y())
            return
        dx, dy = pos.x() - d["last"].x(), pos.y() - d["last"].y()
        d["last"] = pos
        b = d["button"]
        if b == Qt.LeftButton and self._drawing is not None:
            self._drawing.p1 = self.model.to_image(pos.x(), pos.y())
            self.update()
        elif b == Qt.LeftButton and self.state.width_w is not None:
            self.model.drag_window(dx, dy, max(float(d["width"] or 1.0), 1.0) / 500.0)
        elif b == Qt.RightButton:
            self.model.zoom_by(math.exp(-dy * 0.01), (d["anchor"].x(), d["anchor"].y()))
        elif b == Qt.MiddleButton:
            self.model.pan_by(dx, dy)
        self._readout(pos.x(), pos.y())

    def mouseReleaseEvent(self, e: Any) -> None:  # noqa: N802
        if self._drawing is not None:
            m = self._drawing
            self._drawing = None
            if math.hypot(m.p1[0] - m.p0[0], m.p1[1] - m.p0[1]) > 0.5:
                self.add_measurement(m)
            self.update()
        self._drag = None

    def mouseDoubleClickEvent(self, e: Any) -> None:  # noqa: N802
        if self.tool is None:
            self.fit()

    def wheelEvent(self, e: Any) -> None:  # noqa: N802
        dy = e.angleDelta().y()
        if dy == 0:
            return
        if e.modifiers() & Qt.ControlModifier:
            pos = e.position()
            self.model.zoom_by(1.15 if dy > 0 else 1 / 1.15, (pos.x(), pos.y()))
        else:
            steps = max(1, abs(dy) // 120)
            self.step(-steps if dy > 0 else steps)
        e.accept()

    def leaveEvent(self, e: Any) -> None:  # noqa: N802
        self.cursorInfo.emit("")

    def _readout(self, sx: float, sy: float) -> None:
        if self.source is None:
            return
        stored = self.source.cached(self.state.frame)
        if stored is None:
            return
        x, y = self.model.to_image(sx, sy)
        c, r = int(math.floor(x)), int(math.floor(y))
        if not (0 <= r < stored.shape[0] and 0 <= c < stored.shape[1]):
            self.cursorInfo.emit("")
            return
        self.cursorInfo.emit(self.readout_text(r, c))

    def readout_text(self, r: int, c: int) -> str:
        """``x, y``, stored value and modality value of pixel (row r, col c): in HU when the header reader
        decides Hounsfield Units (:func:`medviewer.io.header.rescale_units`), else ``value`` (with its unit
        label, if any) when it differs from the stored value; the position in mm with pixel spacing."""
        stored = self.source.cached(self.state.frame) if self.source is not None else None
        if stored is None:
            return ""
        v = stored[r, c]
        if stored.ndim == 3:
            return f"x {c}  y {r}   RGB {tuple(int(a) for a in v)}"
        from medviewer.io.enum import RescaleType

        pipe = self.source.pipeline(self.state.frame)
        mv = float(pipe.modality_values(stored[r:r + 1, c:c + 1])[0, 0])
        hu = pipe.units == RescaleType.HU  # the header reader decides (Rescale Type, else CT): one rule
        text = f"x {c}  y {r}   stored {int(v)}"
        if hu:
            text += f"   {mv:.0f} HU"
        elif mv != float(v):
            text += f"   value {mv:.1f}{' ' + pipe.units.label if pipe.units.label else ''}"
        sp = self.spacing()
        if sp:
            text += f"   ({c * sp[1]:.1f}, {r * sp[0]:.1f}) mm"
        return text

    # -- drag & drop ------------------------------------------------------------------------------------
    def dragEnterEvent(self, e: Any) -> None:  # noqa: N802
        md: QMimeData = e.mimeData()
        if md.hasFormat(SERIES_MIME) or md.hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e: Any) -> None:  # noqa: N802
        md: QMimeData = e.mimeData()
        if md.hasFormat(SERIES_MIME):
            key = bytes(md.data(SERIES_MIME)).decode("utf-8")
            self.activated.emit(self)
            self.seriesDropped.emit(self, key)
        elif md.hasUrls():
            self.activated.emit(self)
            self.filesDropped.emit([u.toLocalFile() for u in md.urls() if u.isLocalFile()])
        e.acceptProposedAction()
