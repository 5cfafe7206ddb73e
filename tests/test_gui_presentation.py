"""Saved reading state in the workstation: measurements, window and geometry saved as a DICOM presentation state
into the study's folder, dciodvfy clean, and back in the same place (pixels and mm) when the study is reopened."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings  # noqa: E402

from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.presentation import save_reading_state  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402
from medviewer.workstation.measure import Measurement, Shape, distance  # noqa: E402

TIMEOUT = 20000


def _window(qtbot, tmp_path: Path, name: str) -> MainWindow:
    win = MainWindow(Settings(QSettings(str(tmp_path / f"{name}.ini"), QSettings.IniFormat)), provider="cpu",
                     interactive=False)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=TIMEOUT)
    return win


def _open(qtbot, win: MainWindow, folder: Path) -> None:
    win.open_paths([str(folder)])
    qtbot.waitUntil(lambda: win.active.has_image() and not win.loader.scanning, timeout=TIMEOUT)


def test_reading_state_saved_and_restored(qtbot, tmp_path, ct_series_dir):
    study = tmp_path / "study"
    study.mkdir()
    for k in range(50, 56):
        shutil.copy(ct_series_dir / f"1-{k:03d}.dcm", study)
    win = _window(qtbot, tmp_path, "first")
    _open(qtbot, win, study)
    vp = win.active
    src, key = vp.source, vp.source_key
    qtbot.waitUntil(lambda: src.cached(3) is not None, timeout=TIMEOUT)
    line = Measurement(Shape.DISTANCE, (100.25, 200.5), (300.75, 260.0))
    roi = Measurement(Shape.ELLIPSE, (240.0, 240.0), (300.0, 280.0))
    win.reading.measurements.add((key, 3), line)
    win.reading.measurements.add((key, 3), roi)
    vp.model.set_window(40, 350)
    vp.model.rotate(90)
    vp.model.flip(False)  # vertical: saved as horizontal flip + 180 degrees
    vp.model.set_zoom_center(2.0, (250.0, 230.0))  # saved as the displayed area
    path = save_reading_state(win)
    assert path is not None and path.parent == study and not win.errors
    exe = shutil.which("dciodvfy")
    if exe is not None:
        run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        assert [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")] == []
    ds = pydicom.dcmread(path)
    labels = sorted(str(t.UnformattedTextValue) for g in ds.GraphicAnnotationSequence
                    for t in g.get("TextObjectSequence", []))
    mm, _ = distance(line.p0, line.p1, src.spacing(3))
    assert labels[0] == f"{mm:.1f} mm" and labels[1].startswith("mean ") and labels[1].endswith(" HU")
    assert ds.ImageRotation == 90 and ds.ImageHorizontalFlip == "Y"  # rotate first, then flip (C.10.6)

    # the study closed and reopened: the same measurements on the same image, window and geometry restored
    win.close()
    again = _window(qtbot, tmp_path, "second")
    _open(qtbot, again, study)
    qtbot.waitUntil(lambda: len(again.reading.measurements) > 0, timeout=TIMEOUT)
    vp2 = again.active
    (uid,) = list(again.reading.measurements)
    assert vp2.source.frames[uid[1]][0].sop_instance_uid == src.frames[3][0].sop_instance_uid
    back = {m.shape: m for m in again.reading.measurements[uid]}
    assert back[Shape.DISTANCE].p0 == line.p0 and back[Shape.DISTANCE].p1 == line.p1
    assert back[Shape.ELLIPSE].p0 == roi.p0 and back[Shape.ELLIPSE].p1 == roi.p1
    assert distance(back[Shape.DISTANCE].p0, back[Shape.DISTANCE].p1, vp2.source.spacing(uid[1]))[0] == mm
    s = vp2.state
    assert (s.center_w, s.width_w) == (40, 350) and s.rotation == 270 and s.flip_h and not s.flip_v
    assert vp2.model.view_size == vp.model.view_size
    assert s.zoom == pytest.approx(2.0, rel=0.02) and s.center == pytest.approx((250.0, 230.0), abs=1.0)
    assert "applied: 2 measurement(s)" in again.status_msg.text()
