"""View > Compare with prior in the workstation: the patient's latest comparable earlier study hung beside the
current one in a linked 1x2, labelled CURRENT / PRIOR with their dates; no prior is one line saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings  # noqa: E402

from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.priors import HangLabel  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402
from medviewer.workstation.keybindings import Command, key_for  # noqa: E402
from tests.conftest import pydicom_test_file  # noqa: E402
from tests.priors_data import relabel  # noqa: E402

TIMEOUT = 20000
CT, MR = pydicom_test_file("CT_small.dcm"), pydicom_test_file("MR_small.dcm")


@pytest.fixture
def win(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVIEWER_CONFIG_DIR", str(tmp_path / "config"))  # no saved PACS node
    w = MainWindow(Settings(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)), provider="cpu",
                   interactive=False)
    qtbot.addWidget(w)
    w.resize(1200, 700)
    w.show()
    qtbot.waitUntil(lambda: w.models_ready, timeout=TIMEOUT)
    return w


def _open(qtbot, w: MainWindow, paths: list[Path]) -> None:
    w.open_paths([str(p) for p in paths])
    qtbot.waitUntil(lambda: w.active.has_image() and not w.loader.scanning and w.is_idle(), timeout=TIMEOUT)


def test_compare_with_prior_hangs_the_prior_linked_and_labelled(qtbot, win, tmp_path):
    uids = {
        "current": relabel([CT], tmp_path / "current", patient_id="P9", study_date="20240501", body_part="ABDOMEN"),
        "prior": relabel([CT], tmp_path / "prior", patient_id="P9", study_date="20230110", body_part="ABDOMEN"),
        "chest": relabel([CT], tmp_path / "chest", patient_id="P9", study_date="20231201", body_part="CHEST"),
        "mr": relabel([MR], tmp_path / "mr", patient_id="P9", study_date="20240101", body_part="ABDOMEN"),
    }
    _open(qtbot, win, [tmp_path / "current"])
    _open(qtbot, win, [tmp_path / "prior", tmp_path / "chest", tmp_path / "mr"])
    current = next(k for k, s in win.reading.sources.items() if s.series.instances[0].study_instance_uid
                   == uids["current"])
    win.load_series(current, win.active)
    action = win.actions[Command.COMPARE_PRIOR]
    assert action.shortcut().toString() == key_for(Command.COMPARE_PRIOR)
    assert action in win.menus["View"].actions()
    action.trigger()
    left, right = win.viewports[0], win.viewports[1]
    qtbot.waitUntil(lambda: right.has_image() and right.source_key != current, timeout=TIMEOUT)
    assert win.layout_name() == "1x2" and right.isVisible() and not win.viewports[2].isVisible()
    assert left.source_key == current and win.active is left
    assert right.current_instance().study_instance_uid == uids["prior"]
    labels = {lab.role: lab for lab in left.findChildren(HangLabel) + right.findChildren(HangLabel)}
    assert labels["CURRENT"].text() == "CURRENT  2024-05-01" and labels["CURRENT"].parent() is left
    assert labels["PRIOR"].text() == "PRIOR  2023-01-10" and labels["PRIOR"].parent() is right
    assert left.model.links == right.model.links == {"scroll", "zoom", "window"}
    assert win.prior_message.startswith("CURRENT 2024-05-01 beside PRIOR 2023-01-10 CT ABDOMEN") and not win.errors
    # the window is shared: a change in the current moves the prior
    left.set_window(40, 400)
    assert (right.state.center_w, right.state.width_w) == (40, 400)
    img = win.grab()
    img.save(str(tmp_path / "priors.png"))
    assert not img.isNull()
    # another series in the prior's viewport: its label goes
    win.load_series(current, right)
    qtbot.waitUntil(lambda: not right.findChildren(HangLabel), timeout=TIMEOUT)


def test_no_comparable_prior_is_one_status_line(qtbot, win, tmp_path):
    relabel([CT], tmp_path / "current", patient_id="P9", study_date="20240501", body_part="ABDOMEN")
    relabel([CT], tmp_path / "chest", patient_id="P9", study_date="20231201", body_part="CHEST")
    _open(qtbot, win, [tmp_path / "current", tmp_path / "chest"])
    cur = next(k for k, s in win.reading.sources.items() if s.series.instances[0].study_date == "20240501")
    win.load_series(cur, win.active)
    win.actions[Command.COMPARE_PRIOR].trigger()
    qtbot.waitUntil(lambda: getattr(win, "prior_message", "").startswith("No comparable prior"), timeout=TIMEOUT)
    assert "other body part (CHEST)" in win.prior_message and not win.errors
    assert win.layout_name() != "1x2" or not win.viewports[1].has_image()


def test_compare_with_nothing_open_says_so(win):
    win.actions[Command.COMPARE_PRIOR].trigger()
    assert win.status_msg.text() == "Compare with prior: open a study first" and not win.errors


def test_prior_only_on_the_pacs_is_retrieved_and_hung(qtbot, win, tmp_path, monkeypatch):
    from tests.orthanc import orthanc_unavailable, start_orthanc

    why = orthanc_unavailable()
    if why:
        pytest.skip(why)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where retrieved studies go
    relabel([CT], tmp_path / "current", patient_id="P9", study_date="20240501", body_part="ABDOMEN")
    remote = relabel([CT], tmp_path / "remote", patient_id="P9", study_date="20220202", body_part="ABDOMEN")
    orth = start_orthanc(tmp_path / "orthanc")
    try:
        orth.upload(sorted((tmp_path / "remote").glob("*.dcm")))
        _open(qtbot, win, [tmp_path / "current"])
        win.prior_node = orth.dimse_url
        win.actions[Command.COMPARE_PRIOR].trigger()
        right = win.viewports[1]
        qtbot.waitUntil(lambda: right.has_image() and right.isVisible(), timeout=TIMEOUT)
    finally:
        orth.stop()
    assert right.current_instance().study_instance_uid == remote
    assert str(right.current_instance().path).startswith(str(tmp_path / "cache"))
    assert "PRIOR 2022-02-02 CT ABDOMEN" in win.prior_message and f"retrieved from {orth.dimse_url}" in \
        win.prior_message
    assert [lab.text() for lab in right.findChildren(HangLabel)] == ["PRIOR  2022-02-02"] and not win.errors
