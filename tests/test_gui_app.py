"""The workstation under pytest-qt (offscreen): opening, W/L, scrolling, presets, AI, errors, settings."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import pydicom_test_file
from onnx_models import make_package

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel  # noqa: E402

from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402
from medviewer.imaging import presets_for  # noqa: E402
from medviewer.workstation.measure import Shape, distance  # noqa: E402

TIMEOUT = 15000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(QSettings(str(tmp_path / "medviewer.ini"), QSettings.IniFormat))


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small real ONNX CAM classifier package (conv -> relu -> GAP -> linear, in-graph CAM)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # isolated user model directory
    return make_package(tmp_path / "pkgs" / "test-cam", name="test-cam", height=64, width=64,
                        labels=("NORMAL", "PNEUMONIA"))


@pytest.fixture
def errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Error dialogs shown (QMessageBox.critical patched so it does not block)."""
    seen: list[str] = []
    monkeypatch.setattr("medviewer.gui.dialogs.QMessageBox.critical",
                        lambda parent, title, text: seen.append(f"{title}: {text}"))
    return seen


def _window(qtbot, settings: Settings, model: Path | None = None) -> MainWindow:
    win = MainWindow(settings, provider="cpu")
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    if model is not None:
        win.load_models(str(model))
    qtbot.waitUntil(lambda: win.models_ready, timeout=TIMEOUT)
    return win


def _open(qtbot, win: MainWindow, path: Path | str) -> None:
    win.open_paths([str(path)])  # a folder's first file may show before the scan ends: wait for both
    qtbot.waitUntil(lambda: win.active.has_image() and not win.loader.scanning, timeout=TIMEOUT)


def _drag(qtbot, widget, button, start: QPoint, end: QPoint) -> None:
    qtbot.mousePress(widget, button, pos=start)
    steps = 5
    for i in range(1, steps + 1):
        qtbot.mouseMove(widget, start + (end - start) * (i / steps))
    qtbot.mouseRelease(widget, button, pos=end)


def test_open_dicom_and_window_level_drag(qtbot, settings, errors):
    win = _window(qtbot, settings)
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    vp = win.active
    assert vp.current_instance().modality == "CT"
    c0, w0 = vp.state.center_w, vp.state.width_w
    before = vp.render_image(overlays=False)
    centre = QPoint(vp.width() // 2, vp.height() // 2)
    _drag(qtbot, vp, Qt.LeftButton, centre, centre + QPoint(100, 40))
    assert vp.state.width_w > w0 and vp.state.center_w > c0  # right widens, down raises the level
    assert vp.render_image(overlays=False) != before
    # readout under the cursor reports HU on CT
    assert "HU" in vp.readout_text(10, 10)
    assert not errors


def test_wheel_scrolls_frames_and_keys(qtbot, settings):
    win = _window(qtbot, settings)
    _open(qtbot, win, pydicom_test_file("emri_small.dcm"))  # MR, 10 frames
    vp = win.active
    assert vp.state.n_frames == 10 and vp.state.frame == 0
    ev = QWheelEvent(QPointF(50, 50), QPointF(50, 50), QPoint(0, 0), QPoint(0, -120), Qt.NoButton,
                     Qt.NoModifier, Qt.NoScrollPhase, False)
    QApplication.sendEvent(vp, ev)
    assert vp.state.frame == 1
    qtbot.waitUntil(vp.has_image, timeout=TIMEOUT)
    from medviewer.workstation.keybindings import Command

    win.toggle_cine()  # cine plays through the frames
    qtbot.waitUntil(lambda: vp.state.frame >= 3, timeout=TIMEOUT)
    win.toggle_cine()
    assert not vp.cine_playing()
    win.actions[Command.LAST_IMAGE].trigger()
    assert vp.state.frame == 9
    win.actions[Command.PAGE_UP].trigger()
    assert vp.state.frame == 0
    qtbot.waitUntil(vp.has_image, timeout=TIMEOUT)


def test_ct_series_presets_and_distance(qtbot, settings, ct_series_dir):
    win = _window(qtbot, settings)
    _open(qtbot, win, ct_series_dir)
    vp = win.active
    assert vp.state.n_frames == 134
    presets = presets_for("CT")
    win.preset_actions[0].trigger()
    assert (vp.state.center_w, vp.state.width_w) == (presets[0].center, presets[0].width)
    win.preset_actions[1].trigger()
    assert (vp.state.center_w, vp.state.width_w) == (presets[1].center, presets[1].width)
    win.set_tool(Shape.DISTANCE)
    a = QPoint(vp.width() // 2 - 100, vp.height() // 2)
    _drag(qtbot, vp, Qt.LeftButton, a, a + QPoint(200, 0))
    (m,) = vp.measurements[vp.frame_uid()]
    assert m.p1[0] - m.p0[0] == pytest.approx(200 / vp.state.zoom)
    length, unit = distance(m.p0, m.p1, vp.spacing())
    assert unit == "mm" and length == pytest.approx(200 / vp.state.zoom * vp.spacing()[1], rel=1e-3)


def test_inference_in_worker_heatmap_and_region_zoom(qtbot, settings, model_dir, monkeypatch):
    from medviewer.inference.session import Session

    threads: list[threading.Thread] = []
    real_predict = Session.predict

    def spy(self, *a, **k):
        threads.append(threading.current_thread())
        return real_predict(self, *a, **k)

    monkeypatch.setattr(Session, "predict", spy)
    win = _window(qtbot, settings, model_dir)
    assert win.package is not None and win.package.card.name == "test-cam"
    win.panel.auto_run.setChecked(False)
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    vp = win.active
    with qtbot.waitSignal(win.predictionShown, timeout=TIMEOUT) as blocker:
        win.run_ai()
        assert win.panel.busy.isVisible()  # returned at once; the model runs in a worker
    pred = blocker.args[0]
    assert threads and threads[0] is not threading.main_thread()
    assert set(pred.scores) == {"NORMAL", "PNEUMONIA"}
    assert "CPU" in win.panel.status.text() and "ms" in win.panel.status.text()
    assert win.panel.scores_layout.count() == 4  # headline + "no stated intended use" note + one row per label
    assert win.panel.cam_combo.currentText() == "PNEUMONIA" and "flagged" in win.panel.cam_note.text()
    win.panel.cam_combo.setCurrentIndex(0)  # NORMAL: the negative label is never a finding
    assert "not a finding" in win.panel.cam_note.text()
    win.panel.cam_combo.setCurrentIndex(1)
    # heatmap on/off changes the rendered pixels
    win.panel.set_heatmap_on(True)
    on = vp.render_image(overlays=False)
    win.panel.set_heatmap_on(False)
    off = vp.render_image(overlays=False)
    assert on != off
    win.panel.set_heatmap_on(True)
    assert vp.render_image(overlays=False) == on
    # a flagged region in the list centres and zooms on it
    assert pred.flagged == ["PNEUMONIA"] and pred.regions
    z0 = vp.state.zoom
    item = win.panel.regions.item(0)
    rect = win.panel.regions.visualItemRect(item)
    qtbot.mouseClick(win.panel.regions.viewport(), Qt.LeftButton, pos=rect.center())
    r = pred.regions[0]
    assert vp.state.zoom > z0
    assert vp.state.center == pytest.approx(((r.bbox[0] + r.bbox[2]) / 2, (r.bbox[1] + r.bbox[3]) / 2))


def test_cancelled_inference_is_discarded(qtbot, settings, model_dir):
    win = _window(qtbot, settings, model_dir)
    win.panel.auto_run.setChecked(False)
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    win.run_ai()
    win.cancel_ai()
    assert not win.panel.busy.isVisible() and "cancelled" in win.panel.status.text()
    qtbot.waitUntil(win.is_idle, timeout=TIMEOUT)  # the cancelled run has finished in the background
    assert win.prediction_for(win.active) is None and not win.reading.predictions()


def test_bad_file_gives_error_dialog_and_app_goes_on(qtbot, settings, errors, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + bytes(range(40)))
    win = _window(qtbot, settings)
    win.open_paths([str(bad)])
    qtbot.waitUntil(lambda: bool(errors), timeout=TIMEOUT)
    assert "broken.dcm" in errors[0] and "\n" not in errors[0]
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    assert win.active.has_image()
    # pixel data cut short: another one-line dialog, and the CT stays usable
    cut = tmp_path / "truncated.dcm"
    data = pydicom_test_file("MR_small.dcm").read_bytes()
    cut.write_bytes(data[: len(data) - 4000])
    win.open_paths([str(cut)])
    qtbot.waitUntil(lambda: len(errors) == 2, timeout=TIMEOUT)
    assert "truncated.dcm" in errors[1] and "\n" not in errors[1]
    assert win.active.has_image() and win.active.current_instance().modality == "CT"
    w0 = win.active.state.width_w
    win.preset_actions[0].trigger()
    assert win.active.state.width_w != w0


def test_model_import_refuses_a_broken_package(qtbot, settings, errors, model_dir):
    onnx_file = model_dir / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-20])  # truncated: hash and graph no longer match
    win = _window(qtbot, settings)
    win.import_model_from(str(model_dir))
    qtbot.waitUntil(lambda: bool(errors), timeout=TIMEOUT)
    assert errors[0].startswith("Model refused: ") and "\n" not in errors[0]
    assert win.package is None or win.package.card.name != "test-cam"


def test_no_model_the_viewer_still_works(qtbot, settings, tmp_path, monkeypatch):
    monkeypatch.setattr("medviewer.inference.registry.find_models", lambda: [])
    monkeypatch.setattr("medviewer.inference.find_models", lambda: [], raising=False)
    win = _window(qtbot, settings)
    assert win.package is None and "No model" in win.panel.status.text()
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    win.run_ai()  # explains instead of failing
    assert "No model" in win.status_msg.text()


def test_settings_round_trip(qtbot, tmp_path):
    path = str(tmp_path / "s.ini")
    s = Settings(QSettings(path, QSettings.IniFormat))
    s.layout, s.heatmap_opacity, s.colormap, s.provider, s.auto_run = "2x2", 0.7, "turbo", "cpu", False
    s.last_folder = str(tmp_path)
    s.add_recent("/a")
    s.add_recent("/b")
    s.add_recent("/a")
    s.sync()
    t = Settings(QSettings(path, QSettings.IniFormat))
    assert (t.layout, t.heatmap_opacity, t.colormap, t.provider, t.auto_run) == ("2x2", 0.7, "turbo", "cpu", False)
    assert t.last_folder == str(tmp_path) and t.recent == ["/a", "/b"]
    with pytest.raises(ValueError):
        t.layout = "3x3"
    # provider names are validated by the one enum (medviewer.providers.Provider.parse), case-insensitively
    t.provider = " CUDA "
    assert t.provider == "cuda"
    with pytest.raises(ValueError, match="unknown provider 'tensorrt'; use auto, cuda or cpu"):
        t.provider = "tensorrt"
    t.q.setValue("ai/provider", "rocm")  # an unreadable saved value reads as auto
    assert t.provider == "auto"
    t.provider = "cpu"
    # the window restores them and saves its own changes
    win = _window(qtbot, t)
    assert win.layout_name() == "2x2" and sum(v.isVisibleTo(win) for v in win.viewports) == 4
    assert win.panel.colormap() == "turbo" and win.panel.opacity.value() == 70
    assert not win.panel.auto_run.isChecked()
    win.set_layout("1x2")
    win.panel.opacity.setValue(30)
    t.sync()
    u = Settings(QSettings(path, QSettings.IniFormat))
    assert u.layout == "1x2" and u.heatmap_opacity == pytest.approx(0.3)


def test_export_png_without_patient_text(qtbot, settings, tmp_path):
    win = _window(qtbot, settings)
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    with_text = tmp_path / "a.png"
    anon = tmp_path / "b.png"
    assert win.export_png(str(with_text), overlays=True, patient=True)
    assert win.export_png(str(anon), overlays=True, patient=False)
    from PySide6.QtGui import QImage

    a, b = QImage(str(with_text)), QImage(str(anon))
    assert a.size() == win.active.size() and a != b  # the patient lines are gone
    assert np.asarray(a.constBits()).size > 0


def test_series_into_second_viewport_and_layouts(qtbot, settings):
    win = _window(qtbot, settings)
    win.set_layout("1x2")
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    _open(qtbot, win, pydicom_test_file("MR_small.dcm"))  # fills the empty second viewport
    left, right = win.viewports[0], win.viewports[1]
    qtbot.waitUntil(lambda: right.has_image() or left.current_instance().modality == "MR", timeout=TIMEOUT)
    keys = win.browser.keys()
    assert len(keys) == 2
    win.set_active(right)
    win.browser.seriesActivated.emit(keys[0])  # double click in the browser -> active viewport
    qtbot.waitUntil(right.has_image, timeout=TIMEOUT)
    assert right.current_instance().modality == "CT"
    # drag a series from the browser and drop it on a viewport
    from PySide6.QtGui import QDropEvent

    mr_key = next(k for k in keys if win.reading.sources[k].instance(0).modality == "MR")
    md = win.browser.tree.mimeData([win.browser.item(mr_key)])
    right.dropEvent(QDropEvent(QPointF(20, 20), Qt.CopyAction, md, Qt.LeftButton, Qt.NoModifier))
    qtbot.waitUntil(right.has_image, timeout=TIMEOUT)
    assert right.current_instance().modality == "MR" and win.active is right
    win.set_layout("2x2")
    assert sum(v.isVisibleTo(win) for v in win.viewports) == 4
    win.set_layout("1x1")
    assert win.active is win.viewports[0]


def test_tag_browser_search_and_dialogs(qtbot, settings, model_dir):
    import pydicom

    from medviewer.gui.dialogs import ModelCardDialog, ShortcutsDialog, TagBrowser
    from medviewer.inference import ModelPackage
    from medviewer.workstation.keybindings import KEYS

    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True)
    tags = TagBrowser(ds)
    qtbot.addWidget(tags)
    assert tags.filter("0028,0030") >= 1
    assert tags.filter("PixelSpacing") >= 1
    assert tags.filter("no-such-keyword-xyz") == 0
    card = ModelCardDialog(ModelPackage.load(model_dir))
    qtbot.addWidget(card)
    text = card.browser.toPlainText()
    assert "tests only" in text and card.browser.toPlainText().count(ModelPackage.load(model_dir).card.sha256) == 1
    shortcuts = ShortcutsDialog()
    qtbot.addWidget(shortcuts)
    listed = {shortcuts.table.item(r, 1).text() for r in range(shortcuts.table.rowCount())}
    assert {b.key for b in KEYS} <= listed


def test_run_app_demo_screenshot(qtbot, tmp_path, monkeypatch):
    """The demo with the shipped model: the paediatric CR (active) is flagged with a heat map, RG1 (an adult) is
    outside the intended use with its reasons on its own viewport; the screenshot run exits 0."""
    import argparse

    from medviewer.gui.app import demo_paths, run_app

    if len(demo_paths()) < 2:
        pytest.skip("the demo studies (resources/demo, RG1_UNCR.dcm of pydicom-data) are not available")
    QSettings.setPath(QSettings.NativeFormat, QSettings.UserScope, str(tmp_path / "cfg"))
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path / "cfg"))
    out = tmp_path / "demo.png"
    args = argparse.Namespace(paths=[], model=None, provider="cpu", demo=True, screenshot=str(out))
    assert run_app(args) == 0
    from PySide6.QtGui import QImage

    img = QImage(str(out))
    assert not img.isNull() and img.width() >= 800
    win = next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow))
    qtbot.addWidget(win)
    status = {}
    for v in win.viewports:
        if v.isVisible() and v.source is not None:
            pred = win.prediction_for(v).prediction
            status[v.current_instance().patient_id] = (pred.applicability["status"], pred.flagged, v.ai.heatmap_on)
    assert status["9RG1"][0] == "out_of_scope" and status["9RG1"][1] == [] and not status["9RG1"][2]
    paed = next(k for k in status if k.startswith("KERMANY"))
    assert status[paed] == ("in_scope", ["pneumonia"], True)
    # the paediatric film stays active; each viewport says its own verdict, the status bar the active one's
    assert win.active.current_instance().patient_id == paed
    verdicts = {v.current_instance().patient_id: v.ai.verdict for v in win.viewports if v.isVisible() and v.source}
    assert "flagged pneumonia (P=" in verdicts[paed]
    assert "outside intended use" in verdicts["9RG1"] and "patient age 64 y" in verdicts["9RG1"]
    assert win.status_msg.text() == win.prediction_for(win.active).summary()


def test_demo_screenshot_fails_when_no_model(qtbot, tmp_path, monkeypatch, model_dirs):
    """--demo --screenshot must not exit 0 showing "No model available" (CI would not notice)."""
    import argparse

    from medviewer.gui.app import demo_paths, run_app

    if len(demo_paths()) < 2:
        pytest.skip("the demo studies are not available")
    QSettings.setPath(QSettings.NativeFormat, QSettings.UserScope, str(tmp_path / "cfg"))
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path / "cfg"))
    args = argparse.Namespace(paths=[], model=None, provider="cpu", demo=True, screenshot=str(tmp_path / "d.png"))
    assert run_app(args) == 3
    for w in QApplication.topLevelWidgets():
        if isinstance(w, MainWindow):
            qtbot.addWidget(w)


def test_run_on_open_only_for_projection_radiographs(qtbot, settings, model_dir):
    win = _window(qtbot, settings, model_dir)
    win.panel.auto_run.setChecked(True)
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    qtbot.waitUntil(win.is_idle, timeout=TIMEOUT)
    assert not win.reading.predictions() and "skipped" in win.status_msg.text()
    with qtbot.waitSignal(win.predictionShown, timeout=TIMEOUT):
        win.run_ai()  # a reader may still run it; the card states no intended use, and the panel says so
    assert win.prediction_for(win.active).prediction.applicability["status"] == "unknown"
    assert any("no machine-readable intended use" in lab.text() for lab in win.panel.findChildren(QLabel))


def test_out_of_scope_result_is_shown_honestly_and_show_anyway_is_labelled(qtbot, settings):
    """The shipped model on RG3 (an extremity): reasons at the top, grey bars, no FLAGGED, no heat map;
    "Show anyway" brings the findings back, labelled on the image."""
    from medviewer.gui.ai_panel import ScoreRow

    win = _window(qtbot, settings)
    qtbot.waitUntil(lambda: win.models_ready, timeout=TIMEOUT)
    assert win.package is not None and win.package.card.schema_version >= 2
    _open(qtbot, win, pydicom_test_file("RG3_UNCR.dcm"))
    with qtbot.waitSignal(win.predictionShown, timeout=TIMEOUT):
        win.run_ai()
    pred = win.prediction_for(win.active).prediction
    assert pred.applicability["status"] == "out_of_scope" and pred.flagged == [] and pred.regions == []
    assert pred.scores["pneumonia"] > 0.5  # the model alone would have flagged it
    texts = " ".join(lab.text() for lab in win.panel.findChildren(QLabel))
    assert "body part EXTREMITY; model: CHEST" in texts and "Outside the model's intended use" in texts
    rows = win.panel.findChildren(ScoreRow)
    assert rows and all(r.muted and not r.flagged for r in rows)
    assert not win.active.ai.heatmap_on and not win.active.ai.show_regions
    assert win.panel.show_anyway_button is not None
    win.panel.show_anyway_button.click()
    pred = win.prediction_for(win.active).prediction
    assert pred.applicability["overridden"] and pred.flagged == ["pneumonia"]
    assert win.active.ai.heatmap_on and any(r.flagged for r in win.panel.findChildren(ScoreRow))


def test_no_display_is_a_clear_error_not_a_qt_abort(monkeypatch, capsys):
    """Without a display, Qt's xcb plugin would abort the process; we say what to do instead."""
    import sys

    from medviewer.cli import main

    if not sys.platform.startswith("linux"):
        pytest.skip("display detection is for X11/Wayland")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "no display" in err and "--screenshot" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["vlut_04.dcm", "gamma VOI LUT", "CT_small.dcm", "RG1_UNCR.dcm"])
def test_viewport_first_image_is_display_image(qtbot, settings, name, tmp_path):
    """Before any W/L change the viewport shows exactly what `render` writes and the model sees
    (VOI LUT Sequence, file window, MONOCHROME1), at 1:1."""
    import pydicom

    from medviewer.imaging import display_image
    from medviewer.io import read_instance

    if name == "gamma VOI LUT":  # vlut_04's LUT is a near-identity ramp: make it one no window can copy
        ds = pydicom.dcmread(pydicom_test_file("vlut_04.dcm"))
        ds.VOILUTSequence[0].LUTData = [round(65535 * (i / 255) ** 2.2) for i in range(256)]
        path = tmp_path / "gamma_vlut.dcm"
        ds.save_as(path)
    else:
        path = pydicom_test_file(name)
    win = _window(qtbot, settings)
    _open(qtbot, win, path)
    vp = win.active
    vp.state.zoom = vp.state.aspect = 1.0  # 1:1, no minification
    layer = vp.model.display_layer()  # what the viewport draws (the model's keyed render cache)
    assert (layer.scale_x, layer.scale_y) == (1.0, 1.0)
    np.testing.assert_array_equal(layer.image, display_image(read_instance(path)))


def test_screenshot_run_with_a_bad_file_exits_non_zero_without_waiting(tmp_path):
    """A non-interactive run never waits for a click and never calls a failure a success (exit 4)."""
    import os
    import subprocess
    import sys
    import time

    bad = tmp_path / "garbage.dcm"
    bad.write_bytes(b"not an image at all")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "medviewer", str(bad), "--screenshot", str(tmp_path / "s.png")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 4, r.stderr
    assert time.perf_counter() - t0 < 60 and (tmp_path / "s.png").is_file()
    assert "garbage.dcm" in r.stderr and "Traceback" not in r.stderr


def test_file_menu_opens_the_pacs_dialog(qtbot, settings):
    from medviewer.gui.pacs_dialog import PacsDialog

    win = _window(qtbot, settings)
    act = next(a for a in win.menus["File"].actions() if "PACS" in a.text())
    act.trigger()
    dialog = win.findChild(PacsDialog)  # a child of the window
    assert dialog is not None and dialog.isVisible()
    dialog.close()


def test_status_bar_keeps_the_result_line_when_the_active_viewport_changes(qtbot, settings, model_dir):
    win = _window(qtbot, settings, model_dir)
    win.panel.auto_run.setChecked(False)
    win.set_layout("1x2")
    left, right = win.viewports[0], win.viewports[1]
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    with qtbot.waitSignal(win.predictionShown, timeout=TIMEOUT):
        win.run_ai()
    line = win.status_msg.text()
    assert line.startswith("test-cam: ") and line == win.prediction_for(left).summary()
    win.set_active(right)  # an empty viewport: the last result line stays
    assert win.status_msg.text() == line
    win.set_status("something else")
    win.set_active(left)  # back on the image with a result: its line again
    assert win.status_msg.text() == line


def test_results_are_kept_per_model(qtbot, settings, model_dir):
    """A result belongs to the model that produced it (SHA-256): another model shows none, and switching back
    shows the first one again without running it."""
    from medviewer.inference.session import Session

    win = _window(qtbot, settings, model_dir)
    win.panel.auto_run.setChecked(False)
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    with qtbot.waitSignal(win.predictionShown, timeout=TIMEOUT):
        win.run_ai()
    qtbot.waitUntil(win.is_idle, timeout=TIMEOUT)  # the run's `finished` event re-syncs the panel: let it land first
    first = win.prediction_for(win.active)
    assert first.package.card.name == "test-cam"
    combo = win.panel.model_combo
    other = next(i for i in range(combo.count()) if combo.itemData(i) and combo.itemData(i) != str(first.package.path))
    combo.setCurrentIndex(other)
    assert win.package is not first.package and win.prediction_for(win.active) is None
    assert "No result for this image" in win.panel.status.text() and win.active.ai is None
    runs = []
    real = Session.predict
    Session.predict = lambda self, *a, **k: (runs.append(1), real(self, *a, **k))[1]
    try:
        combo.setCurrentIndex(combo.findData(str(first.package.path)))
    finally:
        Session.predict = real
    assert win.prediction_for(win.active) is first and win.panel.prediction is first.prediction and not runs


def test_folder_first_image_shows_before_the_scan_ends(qtbot, settings, ct_series_dir):
    """The 134-slice CT: its first file is on screen while the other headers are read; the ordered series then
    takes its place on the same image, without decoding it again."""
    win = _window(qtbot, settings)
    vp = win.active
    shown: list[tuple] = []
    listed = lambda: [(k, win.browser.item(k).text(0)) for k in win.browser.keys()]  # noqa: E731
    win.firstImageShown.connect(lambda: shown.append((win.loader.scanning, vp.state.n_frames, vp.current_instance(),
                                                      listed())))
    win.open_paths([str(ct_series_dir)])
    qtbot.waitUntil(lambda: bool(shown), timeout=TIMEOUT)
    scanning, n, inst, in_browser = shown[0]
    assert n == 1 and inst.path.name == "1-001.dcm"
    qtbot.waitUntil(lambda: not win.loader.scanning, timeout=TIMEOUT)
    if scanning:  # the usual case: the preview came first (the scan of 134 headers takes longer)
        assert win.loader.t_first_image is not None
        # the browser observes the session: the previewed series is listed while the folder is read
        assert [(k, t.split("\n")[1]) for k, t in in_browser] == [(vp.source_key, "reading the folder…")]
        assert in_browser[0][1].startswith("CT #201 ")  # Modality, Series Number, Series Description
    # ... and the same item then says what the ordered series holds, with the thumbnail the session keeps
    assert listed() == [(vp.source_key, in_browser[0][1].split("\n")[0] + "\n134 images")]
    qtbot.waitUntil(lambda: vp.source_key in win.reading.thumbnails, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not win.browser.item(vp.source_key).icon(0).isNull(), timeout=TIMEOUT)
    assert vp.state.n_frames == 134 and vp.current_instance().path.name == "1-001.dcm" and vp.state.frame == 0
    src = win.reading.sources[vp.source_key]
    assert vp.source is src and src.cached(0) is not None and vp.has_image() and len(shown) == 1
    assert vp.source_key == inst.series_instance_uid and not win.reading.previews


def test_measurements_belong_to_the_image_in_the_reading_session(qtbot, settings):
    """A distance drawn on an image is kept by the reading session: another viewport showing the same image
    draws it too (pixels differ with and without it), and deleting it there removes it everywhere."""
    from medviewer.workstation.measure import Measurement

    win = _window(qtbot, settings)
    win.set_layout("1x2")
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    left, right = win.viewports[0], win.viewports[1]
    win.load_series(left.source_key, right)
    qtbot.waitUntil(right.has_image, timeout=TIMEOUT)
    before = right.render_image(overlays=True, patient=False)
    added = []
    win.reading.events.measurement_added.connect(lambda uid, m: added.append((uid, m)))
    m = Measurement(Shape.DISTANCE, (10.0, 10.0), (100.0, 90.0))
    with qtbot.waitSignal(right.measurementsChanged, timeout=1000):  # the other viewport observes the session
        left.add_measurement(m)
    assert added == [(left.frame_uid(), m)]
    assert win.reading.measurements[left.frame_uid()] == right.measurements[right.frame_uid()] == [m]
    assert right.render_image(overlays=True, patient=False) != before
    with qtbot.waitSignal(left.measurementsChanged, timeout=1000):
        right.delete_measurements()
    assert not win.reading.measurements.get(left.frame_uid()) and right.render_image(overlays=True, patient=False) == before
    with qtbot.assertNotEmitted(left.measurementsChanged):  # another frame's measurement: not this one's
        win.reading.measurements.add((left.source_key, left.state.frame + 1), m)


def test_the_window_is_a_view_of_the_workspace_it_receives(qtbot, settings):
    """The main window shows a Workspace made without a window: same session and models; the layout and the
    active viewport changed on the model move the widgets; the menus come back as one MenuBar object."""
    from medviewer.gui.menus import MenuBar
    from medviewer.workstation.keybindings import Command
    from medviewer.workstation.workspace import Workspace

    ws = Workspace(provider="cpu")
    win = MainWindow(settings, workspace=ws)
    qtbot.addWidget(win)
    win.resize(1000, 700)
    win.show()
    assert (win.reading, win.ai, win.audit, win.sr_reports) == (ws.reading, ws.ai, ws.audit, ws.sr_reports)
    assert [vp.model for vp in win.viewports] == ws.viewports and win.linker is ws.linker
    assert isinstance(win.menu_bar, MenuBar) and win.actions is win.menu_bar.actions
    assert set(win.menus) == {"File", "View", "Tools", "AI", "Help"}
    assert win.provider_actions["cpu"].isChecked() and not win.provider_actions["cuda"].isChecked()
    win.actions[Command.LAYOUT_2X2].trigger()  # a menu command changes the model ...
    assert ws.layout == "2x2" and sum(v.isVisibleTo(win) for v in win.viewports) == 4
    ws.set_active(3)  # ... and a model change moves the widgets
    assert win.active is win.viewports[3] and win.viewports[3].active and not win.viewports[0].active
    _open(qtbot, win, pydicom_test_file("CT_small.dcm"))
    assert win.viewports[3].has_image() and ws.reading.sources  # opened into the model's active viewport
    assert [p.name for p in ws.presets()] == [p.name for p in presets_for("CT")]
    shown = [a.text() for a in win.menu_bar.presets.actions()]
    from medviewer.workstation.keybindings import PRESET_KEYS

    n = min(len(presets_for("CT")), len(PRESET_KEYS))  # one number key per preset, 1-9
    assert len(shown) == n and shown[0].startswith(presets_for("CT")[0].name)
    win.set_layout("1x1")  # hides viewport 3: the model moves the active one into the grid
    assert ws.active_index == 0 and win.active is win.viewports[0]
