"""The workstation's Qt-free root model (medviewer.workstation.workspace) without a window, on real files."""

from __future__ import annotations

import pytest
from conftest import pydicom_test_file
from frames import Frames

from medviewer.imaging import presets_for
from medviewer.io import read_instance
from medviewer.workstation.workspace import LAYOUTS, MAX_VIEWPORTS, Workspace


@pytest.fixture()
def ws():
    w = Workspace(provider="cpu")
    yield w
    w.shutdown()


def test_the_parts_are_wired_to_one_reading_session(ws):
    assert ws.ai.reading is ws.reading and ws.ai.provider == "cpu"
    assert len(ws.viewports) == MAX_VIEWPORTS and len({id(m) for m in ws.viewports}) == MAX_VIEWPORTS
    assert ws.linker.models == ws.viewports
    assert (ws.layout, ws.active_index, ws.active_viewport) == ("1x1", 0, ws.viewports[0])
    assert ws.presets() == []  # nothing open


def test_layout_and_active_viewport_events(ws):
    seen: list[tuple] = []
    ws.layout_changed.connect(lambda name: seen.append(("layout", name)))
    ws.active_changed.connect(lambda i: seen.append(("active", i)))
    assert ws.set_layout("2x2") == [0, 1, 2, 3]
    assert ws.set_active(3) is True and ws.set_active(3) is False
    assert [ws.next_viewport() for _ in range(2)] == [0, 1]
    # a grid that hides the active viewport moves it to the first one
    ws.set_active(2)
    assert ws.set_layout("1x2") == [0, 1] and ws.active_index == 0
    assert seen == [("layout", "2x2"), ("active", 3), ("active", 0), ("active", 1), ("active", 2),
                    ("active", 0), ("layout", "1x2")]
    assert ws.set_layout("3x3") == [0] and ws.layout == "1x1"  # a stale saved name: one viewport
    assert set(LAYOUTS) == {"1x1", "1x2", "2x2"}
    with pytest.raises(IndexError, match="viewport 4 does not exist"):
        ws.set_active(4)
    assert ws.index_of(ws.viewports[2]) == 2
    with pytest.raises(ValueError, match="not a viewport"):
        ws.index_of(object())


def test_presets_and_linking_follow_the_viewport_models(ws):
    ct = read_instance(pydicom_test_file("CT_small.dcm"))
    ws.set_layout("1x2")
    for m in ws.viewports[:2]:
        m.set_view_size(256, 256)
        m.set_source(Frames([ct], "ct"), "ct")
    ws.set_active(1)
    assert [p.name for p in ws.presets()] == [p.name for p in presets_for("CT")] and ws.presets()
    # linking the zoom of both: a zoom in the active one reaches the other
    z0 = ws.viewports[0].state.zoom
    for m in ws.viewports[:2]:
        m.set_linked("zoom", True)
    ws.active_viewport.zoom_by(2.0)
    assert ws.viewports[1].state.zoom == pytest.approx(2 * z0)
    assert ws.viewports[0].state.zoom == pytest.approx(2 * z0)  # the linked, inactive one followed


def test_audit_failures_are_reported_once_through_the_event(ws, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the audit folder should be")
    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(blocked / "audit"))
    lines: list[str] = []
    ws.audit_failed.connect(lines.append)
    ws.audit.exported("png", ["1.2.3"], deidentified=False)
    ws.audit.exported("png", ["1.2.4"], deidentified=False)
    ws.audit.wait()
    assert len(lines) == 1 and lines[0].startswith("audit record not written")
