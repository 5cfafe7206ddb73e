"""Dialogs: model card, DICOM tag browser, shortcuts, export options, and one-line error messages."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QTreeWidget,
    QTreeWidgetItem,
    QTreeWidgetItemIterator,
    QVBoxLayout,
    QWidget,
)

from medviewer.gui import theme
from medviewer.workstation.keybindings import shortcut_table

__all__ = ["show_error", "batch_message_box", "ModelCardDialog", "TagBrowser", "ShortcutsDialog", "ExportDialog", "card_html"]


def show_error(parent: QWidget | None, title: str, reason: str) -> None:
    """A modal error dialog with a one-line reason (the app goes on afterwards)."""
    line = (reason or "unknown error").strip().splitlines()[0]
    QMessageBox.critical(parent, title, line)


def batch_message_box(parent: QWidget | None, title: str, line: str, details: list[str],
                      warning: bool = False) -> QMessageBox:
    """One dialog for a batch of failures (a folder with many bad files): a one-line summary and, under
    "Show Details...", one ``file: reason`` line per failure. Window-modal but not blocking (``open()``):
    the caller gets the box back (tests read and close it) and the app goes on at once.
    """
    box = QMessageBox(QMessageBox.Warning if warning else QMessageBox.Critical, title,
                      (line or "unknown error").strip().splitlines()[0], QMessageBox.Ok, parent)
    if details:
        box.setDetailedText("\n".join(d.strip().splitlines()[0] if d.strip() else d for d in details))
    box.setAttribute(Qt.WA_DeleteOnClose)
    box.open()
    return box


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v * 100:.1f} %" if pct else f"{v:.3f}"
    return html.escape(str(v))


def card_html(pkg: Any) -> str:
    """The model card as HTML: identity, intended use, limitations, labels, operating points,
    metrics (with AUROC 95 % CI), comparisons, training data and citation, version and hash."""
    c = pkg.card
    e = html.escape
    rows = []
    rows.append(f"<h2 style='margin-bottom:2px'>{e(c.name)} <span style='color:{theme.MUTED}'>v{e(c.version)}</span></h2>")
    rows.append(f"<p>{e(c.description)}</p>")
    rows.append(f"<h3>Intended use</h3><p>{e(c.intended_use)}</p>")
    rows.append(f"<h3 style='color:{theme.FLAG}'>Limitations</h3><p>{e(c.limitations)}</p>")
    neg = f" (negative label: {e(c.negative_label)})" if c.negative_label else ""
    rows.append(f"<h3>Labels</h3><p>{', '.join(e(lab) for lab in c.labels)} — task {e(c.task.value)}{neg}</p>")
    inp = c.input
    pre = c.preprocessing
    rows.append(f"<p>Input {inp.channels}×{inp.height}×{inp.width} ({e(pre.resize.value)}, {e(pre.interpolation)}),"
                f" from the displayed 8-bit image.</p>")
    if c.operating_points:
        rows.append("<h3>Operating points</h3><table cellpadding=4><tr><th align=left>label</th><th>threshold</th>"
                    "<th>criterion</th><th>sensitivity</th><th>specificity</th><th align=left>chosen on</th></tr>")
        for op in c.operating_points:
            rows.append(f"<tr><td>{e(op.label)}</td><td align=center>{op.threshold:.3f}</td><td>{e(op.criterion)}</td>"
                        f"<td align=center>{_fmt(op.sensitivity, True)}</td><td align=center>{_fmt(op.specificity, True)}"
                        f"</td><td>{e(op.split)}</td></tr>")
        rows.append("</table>")
    if c.metrics or c.comparisons:
        entries = [(c.name, m) for m in c.metrics] + [(r.name, r.metrics) for r in c.comparisons]
        splits = {m.split for _, m in entries}
        one = len(splits) == 1
        caption = f"<p style='color:{theme.MUTED}'>Split: {e(next(iter(splits)))}</p>" if one else ""
        rows.append(f"<h3>Metrics</h3>{caption}<table cellpadding=4><tr><th align=left>model</th><th>n</th>"
                    "<th>AUROC</th><th>95 % CI</th><th>sens.</th><th>spec.</th><th>accuracy</th></tr>")
        for name, m in entries:
            ci = f"{m.auroc_ci95[0]:.3f}–{m.auroc_ci95[1]:.3f}" if m.auroc_ci95 else "–"
            label = e(name) if one else f"{e(name)} · {e(m.split)}"
            rows.append(f"<tr><td>{label}</td><td align=center>{m.n}</td>"
                        f"<td align=center>{_fmt(m.auroc)}</td><td align=center>{ci}</td>"
                        f"<td align=center>{_fmt(m.sensitivity, True)}</td><td align=center>{_fmt(m.specificity, True)}</td>"
                        f"<td align=center>{_fmt(m.accuracy, True)}</td></tr>")
        rows.append("</table>")
    t = c.training
    counts = ", ".join(f"{e(k)} {v}" for k, v in t.counts.items())
    rows.append("<h3>Training data</h3>"
                f"<p>{e(t.dataset)} — {e(t.split)}{(' — ' + counts) if counts else ''}<br>"
                f"Licence: {e(t.data_licence)} · {t.epochs} epochs · seed {t.seed}"
                f"{(' · ' + e(t.architecture)) if t.architecture else ''}</p>"
                f"<p><i>Citation:</i> {e(t.citation)}</p>")
    plots = [pl for pl in getattr(pkg, "plots", ()) or () if str(pl).lower().endswith(".png")]
    if plots:
        rows.append("<h3>Evaluation plots</h3><p>")
        for pl in plots[:6]:
            rows.append(f"<img src='{e(Path(pl).resolve().as_uri())}' width=340> ")
        rows.append("</p>")
    rows.append("<h3>Package</h3><p>"
                f"Licence {e(c.license)} · created {e(c.created)} · ONNX opset {c.onnx_opset} · "
                f"{e(c.producer.name)} {e(c.producer.version)}<br>"
                f"Authors: {e(', '.join(c.authors) or '–')}<br>"
                f"SHA-256 <code>{e(c.sha256)}</code><br>Path: <code>{e(str(pkg.path))}</code></p>")
    return "\n".join(rows)


class ModelCardDialog(QDialog):
    """Shows a model package's card (see :func:`card_html`)."""

    def __init__(self, pkg: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Model card — {pkg.card.name} {pkg.card.version}")
        self.resize(760, 720)
        lay = QVBoxLayout(self)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.document().setDefaultStyleSheet(
            f"h2,h3 {{ color: #e6e9ed; }} th {{ color: {theme.MUTED}; }} code {{ color: #9fc3e6; }}")
        self.browser.setHtml(card_html(pkg))
        lay.addWidget(self.browser)
        bb = QDialogButtonBox(QDialogButtonBox.Close)
        bb.rejected.connect(self.reject)
        bb.accepted.connect(self.accept)
        lay.addWidget(bb)


def _value_text(elem: Any) -> str:
    if elem.VR == "SQ":
        return f"<sequence of {len(elem.value)} item(s)>"
    if elem.tag == 0x7FE00010 or elem.VR in ("OB", "OW", "OF", "OD", "OL", "UN"):
        n = len(elem.value) if elem.value is not None else 0
        return f"<{elem.VR}, {n} bytes>"
    s = str(elem.value)
    return s if len(s) <= 200 else s[:200] + "…"


class TagBrowser(QDialog):
    """The DICOM header as a tree (nested sequences), filtered by keyword, tag or value."""

    def __init__(self, dataset: Any, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"DICOM tags — {title}" if title else "DICOM tags")
        self.resize(820, 700)
        lay = QVBoxLayout(self)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search keyword, tag (e.g. 0028,0030) or value…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.filter)
        lay.addWidget(self.search)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(4)
        self.tree.setHeaderLabels(["Tag", "Keyword", "VR", "Value"])
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        lay.addWidget(self.tree)
        if dataset is None:
            QTreeWidgetItem(self.tree, ["", "(not a DICOM file: no tags)", "", ""])
        else:
            self._fill(self.tree.invisibleRootItem(), dataset)
        for i, w in enumerate((110, 230, 40)):
            self.tree.setColumnWidth(i, w)
        self.tree.expandToDepth(0)
        self.count = QLabel("")
        self.count.setObjectName("muted")
        lay.addWidget(self.count)
        bb = QDialogButtonBox(QDialogButtonBox.Close)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)

    def _fill(self, parent: QTreeWidgetItem, ds: Any) -> None:
        for elem in ds:
            tag = f"{elem.tag.group:04X},{elem.tag.element:04X}"
            item = QTreeWidgetItem(parent, [tag, elem.keyword or elem.name, elem.VR, _value_text(elem)])
            if elem.VR == "SQ":
                for i, sub in enumerate(elem.value):
                    it = QTreeWidgetItem(item, ["", f"Item {i + 1}", "", ""])
                    self._fill(it, sub)

    def filter(self, text: str) -> int:
        """Show rows matching ``text`` (and their ancestors); returns the number of matches."""
        t = text.strip().lower().replace("(", "").replace(")", "").replace(" ", "")
        n = 0
        it = QTreeWidgetItemIterator(self.tree)
        items = []
        while it.value():
            items.append(it.value())
            it += 1
        for item in items:
            item.setHidden(bool(t))
        for item in items:
            if not t:
                continue
            hay = " ".join(item.text(i) for i in range(4)).lower()
            if t in hay or t in item.text(0).lower().replace(",", "") or t in hay.replace(" ", ""):
                n += 1
                p = item
                while p is not None:
                    p.setHidden(False)
                    p.setExpanded(True)
                    p = p.parent()
        self.count.setText(f"{n} match(es)" if t else "")
        return n


class ShortcutsDialog(QDialog):
    """Help > Shortcuts: every binding of :mod:`medviewer.workstation.keybindings`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard and mouse shortcuts")
        self.resize(640, 720)
        lay = QVBoxLayout(self)
        rows = shortcut_table()
        self.table = QTableWidget(len(rows), 3)
        self.table.setHorizontalHeaderLabels(["Group", "Key / mouse", "Action"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        for r, (menu, key, text) in enumerate(rows):
            for c, v in enumerate((menu, key, text)):
                self.table.setItem(r, c, QTableWidgetItem(v))
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.Stretch)
        self.table.resizeColumnsToContents()
        lay.addWidget(self.table)
        bb = QDialogButtonBox(QDialogButtonBox.Close)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)


class ExportDialog(QDialog):
    """Options of File > Export viewport as PNG."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export viewport")
        lay = QVBoxLayout(self)
        self.overlays = QCheckBox("Include overlays (text, scale bar, measurements, AI outlines)")
        self.overlays.setChecked(True)
        self.patient = QCheckBox("Include patient identification (name, ID, sex/age)")
        self.patient.setChecked(False)
        self.overlays.toggled.connect(self.patient.setEnabled)
        lay.addWidget(self.overlays)
        row = QHBoxLayout()
        row.addSpacing(18)
        row.addWidget(self.patient)
        lay.addLayout(row)
        note = QLabel("The heatmap is exported as shown.")
        note.setObjectName("muted")
        lay.addWidget(note)
        bb = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)
        self.setWindowModality(Qt.WindowModal)
