"""One image viewport: draws a :class:`~medviewer.gui.viewstate.ViewState` and forwards input to it.

The widget holds no imaging logic: grey-scale rendering is :class:`medviewer.imaging.DisplayPipeline`,
heatmap colours are :func:`medviewer.inference.heatmap.colorize`, measurements are
:mod:`medviewer.gui.measure`, corner text and orientation labels are :mod:`medviewer.gui.overlays`.
Pixels are decoded by a :class:`~medviewer.gui.workers.PrefetchTask`; the widget only reads the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PySide6.QtCore import QMimeData, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPolygonF,
    QTransform,
)
from PySide6.QtWidgets import QWidget

from medviewer.gui import theme
from medviewer.gui.measure import Measurement, Shape, describe
from medviewer.gui.overlays import corner_text, orientation_labels
from medviewer.gui.series import FrameSource
from medviewer.gui.viewstate import ViewState, nice_scale_length_mm
from medviewer.workstation.intended_use import scope_label

__all__ = ["Viewport", "AiOverlay", "SERIES_MIME", "numpy_to_qimage"]

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


@dataclass
class AiOverlay:
    """What the AI panel asks a viewport to draw on one frame."""

    frame_uid: tuple[str, int]  # (series key, frame index) the prediction belongs to
    prediction: Any  # medviewer.inference.Prediction
    labels: list[str]
    flagged: list[str]
    heatmap_on: bool = True
    opacity: float = 0.45
    colormap: str = "jet"
    cam_label: int = 0
    show_regions: bool = True


def _downscale(arr: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """Area-average ``arr`` by factors ``fx, fy`` (< 1) for crisp minification."""
    h, w = arr.shape[:2]
    nw, nh = max(1, round(w * fx)), max(1, round(h * fy))
    return cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_AREA)


class Viewport(QWidget):
    """An image viewport with W/L, zoom, pan, scroll, measurements, overlays and AI layers."""

    activated = Signal(object)  # self, on mouse press
    frameChanged = Signal(int)
    windowChanged = Signal(float, float)  # centre, width
    cursorInfo = Signal(str)  # readout text for the status bar
    wantFrame = Signal(int)  # frame the viewport waits for (prefetch priority)
    seriesDropped = Signal(object, str)  # self, series key
    filesDropped = Signal(list)  # local paths

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAcceptDrops(True)
        self.setMinimumSize(160, 160)
        self.setAttribute(Qt.WA_OpaquePaintEvent)
        self.state = ViewState()
        self.source: FrameSource | None = None
        self.source_key: str = ""
        self.tool: Shape | None = None
        self.measurements: dict[tuple[str, int], list[Measurement]] = {}
        self.ai: AiOverlay | None = None
        self.show_overlays = True
        self.show_patient = True
        self.active = False
        self.loading_text = ""
        self.message = ""
        self.cine_fps = 10
        self._cine = QTimer(self)
        self._cine.timeout.connect(self._cine_step)
        self._display: np.ndarray | None = None  # uint8 of the shown frame
        self._display_key: tuple | None = None
        self._small: tuple[tuple, QImage, float, float] | None = None
        self._heat: tuple[tuple, np.ndarray] | None = None  # ((frame_uid, label, cmap), rgba)
        self._heat_small: tuple[tuple, QImage, float, float] | None = None
        self._reduced: tuple[tuple, np.ndarray] | None = None  # stored values at the shown resolution
        self._values_cache: tuple[tuple, np.ndarray] | None = None  # modality values of the shown frame
        self._shown_frame: int | None = None
        self._drag: dict[str, Any] | None = None
        self._drawing: Measurement | None = None
        self._default_window: tuple[float, float] | None = None
        self._frames_windowed: set[str] = set()

    # -- source ---------------------------------------------------------------------------------
    def set_source(self, source: FrameSource | None, key: str = "", frame: int = 0) -> None:
        """Show ``source`` (None clears the viewport); starts at ``frame`` with the default window."""
        self._cine.stop()
        self.source = source
        self.source_key = key or (source.uid if source is not None else "")
        self.ai = None
        self._display = None
        self._display_key = None
        self._small = self._heat = self._heat_small = self._reduced = self._values_cache = None
        self._shown_frame = None
        self.state = ViewState()
        self.message = ""
        if source is not None:
            self.state.n_frames = len(source)
            self.state.frame = int(np.clip(frame, 0, len(source) - 1))
            inst = source.instance(self.state.frame)
            sp = source.spacing(self.state.frame)
            aspect = sp[1] / sp[0] if sp else 1.0
            self.state.set_image_size(int(inst.columns), int(inst.rows), aspect)
            self.state.fit(max(self.width(), 1), max(self.height(), 1))
        self._refresh()

    def frame_uid(self) -> tuple[str, int] | None:
        """(series key, frame index) of the shown frame."""
        return None if self.source is None else (self.source_key, self.state.frame)

    def has_image(self) -> bool:
        return (self.source is not None and self._shown_frame == self.state.frame
                and self.source.cached(self.state.frame) is not None)

    def current_instance(self) -> Any:
        return None if self.source is None else self.source.instance(self.state.frame)

    def spacing(self) -> tuple[float, float] | None:
        return None if self.source is None else self.source.spacing(self.state.frame)

    def on_frame_decoded(self, k: int) -> None:
        """Slot for the prefetch: redraw when the frame we wait for arrives."""
        if self.source is not None and k == self.state.frame and not self.has_image():
            self._refresh()

    # -- rendering --------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Re-render the shown frame from the cache (or ask for it) and repaint."""
        src = self.source
        if src is None:
            self.update()
            return
        k = self.state.frame
        stored = src.cached(k)
        if stored is None:
            self.wantFrame.emit(k)
            self.update()
            return
        pipe = src.pipeline(k)
        if self.state.center_w is None:
            self._apply_default_window(stored, pipe)
        self._display = None  # rendered lazily at paint time, at the resolution shown
        if self._shown_frame != k:
            sp = src.spacing(k)
            if self.state.set_image_size(int(stored.shape[1]), int(stored.shape[0]), sp[1] / sp[0] if sp else 1.0):
                self.state.fit(max(self.width(), 1), max(self.height(), 1))  # a frame of another size
            self._shown_frame = k
        self.update()

    def _apply_default_window(self, stored: np.ndarray, pipe: Any) -> None:
        w = pipe.default_window(stored)
        if w is not None:
            self.state.center_w, self.state.width_w = float(w.center), float(w.width)
        else:  # colour or identity display: no window
            self.state.center_w = self.state.width_w = None
        self._default_window = None if w is None else (float(w.center), float(w.width))
        if w is not None:
            self.windowChanged.emit(self.state.center_w, self.state.width_w)

    def transform(self) -> QTransform:
        m = self.state.matrix(self.width(), self.height())
        return QTransform(m[0, 0], m[1, 0], m[0, 1], m[1, 1], m[0, 2], m[1, 2])

    def _factors(self) -> tuple[float, float]:
        """Minification factors for the layers, quantised to quarter octaves (1.0 = full resolution)."""
        out = []
        for z in (self.state.zoom, self.state.zoom / self.state.aspect):
            f = 1.0 if z >= 0.9 else 2.0 ** (math.ceil(math.log2(max(z, 1e-3)) * 4) / 4)
            out.append(min(1.0, f))
        return out[0], out[1]

    def _reduced_stored(self, stored: np.ndarray, fx: float, fy: float) -> np.ndarray:
        """Stored values area-averaged to the shown resolution (cached per frame and factor), so a
        W/L drag on a 2k radiograph windows ~1M pixels instead of 4M and needs no per-frame resize."""
        if fx >= 1.0 and fy >= 1.0:
            return stored
        key = (self.source_key, self.state.frame, fx, fy)
        if self._reduced is not None and self._reduced[0] == key:
            return self._reduced[1]
        if stored.dtype in (np.uint8, np.uint16, np.int16, np.float32):
            small = _downscale(stored, fx, fy)
        else:  # e.g. int32: no area resize in OpenCV; render at full resolution instead
            return stored
        self._reduced = (key, small)
        return small

    def _ensure_display(self) -> None:
        """Render the shown frame (pipeline LUT at the shown resolution) if the state changed."""
        src = self.source
        if src is None or self._shown_frame != self.state.frame:
            return
        stored = src.cached(self.state.frame)
        if stored is None:
            return
        fx, fy = self._factors()
        key = (self.source_key, self.state.frame, self.state.center_w, self.state.width_w, self.state.invert, fx, fy)
        if key == self._display_key and self._display is not None and self._small is not None:
            return
        from medviewer.imaging import Window

        pipe = src.pipeline(self.state.frame)
        win = None
        untouched_lut = pipe.voi_luts and not pipe.windows and (
            (self.state.center_w, self.state.width_w) == self._default_window)
        if self.state.width_w and not untouched_lut:  # (a VOI LUT Sequence is shown as display_image does)
            # the file's VOI LUT Function (e.g. SIGMOID) is kept while dragging
            win = Window(float(self.state.center_w), float(self.state.width_w), pipe.voi_function)
        shown = self._reduced_stored(stored, fx, fy)
        disp = pipe.render(shown, win, invert=self.state.invert)
        if shown is stored and (fx < 1.0 or fy < 1.0):
            disp = _downscale(disp, fx, fy)
        self._display = disp
        self._display_key = key
        qimg = numpy_to_qimage(disp)
        qimg = qimg.convertToFormat(QImage.Format_RGB32)  # the raster engine scales RGB32 ~2x faster
        self._small = (key, qimg, stored.shape[1] / disp.shape[1], stored.shape[0] / disp.shape[0])

    def _heat_layer(self, rgba: np.ndarray, key: tuple) -> tuple[tuple, QImage, float, float]:
        fx, fy = self._factors()
        k = (key, fx, fy)
        if self._heat_small is not None and self._heat_small[0] == k:
            return self._heat_small
        small = _downscale(rgba, fx, fy) if (fx < 1.0 or fy < 1.0) else rgba
        q = numpy_to_qimage(small).convertToFormat(QImage.Format_ARGB32_Premultiplied)
        self._heat_small = (k, q, rgba.shape[1] / small.shape[1], rgba.shape[0] / small.shape[0])
        return self._heat_small

    def _heat_rgba(self) -> np.ndarray | None:
        ai = self.ai
        if ai is None or not ai.heatmap_on or ai.frame_uid != self.frame_uid():
            return None
        cams = getattr(ai.prediction, "cams", None)
        if cams is None or len(cams) == 0:
            return None
        li = int(np.clip(ai.cam_label, 0, len(cams) - 1))
        key = (ai.frame_uid, id(ai.prediction), li, ai.colormap)
        if self._heat is not None and self._heat[0] == key:
            return self._heat[1]
        from medviewer.inference.heatmap import colorize

        cam = np.clip(np.asarray(cams[li], np.float32), 0.0, 1.0)
        rgb = colorize(cam, ai.colormap)
        # low activations stay transparent so the anatomy is readable; full colour above ~0.5
        alpha = np.clip((cam - 0.15) / 0.35, 0.0, 1.0)
        rgba = np.dstack([rgb, (alpha * 255).astype(np.uint8)])
        self._heat = (key, rgba)
        self._heat_small = None
        return rgba

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.black)
        self.paint_content(p, overlays=self.show_overlays, patient=self.show_patient, decorations=True)
        p.end()

    def paint_content(self, p: QPainter, overlays: bool = True, patient: bool = True,
                      decorations: bool = True) -> None:
        """Draw the image, AI layers, measurements and (optionally) the text overlays with ``p``."""
        p.setRenderHint(QPainter.SmoothPixmapTransform, True)
        p.setRenderHint(QPainter.Antialiasing, True)
        t = self.transform()
        self._ensure_display()
        if self._display is not None and self._small is not None and self._shown_frame == self.state.frame:
            _, qimg, sx, sy = self._small
            p.save()
            p.setTransform(t)
            p.scale(sx, sy)
            p.drawImage(QPointF(0, 0), qimg)
            p.restore()
            heat = self._heat_rgba()
            if heat is not None:
                _, himg, hx, hy = self._heat_layer(heat, self._heat[0])
                p.save()
                p.setTransform(t)
                p.scale(hx, hy)
                p.setOpacity(float(np.clip(self.ai.opacity, 0, 1)))
                p.drawImage(QPointF(0, 0), himg)
                p.restore()
            if overlays:
                self._paint_regions(p, t)
            self._paint_measurements(p, t)
            self._paint_scope(p)
        if overlays and self.source is not None:
            self._paint_text(p, patient)
            self._paint_scale_and_orientation(p)
        if decorations:
            self._paint_status(p)
            if self.active:
                p.setPen(QPen(QColor(theme.ACCENT), 2))
                p.setBrush(Qt.NoBrush)
                p.drawRect(self.rect().adjusted(1, 1, -1, -1))

    def _font(self, pt: float = 10, bold: bool = False) -> QFont:
        f = QFont(self.font())
        f.setPointSizeF(pt)
        f.setBold(bold)
        return f

    def _shadow_text(self, p: QPainter, x: float, y: float, text: str, colour: str = theme.OVERLAY_TEXT) -> None:
        p.setPen(QColor(0, 0, 0, 220))
        p.drawText(QPointF(x + 1, y + 1), text)
        p.setPen(QColor(colour))
        p.drawText(QPointF(x, y), text)

    def _paint_text(self, p: QPainter, patient: bool) -> None:
        inst = self.current_instance()
        if inst is None:
            return
        s = self.state
        win = (s.center_w, s.width_w) if s.width_w is not None else None
        flips = "".join(x for x in ("FlipH" if s.flip_h else "", " FlipV" if s.flip_v else "")).strip()
        c = corner_text(inst, s.frame, s.n_frames, win, s.zoom, s.invert, s.rotation, flips, patient)
        if self._cine.isActive():
            c["bl"][0] += f"   ▶ {self.cine_fps} fps"
        p.setFont(self._font(9.5))
        fm = QFontMetrics(p.font())
        lh = fm.height()
        m = 8
        for i, line in enumerate(c["tl"]):
            self._shadow_text(p, m, m + fm.ascent() + i * lh, line)
        for i, line in enumerate(c["tr"]):
            self._shadow_text(p, self.width() - m - fm.horizontalAdvance(line), m + fm.ascent() + i * lh, line)
        bottom = self.height() - m - fm.descent()
        for i, line in enumerate(reversed(c["bl"])):
            self._shadow_text(p, m, bottom - i * lh, line)
        for i, line in enumerate(reversed(c["br"])):
            self._shadow_text(p, self.width() - m - fm.horizontalAdvance(line), bottom - i * lh, line)

    def _paint_scale_and_orientation(self, p: QPainter) -> None:
        s = self.state
        w, h = self.width(), self.height()
        mmpp = s.screen_mm_per_pixel(self.spacing())
        p.setFont(self._font(9))
        fm = QFontMetrics(p.font())
        if mmpp:
            length_mm = nice_scale_length_mm(mmpp, min(w * 0.2, 200))
            if length_mm > 0:
                px = length_mm / mmpp
                y = h - 44
                x1 = w - 14
                x0 = x1 - px
                pen = QPen(QColor(theme.OVERLAY_TEXT), 1.5)
                for dx, colour in ((1, QColor(0, 0, 0, 200)), (0, QColor(theme.OVERLAY_TEXT))):
                    pen.setColor(colour)
                    p.setPen(pen)
                    p.drawLine(QPointF(x0 + dx, y + dx), QPointF(x1 + dx, y + dx))
                    for i in range(11):  # tick every tenth, long at ends and middle
                        tx = x0 + px * i / 10 + dx
                        tl = 7 if i in (0, 5, 10) else 4
                        p.drawLine(QPointF(tx, y + dx), QPointF(tx, y - tl + dx))
                label = f"{length_mm:g} mm" if length_mm < 10 or length_mm % 10 else f"{length_mm / 10:g} cm"
                if getattr(self.current_instance(), "pixel_spacing_source", None) == "ImagerPixelSpacing":
                    label += " (detector)"  # Imager Pixel Spacing: size at the detector, not the patient
                self._shadow_text(p, x0 - fm.horizontalAdvance(label) - 6, y + fm.ascent() / 2 - 2, label)
        inst = self.current_instance()
        if inst is None:
            return
        ds = getattr(inst, "dataset", None)
        po = None
        if ds is not None:
            po = ds.get("PatientOrientation", None)
        labels = orientation_labels(getattr(inst, "image_orientation_patient", None), po,
                                    s.rotation, s.flip_h, s.flip_v)
        if not labels:
            return
        p.setFont(self._font(12, bold=True))
        fm = QFontMetrics(p.font())
        cx, cy = w / 2, h / 2
        self._shadow_text(p, 8, cy + fm.ascent() / 2, labels["left"])
        self._shadow_text(p, w - 8 - fm.horizontalAdvance(labels["right"]), cy + fm.ascent() / 2, labels["right"])
        self._shadow_text(p, cx - fm.horizontalAdvance(labels["top"]) / 2, 8 + fm.ascent(), labels["top"])
        self._shadow_text(p, cx - fm.horizontalAdvance(labels["bottom"]) / 2, h - 8 - fm.descent(),
                          labels["bottom"])

    def _paint_status(self, p: QPainter) -> None:
        lines = []
        if self.source is None:
            lines.append(self.message or "Drop DICOM/PNG/JPEG files or folders here, or File > Open")
        else:
            if not self.has_image():
                lines.append(self.message or f"Loading image {self.state.frame + 1}…")
        if not lines:
            return
        p.setFont(self._font(11))
        fm = QFontMetrics(p.font())
        for i, line in enumerate(lines):
            self._shadow_text(p, (self.width() - fm.horizontalAdvance(line)) / 2,
                              self.height() / 2 + i * fm.height(), line, theme.MUTED)

    def _paint_scope(self, p: QPainter) -> None:
        """Label an AI result outside the model's intended use on the image itself (and so in exports)."""
        ai = self.ai
        if ai is None or ai.frame_uid != self.frame_uid():
            return
        text = scope_label(getattr(ai.prediction, "applicability", None))
        if text is None:
            return
        p.setFont(self._font(10, bold=True))
        fm = QFontMetrics(p.font())
        self._shadow_text(p, (self.width() - fm.horizontalAdvance(text)) / 2, self.height() - 3.6 * fm.height(),
                          text, theme.FLAG)

    def _paint_regions(self, p: QPainter, t: QTransform) -> None:
        ai = self.ai
        if ai is None or not ai.show_regions or ai.frame_uid != self.frame_uid():
            return
        regions = getattr(ai.prediction, "regions", []) or []
        p.setFont(self._font(9.5, bold=True))
        for i, r in enumerate(regions):
            contour = np.asarray(getattr(r, "contour", np.zeros((0, 2))), float).reshape(-1, 2)
            pen = QPen(QColor(theme.REGION), 2)
            pen.setCosmetic(True)
            p.setPen(pen)
            p.setBrush(Qt.NoBrush)
            if len(contour) >= 3:
                poly = QPolygonF([QPointF(x + 0.5, y + 0.5) for x, y in contour])
                p.drawPolygon(t.map(poly))
            x0, y0, x1, y1 = r.bbox
            corners = [t.map(QPointF(x, y)) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
            top = min(corners, key=lambda q: (q.y(), q.x()))
            text = f"{i + 1} {r.label}"
            fm = QFontMetrics(p.font())
            # keep the tag on screen and clear of the corner text (inside the box when at the top)
            tx = min(max(top.x(), 8.0), self.width() - fm.horizontalAdvance(text) - 8)
            ty = top.y() - 6
            if ty < 6 * fm.height():
                ty = max(top.y(), 6 * fm.height()) + fm.ascent() + 4
            self._shadow_text(p, tx, ty, text, theme.REGION)

    def _values(self) -> tuple[np.ndarray | None, str]:
        """Modality values of the shown frame (HU on CT) and their unit."""
        if self.source is None:
            return None, ""
        stored = self.source.cached(self.state.frame)
        if stored is None:
            return None, ""
        inst = self.current_instance()
        unit = "HU" if str(getattr(inst, "modality", "")) == "CT" else ""
        key = (self.source_key, self.state.frame)
        if self._values_cache is not None and self._values_cache[0] == key:
            return self._values_cache[1], unit
        if stored.ndim == 3:
            vals = stored.astype(np.float32)
        else:
            vals = self.source.pipeline(self.state.frame).modality_values(stored)
        self._values_cache = (key, vals)  # ROI statistics reuse it while the frame is shown
        return vals, unit

    def _paint_measurements(self, p: QPainter, t: QTransform) -> None:
        items = list(self.measurements.get(self.frame_uid() or ("", 0), []))
        if self._drawing is not None:
            items.append(self._drawing)
        if not items:
            return
        values = None
        unit = ""
        if any(m.shape != Shape.DISTANCE for m in items):
            values, unit = self._values()
        sp = self.spacing()
        p.setFont(self._font(9.5))
        fm = QFontMetrics(p.font())
        for m in items:
            pen = QPen(QColor(theme.MEASURE), 1.6)
            pen.setCosmetic(True)
            p.setPen(pen)
            p.setBrush(Qt.NoBrush)
            a, b = t.map(QPointF(*m.p0)), t.map(QPointF(*m.p1))
            if m.shape == Shape.DISTANCE:
                p.drawLine(a, b)
                for q in (a, b):
                    p.drawEllipse(q, 3, 3)
                anchor = QPointF(max(a.x(), b.x()) + 8, (a.y() + b.y()) / 2)
            else:
                path = QPainterPath()
                rect = QRectF(QPointF(*m.p0), QPointF(*m.p1)).normalized()
                if m.shape == Shape.ELLIPSE:
                    path.addEllipse(rect)
                else:
                    path.addRect(rect)
                p.drawPath(t.map(path))
                br = t.mapRect(rect)
                anchor = QPointF(br.right() + 8, br.top() + fm.ascent())
            lines = describe(m, values, sp, unit)
            width = max((fm.horizontalAdvance(x) for x in lines), default=0)
            if anchor.x() + width > self.width() - 4:
                anchor.setX(max(4, min(a.x(), b.x()) - width - 8))
            if lines:  # a dark plate behind the values keeps them legible on bright anatomy
                plate = QRectF(anchor.x() - 4, anchor.y() - fm.ascent() - 3, width + 8, len(lines) * fm.height() + 6)
                p.setPen(Qt.NoPen)
                p.setBrush(QColor(0, 0, 0, 160))
                p.drawRoundedRect(plate, 3, 3)
            for i, line in enumerate(lines):
                self._shadow_text(p, anchor.x(), anchor.y() + i * fm.height(), line, theme.MEASURE)

    # -- commands -----------------------------------------------------------------------------------
    def set_frame(self, k: int) -> None:
        if self.source is None:
            return
        k = int(np.clip(k, 0, len(self.source) - 1))
        if k != self.state.frame:
            self.state.frame = k
            self._drawing = None
            self._refresh()
            self.frameChanged.emit(k)

    def step(self, delta: int) -> None:
        self.set_frame(self.state.frame + delta)

    def set_window(self, center: float, width: float) -> None:
        self.state.center_w, self.state.width_w = float(center), max(1.0, float(width))
        self._refresh()
        self.windowChanged.emit(self.state.center_w, self.state.width_w)

    def default_window(self) -> None:
        if self._default_window is not None:
            self.set_window(*self._default_window)

    def apply_preset(self, preset: Any) -> None:
        """Apply a :class:`medviewer.imaging.Preset` (name, center, width)."""
        self.set_window(preset.center, preset.width)

    def toggle_invert(self) -> None:
        self.state.invert = not self.state.invert
        self._refresh()

    def reset(self) -> None:
        s = self.state
        s.rotation, s.flip_h, s.flip_v, s.invert = 0, False, False, False
        s.fit(self.width(), self.height())
        if self._default_window is not None:
            s.center_w, s.width_w = self._default_window
            self.windowChanged.emit(*self._default_window)
        self._refresh()

    def fit(self) -> None:
        self.state.fit(self.width(), self.height())
        self.update()

    def actual_size(self) -> None:
        self.state.actual_size()
        self.update()

    def rotate(self, degrees: int) -> None:
        self.state.rotate(degrees)
        if self.state.fitted:
            self.state.fit(self.width(), self.height())
        self.update()

    def flip(self, horizontal: bool) -> None:
        if horizontal:
            self.state.flip_h = not self.state.flip_h
        else:
            self.state.flip_v = not self.state.flip_v
        self.update()

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

    def delete_measurements(self) -> None:
        uid = self.frame_uid()
        if uid is not None:
            self.measurements.pop(uid, None)
        self._drawing = None
        self.update()

    def add_measurement(self, m: Measurement) -> None:
        uid = self.frame_uid()
        if uid is not None:
            self.measurements.setdefault(uid, []).append(m)
            self.update()

    def set_ai(self, ai: AiOverlay | None) -> None:
        self.ai = ai  # the heat layers are cached by (frame, prediction, label, colormap)
        if ai is None:
            self._heat = self._heat_small = None
        self.update()

    def centre_on(self, bbox: tuple[float, float, float, float]) -> None:
        self.state.centre_on(bbox, self.width(), self.height())
        self.update()

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
        if self.state.fitted:
            self.state.fit(max(self.width(), 1), max(self.height(), 1))
        super().resizeEvent(event)

    def mousePressEvent(self, e: Any) -> None:  # noqa: N802
        self.activated.emit(self)
        self.setFocus()
        pos = e.position()
        self._drag = {"button": e.button(), "start": pos, "last": pos,
                      "width": self.state.width_w, "anchor": pos}
        if e.button() == Qt.LeftButton and self.tool is not None and self.has_image():
            ip = self.state.to_image(pos.x(), pos.y(), self.width(), self.height())
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
            self._drawing.p1 = self.state.to_image(pos.x(), pos.y(), self.width(), self.height())
            self.update()
        elif b == Qt.LeftButton and self.state.width_w is not None:
            sens = max(float(d["width"] or 1.0), 1.0) / 500.0
            self.state.drag_window(dx, dy, sens)
            self._refresh()
            self.windowChanged.emit(self.state.center_w, self.state.width_w)
        elif b == Qt.RightButton:
            self.state.zoom_by(math.exp(-dy * 0.01), (d["anchor"].x(), d["anchor"].y()),
                               (self.width(), self.height()))
            self.update()
        elif b == Qt.MiddleButton:
            self.state.pan_by(dx, dy, self.width(), self.height())
            self.update()
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
            self.state.zoom_by(1.15 if dy > 0 else 1 / 1.15, (pos.x(), pos.y()), (self.width(), self.height()))
            self.update()
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
        x, y = self.state.to_image(sx, sy, self.width(), self.height())
        c, r = int(math.floor(x)), int(math.floor(y))
        if not (0 <= r < stored.shape[0] and 0 <= c < stored.shape[1]):
            self.cursorInfo.emit("")
            return
        self.cursorInfo.emit(self.readout_text(r, c))

    def readout_text(self, r: int, c: int) -> str:
        """``x, y``, stored value and modality value (HU on CT) of pixel (row r, col c)."""
        stored = self.source.cached(self.state.frame) if self.source is not None else None
        if stored is None:
            return ""
        v = stored[r, c]
        if stored.ndim == 3:
            return f"x {c}  y {r}   RGB {tuple(int(a) for a in v)}"
        inst = self.current_instance()
        mv = float(self.source.pipeline(self.state.frame).modality_values(stored[r:r + 1, c:c + 1])[0, 0])
        mod = str(getattr(inst, "modality", ""))
        unit = "HU" if mod == "CT" else "value"
        text = f"x {c}  y {r}   stored {int(v)}"
        if mv != float(v) or mod == "CT":
            text += f"   {unit} {mv:.1f}" if unit == "value" else f"   {mv:.0f} HU"
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
