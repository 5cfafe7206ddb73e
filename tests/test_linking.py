"""Linked viewports (medviewer.workstation.linking) without a window, on the real 134-slice CT."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import pydicom_test_file
from frames import Frames

from medviewer.io import read_instance, scan
from medviewer.workstation.linking import ViewportLinker, corresponding_frame, slice_normal, slice_positions
from medviewer.workstation.viewport import ViewportModel


@pytest.fixture(scope="module")
def ct_instances(ct_series_dir_module):
    series = [s for st in scan(ct_series_dir_module).studies for s in st.series]
    assert len(series) == 1
    insts = series[0].instances
    assert len(insts) == 134
    return insts


@pytest.fixture(scope="module")
def ct_series_dir_module():
    from conftest import CT_SERIES

    if not CT_SERIES.is_dir():
        pytest.skip(f"shared CT series not found at {CT_SERIES} (../shared/data is absent)")
    return CT_SERIES


def _model(instances, key: str, frame: int = 0, links=("scroll", "zoom", "window")) -> ViewportModel:
    m = ViewportModel()
    m.set_view_size(512, 512)
    m.set_source(Frames(instances, key), key, frame=frame)
    for what in links:
        m.set_linked(what, True)
    return m


def _position(inst, normal) -> float:
    return float(np.asarray(inst.image_position_patient, float) @ normal)


def test_scroll_lands_on_the_nearest_slice_position(ct_instances):
    full = _model(ct_instances, "full")
    sub = _model(ct_instances[40:90:3], "sub")  # a sub-range at three times the spacing
    ViewportLinker([full, sub])
    normal = slice_normal(ct_instances[0])
    pos_sub = slice_positions(sub)
    assert pos_sub is not None and len(pos_sub) == len(ct_instances[40:90:3])
    for k in (40, 41, 42, 64, 88, 89):
        full.set_frame(k)
        want = _position(ct_instances[k], normal)
        got = sub.frame
        assert abs(pos_sub[got] - want) == pytest.approx(np.abs(pos_sub - want).min())  # the nearest
    full.set_frame(43)
    assert sub.state.frame == 1 and sub.current_instance() is ct_instances[43]  # same slice: same instance
    # outside the sub-range: the nearest end
    full.set_frame(0)
    assert sub.frame in (0, len(pos_sub) - 1)
    assert abs(pos_sub[sub.frame] - _position(ct_instances[0], normal)) == np.abs(
        pos_sub - _position(ct_instances[0], normal)).min()
    # and the other way round, without a feedback loop
    frames: list[int] = []
    full.frame_changed.connect(frames.append)
    sub.set_frame(5)
    assert full.current_instance() is ct_instances[40 + 15] and frames == [55]


def test_scroll_by_index_across_frames_of_reference(ct_instances):
    other = [dataclasses.replace(inst, frame_of_reference_uid="1.2.826.0.1.3680043.8.498.1")  # another one
             for inst in ct_instances[:20]]
    a = _model(ct_instances, "a", frame=50)
    b = _model(other, "b", frame=3)
    ViewportLinker([a, b])
    assert corresponding_frame(a, 50, b) is None  # unrelated coordinates are never compared
    a.step(2)
    assert b.frame == 5  # by index, keeping the offset
    a.step(-1)
    assert b.frame == 4
    a.set_frame(133)
    assert b.frame == 19  # clamped at the end


def test_zoom_pan_and_window_follow_only_linked_viewports(ct_instances):
    a = _model(ct_instances, "a")
    b = _model(ct_instances[10:30], "b", links=("zoom", "window"))
    c = _model(ct_instances, "c", links=())
    linker = ViewportLinker([a, b, c])
    b.state.center_w, b.state.width_w = 40.0, 400.0  # as after its first frame was shown
    zb, zc = b.state.zoom, c.state.zoom
    a.zoom_by(2.0)
    assert b.state.zoom == pytest.approx(zb * 2.0) and c.state.zoom == zc
    cb = b.state.center
    a.pan_by(-30.0, 0.0)  # 30 screen px at zoom ~2: the image point moves right
    dx = (a.state.center[0] - 256.0) / a.state.image_w
    assert b.state.center[0] == pytest.approx(cb[0] + dx * b.state.image_w) and b.state.center[1] == cb[1]
    a.set_window(-600, 1500)
    assert (b.state.center_w, b.state.width_w) == (-600.0, 1500.0) and c.state.width_w is None
    b.set_window(50, 350)  # linked both ways, once
    assert (a.state.center_w, a.state.width_w) == (50.0, 350.0)
    b.set_linked("window", False)
    a.set_window(300, 1500)
    assert b.state.width_w == 350.0
    # scroll is not linked in b: it stays
    a.set_frame(70)
    assert b.frame == 0
    linker.link_all(on=False)
    assert not a.links and not b.links


def test_positions_need_a_frame_of_reference_and_distinct_positions():
    """A multi-frame MR without per-frame positions in its frames is linked by index."""
    mr = read_instance(pydicom_test_file("emri_small.dcm"))
    m = ViewportModel()
    m.set_source(Frames([mr], "mr"), "mr")
    assert slice_positions(m) is None


def test_view_menu_links_the_active_viewport_and_paints_a_badge(qtbot, tmp_path):
    """The GUI side: View > Link viewports toggles the active viewport's links; linked viewports follow."""
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import QSettings

    from medviewer.gui.main_window import MainWindow
    from medviewer.gui.settings import Settings

    win = MainWindow(Settings(QSettings(str(tmp_path / "m.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(win)
    win.resize(1000, 700)
    win.show()
    win.set_layout("1x2")
    left, right = win.viewports[0], win.viewports[1]
    win.open_paths([pydicom_test_file("emri_small.dcm")])  # 10 frames
    qtbot.waitUntil(left.has_image, timeout=15000)
    key = left.source_key
    win.load_series(key, right)
    qtbot.waitUntil(right.has_image, timeout=15000)
    acts = {a.text(): a for a in win.linker.menu.actions()}
    assert {"Link scroll", "Link zoom/pan", "Link window/level", "Link all viewports", "Unlink all"} <= set(acts)
    plain = right.grab().toImage()
    win.set_active(left)
    acts["Link scroll"].trigger()  # the active (left) viewport only
    assert left.model.links == {"scroll"} and not right.model.links
    left.step(3)
    assert right.state.frame == 0  # the right one does not link scroll
    win.set_active(right)
    win.linker.menu.aboutToShow.emit()
    assert not acts["Link scroll"].isChecked()  # the checks show the active viewport
    acts["Link scroll"].trigger()
    left.step(2)
    assert right.state.frame == 2  # one multi-frame image: linked by index, offset kept (0 vs 3)
    acts["Link all viewports"].trigger()
    left.set_window(100, 200)
    assert (right.state.center_w, right.state.width_w) == (100.0, 200.0)
    badge = right.grab().toImage()
    acts["Unlink all"].trigger()
    assert not left.model.links and not right.model.links
    unlinked = right.grab().toImage()
    w = right.width()
    centre = range(w // 2 - 20, w // 2 + 20)
    assert any(badge.pixelColor(x, 10) != unlinked.pixelColor(x, 10) for x in centre)  # the badge, top centre
    assert all(unlinked.pixelColor(x, 10) == plain.pixelColor(x, 10) for x in centre)
