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


@pytest.mark.unsaved_prompt
def test_closing_with_unsaved_measurements_asks_and_saves(qtbot, tmp_path, ct_series_dir, monkeypatch):
    """Nothing the reader made is lost on close: measurements not saved -> Save / Discard / Cancel. Cancel keeps
    the window; Save writes a presentation state per unsaved series (one shown in a viewport, one not) into its
    folder, where reopening finds them; measurements that came from a saved state do not count as unsaved."""
    from PySide6.QtWidgets import QMessageBox

    from medviewer.workstation.presentation import find_presentation_states

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, ks in ((a, range(50, 54)), (b, range(80, 84))):
        folder.mkdir()
        for k in ks:
            shutil.copy(ct_series_dir / f"1-{k:03d}.dcm", folder)
    win = MainWindow(Settings(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=TIMEOUT)
    _open(qtbot, win, a)
    key_a = win.active.source_key
    # b: the same series UID would merge into a; give b's copies their own series (a second acquisition)
    from pydicom.uid import generate_uid

    series_b = generate_uid()
    for f in b.iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_b, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(f)
    _open(qtbot, win, b)  # shown in the active viewport now; a is shown nowhere
    key_b = win.active.source_key
    assert key_b != key_a and win.reading.measurements.unsaved_series() == []
    win.reading.measurements.add((key_a, 1), Measurement(Shape.DISTANCE, (10.0, 10.0), (200.0, 10.0)))
    win.reading.measurements.add((key_b, 2), Measurement(Shape.RECT, (50.0, 60.0), (120.0, 140.0)))
    assert win.reading.measurements.unsaved_series() == sorted([key_a, key_b])

    answers = [QMessageBox.Cancel, QMessageBox.Save]
    asked: list[str] = []

    def exec_(box):
        asked.append(box.text())
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "exec", exec_)
    assert not win.close() and win.isVisible()  # Cancel: the window stays, nothing written
    assert asked == ["Measurements in 2 series have not been saved."]
    assert find_presentation_states([a, b]) == []
    assert win.close()  # Save: one presentation state per series, then the window closes
    found = find_presentation_states([a, b])
    assert sorted(s.path.parent.name for s in found) == ["a", "b"] and not win.errors
    assert win.reading.measurements.unsaved_series() == []
    by_folder = {s.path.parent.name: s.state for s in found}
    assert [x.kind for x in by_folder["a"].annotations] == ["distance"]
    assert [x.kind for x in by_folder["b"].annotations] == ["rect"]

    # reopened: the saved states bring the measurements back -- loaded, not unsaved; closing asks nothing
    again = MainWindow(Settings(QSettings(str(tmp_path / "t.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(again)
    again.show()
    qtbot.waitUntil(lambda: again.models_ready, timeout=TIMEOUT)
    _open(qtbot, again, a)
    qtbot.waitUntil(lambda: any(again.reading.measurements.values()), timeout=TIMEOUT)
    assert again.reading.measurements.unsaved_series() == []
    assert again.close() and len(asked) == 2
