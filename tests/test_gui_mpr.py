"""The MPR layout under pytest-qt (offscreen): three planes of the real CT, linked crosshair, shared W/L, refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QImage, QWheelEvent  # noqa: E402

from medviewer.gui.keybindings import Command  # noqa: E402
from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402
from medviewer.workstation.mpr import PLANE_COLOURS  # noqa: E402

TIMEOUT = 20000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(QSettings(str(tmp_path / "medviewer.ini"), QSettings.IniFormat))


@pytest.fixture
def errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr("medviewer.gui.dialogs.QMessageBox.critical",
                        lambda parent, title, text: seen.append(f"{title}: {text}"))
    return seen


def _window(qtbot, settings: Settings) -> MainWindow:
    win = MainWindow(settings, provider="cpu")
    qtbot.addWidget(win)
    win.resize(1500, 800)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=TIMEOUT)
    return win


def _mpr(qtbot, win: MainWindow, folder: Path) -> None:
    win.open_paths([str(folder)])
    win.set_layout("mpr")  # waits for the scan, then builds the volume in a worker
    qtbot.waitUntil(lambda: getattr(win, "mpr_view", None) is not None and win.mpr_view.isVisible()
                    or bool(win.errors), timeout=TIMEOUT)


def _grab(widget) -> np.ndarray:
    """The widget as painted: ``(H, W, 3)`` uint8 RGB, a copy (the QImage's buffer does not outlive it)."""
    img = widget.grab().toImage().convertToFormat(QImage.Format_RGB888)
    arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height())
    rows = arr.reshape(img.height(), img.bytesPerLine())[:, : img.width() * 3]
    return rows.reshape(img.height(), img.width(), 3).copy()


def _has_colour(rgb: np.ndarray, colour: tuple[int, int, int], at_least: int = 50) -> bool:
    return int((np.abs(rgb.astype(int) - colour).sum(axis=2) < 30).sum()) >= at_least


def test_mpr_layout_linked_crosshair_and_window(qtbot, settings, errors, ct_series_dir):
    win = _window(qtbot, settings)
    _mpr(qtbot, win, ct_series_dir)
    assert not errors
    view = win.mpr_view
    assert not any(v.isVisible() for v in win.viewports)
    assert win.actions[Command.LAYOUT_MPR].isChecked() and win.actions[Command.LAYOUT_MPR].shortcut().toString() == "Ctrl+3"
    model = view.model
    assert model.volume.shape == (134, 512, 512)
    axial, coronal, sagittal = (view.planes[n] for n in ("axial", "coronal", "sagittal"))
    qtbot.waitExposed(coronal)
    # each plane shows the other two as reference lines in their colours
    rgb = _grab(axial)
    assert _has_colour(rgb, PLANE_COLOURS["coronal"]) and _has_colour(rgb, PLANE_COLOURS["sagittal"])
    # coronal is drawn with its aspect in mm: 374 x 512 display pixels fitted into the widget
    r = coronal.image_rect()
    assert r.height() / r.width() == pytest.approx(374 / 512, rel=1e-3)
    # a click on the coronal plane moves the axial and sagittal planes
    before = (model.index("axial"), model.index("coronal"), model.index("sagittal"))
    target = coronal.to_widget(100.5, 100.5)
    qtbot.mouseClick(coronal, Qt.LeftButton, pos=target.toPoint())
    after = (model.index("axial"), model.index("coronal"), model.index("sagittal"))
    assert after[1] == before[1] and after[0] != before[0] and after[2] != before[2]
    assert after[2] == pytest.approx(100, abs=1)
    assert after[0] == pytest.approx(100.5 * 134 / 374 - 0.5, abs=1)
    # drag on the axial plane: coronal and sagittal follow the cursor
    start = axial.to_widget(200, 200).toPoint()
    end = axial.to_widget(300, 260).toPoint()
    qtbot.mousePress(axial, Qt.LeftButton, pos=start)
    qtbot.mouseMove(axial, end)
    qtbot.mouseRelease(axial, Qt.LeftButton, pos=end)
    assert model.index("sagittal") == pytest.approx(300, abs=2) and model.index("coronal") == pytest.approx(260, abs=2)
    # the wheel scrolls the plane under the cursor
    k = model.index("axial")
    pos = QPointF(axial.width() / 2, axial.height() / 2)
    ev = QWheelEvent(pos, axial.mapToGlobal(pos), QPoint(0, 0), QPoint(0, -120), Qt.NoButton, Qt.NoModifier,
                     Qt.NoScrollPhase, False)
    axial.wheelEvent(ev)
    assert model.index("axial") == k + 1
    # right drag: window/level shared by the three planes
    w0 = model.window
    centre = QPoint(sagittal.width() // 2, sagittal.height() // 2)
    qtbot.mousePress(sagittal, Qt.RightButton, pos=centre)
    qtbot.mouseMove(sagittal, centre + QPoint(80, 30))
    qtbot.mouseRelease(sagittal, Qt.RightButton, pos=centre + QPoint(80, 30))
    assert model.window.width > w0.width and model.window.center > w0.center
    shown = model.image("axial")
    assert np.array_equal(shown, model.volume.render(model.planes["axial"], model.index("axial"), model.window))
    # slab toolbar
    view.slab.setValue(20.0)
    assert model.slab_mm == 20.0 and "MIP" in model.caption("coronal")
    # measurements: the Distance tool on the coronal plane, an ellipse ROI on the axial plane
    view.tool.setCurrentIndex(1)
    a, b = coronal.to_widget(100, 50).toPoint(), coronal.to_widget(100, 250).toPoint()
    qtbot.mousePress(coronal, Qt.LeftButton, pos=a)
    qtbot.mouseMove(coronal, b)
    qtbot.mouseRelease(coronal, Qt.LeftButton, pos=b)
    (d,) = model.measurements
    expected = model.distance_mm("coronal", coronal.to_image(QPointF(a)), coronal.to_image(QPointF(b)))
    assert d.kind == "distance" and d.length_mm == pytest.approx(expected) and 200 < d.length_mm < 230
    rgb = _grab(coronal).astype(int)
    assert ((rgb[..., 2] - rgb[..., 0]) > 80).sum() > 100  # the cyan line (grey image, other lines not blue)
    view.tool.setCurrentIndex(2)
    a, b = axial.to_widget(10, 10).toPoint(), axial.to_widget(60, 60).toPoint()
    qtbot.mousePress(axial, Qt.LeftButton, pos=a)
    qtbot.mouseMove(axial, b)
    qtbot.mouseRelease(axial, Qt.LeftButton, pos=b)
    roi = model.measurements[-1]
    assert roi.kind == "ellipse" and roi.stats["mean"] < -900  # air, in HU
    view.clear.click()
    assert model.measurements == []
    # back to the viewports
    win.set_layout("1x1")
    assert not view.isVisible() and win.viewports[0].isVisible()


def test_mpr_refuses_a_series_with_a_missing_slice(qtbot, settings, errors, ct_series_dir, tmp_path):
    folder = tmp_path / "gap"
    folder.mkdir()
    for k in (40, 41, 42, 44, 45, 46):
        src = ct_series_dir / f"1-{k:03d}.dcm"
        shutil.copy(src, folder / src.name)
    win = _window(qtbot, settings)
    _mpr(qtbot, win, folder)
    assert len(errors) == 1
    assert errors[0].startswith("Cannot show MPR: 1 slice(s) missing between 1-042.dcm and 1-044.dcm")
    assert getattr(win, "mpr_view", None) is None and win.viewports[0].isVisible()


def test_view_menu_opens_mpr_2x2_with_the_acquired_plane(qtbot, settings, errors, tmp_path, ct_series_dir):
    """View > Layout MPR 2x2: the volume is built and shown in the 2x2 grid (acquired plane first); once MPR
    is shown the same entry only changes the grid."""
    folder = tmp_path / "ct"
    folder.mkdir()
    for k in range(40, 60):
        src = ct_series_dir / f"1-{k:03d}.dcm"
        shutil.copy(src, folder / src.name)
    win = _window(qtbot, settings)
    win.open_paths([str(folder)])
    entry = next(a for a in win.menus["View"].actions() if a.text().startswith("Layout MPR 2×2"))
    entry.trigger()
    qtbot.waitUntil(lambda: getattr(win, "mpr_view", None) is not None and win.mpr_view.isVisible()
                    or bool(win.errors), timeout=TIMEOUT)
    assert errors == [] and win.mpr_view.layout_name == "2x2"
    assert win.mpr_view.shown_planes()[0] == "acquired" and len(win.mpr_view.shown_planes()) == 4
    win.mpr_view.set_layout("1x3")
    entry.trigger()  # shown: the grid changes, no new volume
    view = win.mpr_view
    assert view.layout_name == "2x2" and win.mpr_view is view
