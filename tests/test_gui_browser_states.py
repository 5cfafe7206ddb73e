"""Saved reading states in the study browser: a study's presentation states listed under it (newest first, the
applied one marked); choosing another applies it in place of the first; a state saved here joins the list."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings  # noqa: E402

from medviewer.export.presentation_state import Annotation, ReadingState, build_presentation_state  # noqa: E402
from medviewer.gui.browser import STATE_ROLE  # noqa: E402
from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.presentation import save_reading_state  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402
from medviewer.workstation.measure import Shape  # noqa: E402

TIMEOUT = 20000


def _write_state(folder: Path, headers: list, label: str, created: tuple[str, str], window: tuple[float, float],
                 annotations: list[Annotation]) -> Path:
    ds = build_presentation_state(headers, ReadingState(window=window, label=label, creator="Doe^Jane",
                                                        annotations=annotations))
    ds.PresentationCreationDate, ds.PresentationCreationTime = created
    path = folder / f"PR_{label}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def study(tmp_path, ct_series_dir):
    """Six CT slices with two saved reading states: FIRST (2025, one distance on image 2, window 40/400) and
    SECOND (2026, an ellipse and a rectangle on image 3, window 50/350)."""
    folder = tmp_path / "study"
    folder.mkdir()
    for k in range(50, 56):
        shutil.copy(ct_series_dir / f"1-{k:03d}.dcm", folder)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("1-*.dcm"))]
    by_z = sorted(headers, key=lambda d: -float(d.ImagePositionPatient[2]))  # display order is by position
    first = _write_state(folder, headers, "FIRST", ("20250101", "090000"), (40.0, 400.0),
                         [Annotation("distance", [(100.0, 100.0), (200.0, 100.0)], str(by_z[2].SOPInstanceUID), 0)])
    second = _write_state(folder, headers, "SECOND", ("20260101", "090000"), (50.0, 350.0),
                          [Annotation("ellipse", [(240.0, 240.0), (300.0, 280.0)], str(by_z[3].SOPInstanceUID), 0),
                           Annotation("rect", [(50.0, 60.0), (70.0, 100.0)], str(by_z[3].SOPInstanceUID), 0)])
    return folder, first, second


def _shapes(win: MainWindow) -> list[str]:
    return sorted(m.shape.value for uid in win.reading.measurements for m in win.reading.measurements[uid])


def test_states_listed_in_the_browser_and_another_chosen(qtbot, tmp_path, study):
    folder, first, second = study
    win = MainWindow(Settings(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)), provider="cpu",
                     interactive=False)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=TIMEOUT)
    said: list[str] = []
    set_status = win.set_status
    win.set_status = lambda text, *a, **k: (said.append(text), set_status(text, *a, **k))
    win.open_paths([str(folder)])
    qtbot.waitUntil(lambda: _shapes(win) == ["ellipse", "rect"], timeout=TIMEOUT)  # the newest applied
    assert "Opened 1 series with 2 presentation states" in said  # counted, not silently left out
    browser = win.browser
    qtbot.waitUntil(lambda: browser.state_item(second) is not None and browser.state_item(first) is not None,
                    timeout=TIMEOUT)
    study_item = browser.state_item(second).parent()
    rows = [study_item.child(i) for i in range(study_item.childCount())]
    assert rows[0].data(0, STATE_ROLE) is None  # the series first, then the states, newest first
    assert [r.data(0, STATE_ROLE) for r in rows[1:]] == [str(second), str(first)]
    assert rows[1].text(0) == "✔ SECOND · applied\n2026-01-01 09:00, Doe^Jane"
    assert rows[2].text(0) == "◇ FIRST\n2025-01-01 09:00, Doe^Jane"
    assert browser.applied_states() == [str(second)]
    vp = win.active
    assert (vp.state.center_w, vp.state.width_w) == (50.0, 350.0)

    # the reader draws a measurement of their own, then chooses FIRST: SECOND's go, theirs and FIRST's are shown
    key = vp.source_key
    from medviewer.workstation.measure import Measurement

    own = Measurement(Shape.DISTANCE, (10.0, 10.0), (60.0, 10.0))
    win.reading.measurements.add((key, 4), own)
    with qtbot.waitSignal(browser.presentationStateActivated, timeout=TIMEOUT):
        browser.tree.itemActivated.emit(browser.state_item(first), 0)
    qtbot.waitUntil(lambda: browser.applied_states() == [str(first)], timeout=TIMEOUT)
    assert _shapes(win) == ["distance", "distance"]
    assert win.reading.measurements[(key, 2)][0].shape == Shape.DISTANCE and win.reading.measurements[(key, 4)] == [own]
    assert (vp.state.center_w, vp.state.width_w) == (40.0, 400.0)
    assert browser.state_item(first).text(0).startswith("✔ FIRST") and browser.state_item(second).text(0).startswith("◇")
    assert win.status_msg.text() == "Presentation state FIRST (2025-01-01 09:00, Doe^Jane) applied: 1 measurement(s)"

    # saving lists the new state as the applied one, newest first
    path = save_reading_state(win)
    assert path is not None and browser.applied_states() == [str(path)]
    study_item = browser.state_item(path).parent()
    listed = [study_item.child(i).data(0, STATE_ROLE) for i in range(study_item.childCount())]
    assert listed[1:] == [str(path), str(second), str(first)] and not win.errors
