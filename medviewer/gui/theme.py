"""Dark reading-room theme: low-luminance greys, a single accent, amber/red reserved for AI flags."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from medviewer.workstation.overlay import REGION_COLOR, SCOPE_COLOR

__all__ = ["apply_theme", "ACCENT", "FLAG", "OK", "OVERLAY_TEXT", "MEASURE", "REGION", "MUTED"]

BG = "#121417"
PANEL = "#1b1e22"
PANEL_2 = "#23272d"
BORDER = "#2e333a"
TEXT = "#d5d9de"
MUTED = "#8a929c"
ACCENT = "#3d8fd6"
FLAG = "#{:02x}{:02x}{:02x}".format(*SCOPE_COLOR)  # the on-image intended-use line's amber
OK = "#4fbf7f"
OVERLAY_TEXT = "#e8e8c8"
MEASURE = "#53e0ff"
REGION = "#{:02x}{:02x}{:02x}".format(*REGION_COLOR)  # flagged regions, as drawn on the image

_QSS = f"""
QWidget {{ background: {PANEL}; color: {TEXT}; font-size: 10pt; }}
QMainWindow, QDialog {{ background: {BG}; }}
QMenuBar {{ background: {BG}; border-bottom: 1px solid {BORDER}; }}
QMenuBar::item:selected, QMenu::item:selected {{ background: {ACCENT}; color: white; }}
QMenu {{ background: {PANEL_2}; border: 1px solid {BORDER}; }}
QMenu::separator {{ height: 1px; background: {BORDER}; margin: 4px 8px; }}
QStatusBar {{ background: {BG}; color: {MUTED}; border-top: 1px solid {BORDER}; }}
QStatusBar QLabel {{ background: transparent; color: {TEXT}; padding: 0 6px; }}
QToolBar {{ background: {BG}; border: none; spacing: 2px; padding: 2px; }}
QToolButton {{ background: transparent; border: 1px solid transparent; border-radius: 3px; padding: 3px 6px; }}
QToolButton:hover {{ border-color: {BORDER}; background: {PANEL_2}; }}
QToolButton:checked {{ background: {ACCENT}; color: white; }}
QPushButton {{ background: {PANEL_2}; border: 1px solid {BORDER}; border-radius: 3px; padding: 4px 10px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:disabled {{ color: {MUTED}; }}
QPushButton#primary {{ background: {ACCENT}; color: white; border-color: {ACCENT}; font-weight: bold; }}
QPushButton#primary:disabled {{ background: {PANEL_2}; color: {MUTED}; border-color: {BORDER}; }}
QComboBox, QLineEdit, QSpinBox {{ background: {PANEL_2}; border: 1px solid {BORDER}; border-radius: 3px;
    padding: 2px 6px; selection-background-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: {PANEL_2}; selection-background-color: {ACCENT}; }}
QTreeWidget, QTreeView, QListWidget, QTableWidget, QTextBrowser {{ background: {BG};
    border: 1px solid {BORDER}; alternate-background-color: {PANEL}; }}
QTreeView::item:selected, QListWidget::item:selected, QTableWidget::item:selected {{ background: {ACCENT};
    color: white; }}
QHeaderView::section {{ background: {PANEL_2}; color: {MUTED}; border: none; padding: 3px 6px; }}
QDockWidget {{ color: {MUTED}; font-weight: bold; }}
QDockWidget::title {{ background: {BG}; padding: 4px 6px; border-bottom: 1px solid {BORDER}; }}
QGroupBox {{ border: 1px solid {BORDER}; border-radius: 4px; margin-top: 14px; padding-top: 6px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 8px; padding: 0 4px; color: {MUTED}; }}
QSlider::groove:horizontal {{ height: 4px; background: {BORDER}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {ACCENT}; width: 12px; margin: -5px 0; border-radius: 6px; }}
QProgressBar {{ background: {PANEL_2}; border: 1px solid {BORDER}; border-radius: 3px; text-align: center;
    max-height: 14px; }}
QProgressBar::chunk {{ background: {ACCENT}; }}
QCheckBox::indicator {{ width: 14px; height: 14px; }}
QScrollBar:vertical {{ background: {BG}; width: 10px; }}
QScrollBar::handle:vertical {{ background: {BORDER}; border-radius: 4px; min-height: 20px; }}
QToolTip {{ background: {PANEL_2}; color: {TEXT}; border: 1px solid {BORDER}; }}
QLabel#muted {{ color: {MUTED}; }}
QLabel#warning {{ color: {FLAG}; }}
QLabel#heading {{ font-weight: bold; font-size: 11pt; }}
"""


def apply_theme(app: QApplication) -> None:
    """Fusion style, dark palette and the stylesheet above."""
    app.setStyle("Fusion")
    pal = QPalette()
    for role, colour in (
        (QPalette.Window, PANEL), (QPalette.WindowText, TEXT), (QPalette.Base, BG),
        (QPalette.AlternateBase, PANEL), (QPalette.Text, TEXT), (QPalette.Button, PANEL_2),
        (QPalette.ButtonText, TEXT), (QPalette.Highlight, ACCENT), (QPalette.HighlightedText, "#ffffff"),
        (QPalette.ToolTipBase, PANEL_2), (QPalette.ToolTipText, TEXT), (QPalette.PlaceholderText, MUTED),
    ):
        pal.setColor(role, QColor(colour))
    pal.setColor(QPalette.Disabled, QPalette.Text, QColor(MUTED))
    pal.setColor(QPalette.Disabled, QPalette.ButtonText, QColor(MUTED))
    app.setPalette(pal)
    app.setStyleSheet(_QSS)
