"""The GUI triage worklist (medviewer.gui.worklist_view) under pytest-qt, offscreen, with the shipped model.

A folder holds three studies: the paediatric demo CR (pneumonia, within the model's intended use),
pydicom-data's RG1_UNCR (an adult CR) and pydicom's CT_small (both outside the intended use).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO, pydicom_test_file

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings, Qt  # noqa: E402

from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402
from medviewer.gui.worklist_view import COLUMNS, show_worklist  # noqa: E402

TIMEOUT = 60000
DEMO = REPO / "resources" / "demo" / "paediatric-cxr-pneumonia.dcm"
COL = {name: i for i, name in enumerate(COLUMNS)}


def _uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    if not DEMO.is_file():
        pytest.skip(f"demo study {DEMO} is absent (python -m training.demo_data builds it)")
    d = tmp_path / "incoming"
    d.mkdir()
    shutil.copy(DEMO, d / DEMO.name)
    for name in ("RG1_UNCR.dcm", "CT_small.dcm"):
        shutil.copy(pydicom_test_file(name), d / name)
    return d


@pytest.fixture
def win(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MainWindow:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # read state and user models in tmp
    w = MainWindow(Settings(QSettings(str(tmp_path / "medviewer.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    qtbot.waitUntil(lambda: w.models_ready, timeout=TIMEOUT)
    assert w.package is not None and w.package.card.name == "pneumonia-cxr"  # the shipped default model
    return w


def _text(view, row: int, col: str) -> str:
    return view.table.item(row, COL[col]).text()


def _bold(view, row: int) -> bool:
    return all(view.table.item(row, c).font().bold() for c in range(len(COLUMNS)))


def test_triage_order_open_read_and_retriage(qtbot, win, folder, tmp_path):
    view = show_worklist(win)
    view.state_file = tmp_path / "read.json"
    assert win.worklist_dock.isVisible()
    with qtbot.waitSignal(view.triageFinished, timeout=TIMEOUT) as sig:
        view.triage([folder])
    assert "3 studies, 3 images scored (0 failed)" in sig.args[0], sig.args[0]
    assert view.table.rowCount() == 3 and not view.busy and view.folder_button.isEnabled()

    demo, rg1, ct = _uid(DEMO), _uid(pydicom_test_file("RG1_UNCR.dcm")), _uid(pydicom_test_file("CT_small.dcm"))
    # the in-scope paediatric study first, flagged; both out-of-scope studies after it, with their reasons
    assert view.entries[0].study_instance_uid == demo
    assert _text(view, 0, "AI applicability") == "in scope"
    assert _text(view, 0, "Top finding") == "pneumonia  (flagged)"
    assert float(_text(view, 0, "Probability")) > 0.5
    assert _text(view, 0, "Modalities") == view.entries[0].modalities[0] == "CR"
    assert {e.study_instance_uid for e in view.entries[1:]} == {rg1, ct}
    for r in (1, 2):
        assert _text(view, r, "AI applicability") == "out of scope"
        assert _text(view, r, "Probability") == "" and _text(view, r, "Top finding") == ""
        assert view.table.item(r, COL["AI applicability"]).toolTip().startswith("Outside the model's intended use")
    ct_row = view.row_of(ct)
    assert "modality CT" in view.table.item(ct_row, COL["AI applicability"]).toolTip()
    assert _text(view, ct_row, "Modalities") == "CT"
    # patient, date and description as the browser shows them (DICOM PN -> FAMILY, Given; DA -> ISO date)
    assert _text(view, ct_row, "Patient").startswith("COMPRESSEDSAMPLES, CT1")
    assert _text(view, ct_row, "Study date") == "2004-01-19"
    assert all(_text(view, r, "Read") == "unread" and _bold(view, r) for r in range(3))

    # double-click opens the CT study in the viewer and marks it read (not bold)
    rect = view.table.visualItemRect(view.table.item(ct_row, 0))
    assert view.table.viewport().rect().contains(rect.center())
    with qtbot.waitSignal(view.studyOpened, timeout=5000):
        # Qt 6 item views act on a double click only at the index the press was on: press, then double-click
        qtbot.mouseClick(view.table.viewport(), Qt.LeftButton, pos=rect.center())
        qtbot.mouseDClick(view.table.viewport(), Qt.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: win.active.has_image() and win.active.current_instance() is not None
                    and str(win.active.current_instance().study_instance_uid) == ct, timeout=TIMEOUT)
    ct_row = view.row_of(ct)
    assert _text(view, ct_row, "Read") == "read" and not _bold(view, ct_row)
    assert view.entries[0].study_instance_uid == demo and _bold(view, 0)  # order unchanged

    # Enter on the selected row opens the demo study
    view.table.setCurrentCell(0, 0)
    with qtbot.waitSignal(view.studyOpened, timeout=5000) as opened:
        qtbot.keyClick(view.table, Qt.Key_Return)
    assert opened.args == [demo]
    qtbot.waitUntil(lambda: str(win.active.current_instance().study_instance_uid) == demo, timeout=TIMEOUT)

    # the context action toggles read/unread; it is kept in the state file
    view.set_read(0, False)
    assert _text(view, 0, "Read") == "unread" and _bold(view, 0)

    # a new triage keeps the read state (persisted per Study Instance UID)
    with qtbot.waitSignal(view.triageFinished, timeout=TIMEOUT):
        view.triage([folder])
    assert [e.study_instance_uid for e in view.entries][0] == demo
    assert _text(view, view.row_of(ct), "Read") == "read" and not _bold(view, view.row_of(ct))
    assert _text(view, 0, "Read") == "unread"
    assert ct in (tmp_path / "read.json").read_text()


def test_cancel_leaves_the_table_usable(qtbot, win, folder, tmp_path):
    view = show_worklist(win)
    view.state_file = tmp_path / "read.json"
    with qtbot.waitSignal(view.triageFinished, timeout=TIMEOUT) as sig:
        task = view.triage([folder])
        assert view.busy and view.cancel_button.isEnabled() and not view.folder_button.isEnabled()
        view.cancel_button.click()
    assert sig.args[0].startswith("Cancelled:"), sig.args[0]
    assert task.cancelled and not view.busy
    assert view.folder_button.isEnabled() and view.again_button.isEnabled() and not view.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: task.done.is_set(), timeout=TIMEOUT)  # the worker stops
    # the cancelled task's late signals change nothing; a new triage runs to the end
    with qtbot.waitSignal(view.triageFinished, timeout=TIMEOUT) as sig:
        view.again_button.click()
    assert "3 studies, 3 images scored" in sig.args[0]
    assert view.table.rowCount() == 3 and view.entries[0].study_instance_uid == _uid(DEMO)


def test_no_model_selected_says_so(qtbot, win, folder, tmp_path):
    view = show_worklist(win)
    win.ai.select(None)
    assert view.triage([folder]) is None
    assert "No model selected" in view.status.text() and view.table.rowCount() == 0 and not view.busy


def test_ai_menu_has_the_worklist(win):
    texts = [a.text() for a in win.menus["AI"].actions()]
    assert "Triage a folder…" in texts and "Triage worklist" in texts
    act = next(a for a in win.menus["AI"].actions() if a.text() == "Triage worklist")
    act.trigger()
    assert win.worklist_dock.isVisible() and win.worklist_view.table.columnCount() == len(COLUMNS)
