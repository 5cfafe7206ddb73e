"""What a :class:`~medviewer.gui.viewport.Viewport` paints over the image: corner text, scale bar and
orientation labels, measurements with their values, the status line and the link badge.

A mixin of the viewport widget (it reads the widget's model, state and source); the texts come from
:mod:`medviewer.workstation.text_overlays`, the measurement values from :mod:`medviewer.workstation.measure`.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPainterPath, QPen, QTransform

from medviewer.gui import theme
from medviewer.workstation.measure import Shape, describe
from medviewer.workstation.text_overlays import corner_text, orientation_labels
from medviewer.workstation.viewport import nice_scale_length_mm

__all__ = ["ViewportPainting"]

#: what the link badge calls each linked property
_LINK_NAMES = {"scroll": "scroll", "zoom": "zoom/pan", "window": "W/L"}


class ViewportPainting:
    """The overlay painters of the viewport widget (a mixin: ``self`` is the :class:`QWidget`)."""

    model: Any
    source: Any
    message: str
    measurements: Any
    _drawing: Any
    _cine: Any
    cine_fps: int

    def _paint_link_badge(self, p: QPainter) -> None:
        """A small badge at the top centre naming what is linked to other viewports."""
        links = [n for k, n in _LINK_NAMES.items() if k in self.model.links]
        if not links:
            return
        text = "linked: " + " · ".join(links)
        p.setFont(self._font(8.5, bold=True))
        fm = QFontMetrics(p.font())
        w, h = fm.horizontalAdvance(text) + 12, fm.height() + 4
        rect = QRectF((self.width() - w) / 2, 4, w, h)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(theme.ACCENT))
        p.drawRoundedRect(rect, 4, 4)
        p.setPen(QColor("white"))
        p.drawText(rect, Qt.AlignCenter, text)

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
                from medviewer.io.enum import (
                    PixelSpacingSource,  # medviewer.io (pydicom) loads with the first image
                )

                if getattr(self.current_instance(), "pixel_spacing_source", None) == PixelSpacingSource.IMAGER_PIXEL_SPACING:
                    label += " (detector)"  # Imager Pixel Spacing: size at the detector, not the patient
                self._shadow_text(p, x0 - fm.horizontalAdvance(label) - 6, y + fm.ascent() / 2 - 2, label)
        inst = self.current_instance()
        if inst is None:
            return
        from medviewer.io import header  # pydicom: loaded with the first image, not before the window shows

        ds = getattr(inst, "dataset", None)
        frame = self.source.frames[s.frame][1] if self.source is not None and s.frame < len(self.source) else 0
        # the header reader: this frame's Plane Orientation (per-frame over shared), else Patient Orientation
        iop = header.image_orientation(ds, frame) or getattr(inst, "image_orientation_patient", None)
        po = header.text(ds, "PatientOrientation").split("\\") if header.text(ds, "PatientOrientation") else None
        labels = orientation_labels(iop, po, s.rotation, s.flip_h, s.flip_v)
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
