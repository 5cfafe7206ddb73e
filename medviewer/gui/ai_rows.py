"""The AI panel's row widgets: a score bar with its operating point (:class:`ScoreRow`), the heat map's colour
bar (:class:`ColorBar`) and one model's section when several models scored an image (:class:`ModelSection`).

Used by :class:`medviewer.gui.ai_panel.AiPanel` (which re-exports them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen
from PySide6.QtWidgets import QFrame, QLabel, QPushButton, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from medviewer.gui import theme
from medviewer.gui.viewport import numpy_to_qimage
from medviewer.inference.session import operating_threshold

__all__ = ["ScoreRow", "ColorBar", "ModelSection"]


class ScoreRow(QWidget):
    """Label, probability bar with the operating-point tick, and the value; amber when flagged."""

    def __init__(self, label: str, score: float, threshold: float | None, flagged: bool, negative: bool,
                 parent: QWidget | None = None, muted: bool = False) -> None:
        super().__init__(parent)
        self.label, self.score, self.threshold = label, float(score), threshold
        self.flagged, self.negative = flagged and not muted, negative
        self.muted = muted  # outside the model's intended use: grey, never "FLAGGED"
        self.setMinimumHeight(52)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        tip = f"{label}: probability {score:.3f}"
        if threshold is not None:
            tip += f"; operating point {threshold:.3f} ({'at or above: flagged' if flagged else 'below'})"
        if negative:
            tip += " (the 'no finding' label: never flagged)"
        if muted:
            tip += " -- outside the model's intended use: not a finding"
        self.setToolTip(tip)

    def paintEvent(self, event: Any) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing, True)
        w = self.width()
        f = QFont(self.font())
        f.setPointSizeF(10)
        f.setBold(self.flagged)
        p.setFont(f)
        fm = QFontMetrics(f)
        colour = QColor(theme.FLAG) if self.flagged else QColor(theme.MUTED if self.negative or self.muted else "#d5d9de")
        p.setPen(colour)
        p.drawText(0, fm.ascent() + 2, self.label)
        right = f"{self.score * 100:.1f} %"
        p.drawText(w - fm.horizontalAdvance(right), fm.ascent() + 2, right)
        if self.flagged:
            tag = "FLAGGED"
            sf = QFont(f)
            sf.setPointSizeF(8)
            p.setFont(sf)
            sfm = QFontMetrics(sf)
            x = fm.horizontalAdvance(self.label) + 10
            r = QRectF(x, 3, sfm.horizontalAdvance(tag) + 10, fm.height() - 2)
            p.setBrush(QColor(theme.FLAG))
            p.setPen(Qt.NoPen)
            p.drawRoundedRect(r, 3, 3)
            p.setPen(QColor("#111"))
            p.drawText(r, Qt.AlignCenter, tag)
        y = fm.height() + 8
        bar = QRectF(0, y, w - 1, 10)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor("#2e333a"))
        p.drawRoundedRect(bar, 3, 3)
        fill = QRectF(0, y, max(2.0, (w - 1) * float(np.clip(self.score, 0, 1))), 10)
        p.setBrush(QColor(theme.FLAG) if self.flagged else QColor("#5b6570" if self.negative or self.muted else theme.ACCENT))
        p.drawRoundedRect(fill, 3, 3)
        if self.threshold is not None:
            x = (w - 1) * float(np.clip(self.threshold, 0, 1))
            p.setPen(QPen(QColor("#ffffff"), 2))
            p.drawLine(int(x), int(y - 4), int(x), int(y + 14))
            sf = QFont(self.font())
            sf.setPointSizeF(7.5)
            p.setFont(sf)
            p.setPen(QColor(theme.MUTED))
            text = f"OP {self.threshold:.2f}"
            sfm = QFontMetrics(sf)
            tx = min(max(0.0, x - sfm.horizontalAdvance(text) / 2), w - sfm.horizontalAdvance(text))
            p.drawText(int(tx), int(y + 14 + sfm.ascent()), text)
        p.end()


class ColorBar(QWidget):
    """Colour bar legend of the heatmap colour map (relative class activation, 0 = none, 1 = peak)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.colormap = "jet"
        self.setMinimumHeight(34)
        self._img = None

    def set_colormap(self, name: str) -> None:
        from medviewer.inference.heatmap import colorize

        self.colormap = name
        ramp = np.tile(np.linspace(0, 1, 256, dtype=np.float32)[None, :], (8, 1))
        self._img = numpy_to_qimage(np.ascontiguousarray(colorize(ramp, name)))
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802
        p = QPainter(self)
        if self._img is not None:
            p.drawImage(QRectF(0, 2, self.width(), 12), self._img)
        f = QFont(self.font())
        f.setPointSizeF(8)
        p.setFont(f)
        p.setPen(QColor(theme.MUTED))
        fm = QFontMetrics(f)
        y = 16 + fm.ascent()
        p.drawText(0, y, "0")
        mid = "relative activation (CAM)"
        p.drawText(int((self.width() - fm.horizontalAdvance(mid)) / 2), y, mid)
        p.drawText(self.width() - fm.horizontalAdvance("1"), y, "1")
        p.end()


class ModelSection(QFrame):
    """One model's part of the AI panel when several models scored the image (see the module docstring).

    A header button with the model's name and version that folds the body, the verdict line under it (always
    shown: ``"Flagged Effusion"``, ``"Outside intended use: patient age 64 y; model: 1–5 y"``, ``"Not run:
    ..."``), and the body: the operating points, its score rows (each with its operating-point tick) or,
    outside the intended use, the reasons and grey rows (none when routing did not run the model). Expanded
    when the model's findings may be shown, collapsed otherwise.
    """

    showAnywayRequested = Signal()  # noqa: N815 - the preferred model's withheld result, shown anyway

    def __init__(self, result: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result = result
        card = result.package.card
        app = result.assessment
        pred = None if result.entry is None else result.entry.prediction
        self.setObjectName("modelSection")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 2, 0, 2)
        lay.setSpacing(4)
        if pred is None:
            verdict = "not run: " + "; ".join(app.reasons if app is not None else ())
        elif app is not None and app.withheld:
            verdict = "outside intended use: " + "; ".join(app.reasons)
        elif pred.flagged:
            verdict = "flagged " + ", ".join(pred.flagged)
        else:
            verdict = "no finding at the operating points"
        self.verdict = verdict
        self.header = QToolButton()
        self.header.setCheckable(True)
        self.header.setChecked(result.shown)
        self.header.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.header.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.header.setText(f"{card.name} {card.version}")
        self.header.setToolTip(f"{card.name} {card.version}: {verdict}\nIntended use: {card.intended_use}")
        self.header.setStyleSheet("QToolButton { border: none; font-weight: bold; text-align: left; }")
        lay.addWidget(self.header)
        colour = theme.FLAG if (result.shown and pred is not None and pred.flagged) else (
            theme.OK if result.shown else theme.MUTED)
        self.verdict_label = QLabel(verdict[:1].upper() + verdict[1:])  # always visible, wrapped (never elided)
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setStyleSheet(f"color: {colour}; font-size: 9pt; margin-left: 14px;")
        lay.addWidget(self.verdict_label)
        self.body = QWidget()
        bl = QVBoxLayout(self.body)
        bl.setContentsMargins(14, 0, 0, 0)
        bl.setSpacing(4)
        ops = [f"{op.label} {op.threshold:.2f} ({op.criterion})" for op in card.operating_points]
        if ops:
            note = QLabel("Operating points: " + ", ".join(ops))
            note.setWordWrap(True)
            note.setStyleSheet(f"color: {theme.MUTED}; font-size: 8pt;")
            bl.addWidget(note)
        if app is not None and app.out_of_scope:
            for reason in app.reasons:
                r = QLabel("• " + reason)
                r.setWordWrap(True)
                r.setStyleSheet("color: #e8dcc8; font-size: 9pt;")
                bl.addWidget(r)
        self.rows: list[ScoreRow] = []
        if pred is not None:
            muted = app is not None and app.withheld
            neg = getattr(card, "negative_label", None)
            for lab in pred.labels:
                row = ScoreRow(lab, pred.scores.get(lab, 0.0), operating_threshold(card, lab), lab in pred.flagged,
                               lab == neg, muted=muted)
                self.rows.append(row)
                bl.addWidget(row)
            if muted and result.preferred:
                btn = QPushButton("Show anyway")
                btn.setToolTip("Show the withheld findings, heat map and regions, labelled as outside intended use")
                btn.clicked.connect(self.showAnywayRequested)
                bl.addWidget(btn, 0, Qt.AlignLeft)
        lay.addWidget(self.body)
        self.header.toggled.connect(self._fold)
        self._fold(result.shown)

    def _fold(self, expanded: bool) -> None:
        self.header.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.body.setVisible(expanded)

    @property
    def expanded(self) -> bool:
        """True when the body (score rows) is shown."""
        return self.header.isChecked()
