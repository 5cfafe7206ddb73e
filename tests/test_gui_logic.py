"""Qt-free parts of the workstation: view geometry, measurements, overlays, key bindings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medviewer.workstation.frames import valid_spacing
from medviewer.workstation.keybindings import KEYS, PRESET_KEYS, Command, key_for, shortcut_table
from medviewer.workstation.measure import Measurement, Shape, describe, distance, roi_stats
from medviewer.workstation.text_overlays import corner_text, format_person_name, orientation_labels
from medviewer.workstation.viewstate import ViewState, nice_scale_length_mm


def test_image_screen_round_trip_with_rotation_flip_and_aspect():
    s = ViewState()
    s.set_image_size(300, 200, aspect=0.5)
    s.fit(800, 600)
    s.rotate(90)
    s.flip_h = True
    s.zoom_by(1.7, anchor=(100, 120), view=(800, 600))
    for x, y in [(0, 0), (299.5, 10), (150, 199)]:
        sx, sy = s.to_screen(x, y, 800, 600)
        assert s.to_image(sx, sy, 800, 600) == pytest.approx((x, y), abs=1e-9)


def test_fit_centres_the_whole_image():
    s = ViewState()
    s.set_image_size(512, 256)
    s.fit(1000, 1000, margin=1.0)
    assert s.zoom == pytest.approx(1000 / 512)
    assert s.to_screen(0, 0, 1000, 1000) == pytest.approx((0, 250))
    assert s.to_screen(512, 256, 1000, 1000) == pytest.approx((1000, 750))


def test_zoom_keeps_the_anchor_point_fixed():
    s = ViewState()
    s.set_image_size(100, 100)
    s.fit(400, 400)
    before = s.to_image(50, 80, 400, 400)
    s.zoom_by(2.0, anchor=(50, 80), view=(400, 400))
    assert s.to_image(50, 80, 400, 400) == pytest.approx(before)


def test_rotation_swaps_screen_axes():
    s = ViewState()
    s.set_image_size(100, 50)
    s.fit(500, 500, margin=1.0)
    s.rotate(90)  # clockwise: the image's top edge goes to the right
    right = s.to_screen(50, 0, 500, 500)
    left = s.to_screen(50, 50, 500, 500)
    assert right[0] > left[0]


def test_window_drag_and_frame_step():
    s = ViewState(center_w=40.0, width_w=400.0, n_frames=5)
    s.drag_window(50, -20, 2.0)
    assert (s.center_w, s.width_w) == (0.0, 500.0)
    s.drag_window(-1000, 0, 2.0)
    assert s.width_w == 1.0
    assert s.step_frame(10) and s.frame == 4
    assert not s.step_frame(1)


def test_scale_bar_lengths_are_round():
    assert nice_scale_length_mm(0.5, 200) == 100.0
    assert nice_scale_length_mm(0.25, 150) == 20.0
    assert nice_scale_length_mm(0.0, 100) == 0.0


def test_distance_uses_row_and_column_spacing():
    d, unit = distance((0, 0), (3, 4), (2.0, 1.0))  # rows 2 mm, columns 1 mm
    assert unit == "mm" and d == pytest.approx(math.hypot(3 * 1.0, 4 * 2.0))
    assert distance((0, 0), (3, 4), None) == (5.0, "px")


def test_roi_stats_rectangle_and_ellipse():
    v = np.arange(100, dtype=np.float32).reshape(10, 10)
    s = roi_stats(v, Shape.RECT, (2, 3), (5, 6), (0.5, 0.5))  # columns 2..4, rows 3..5
    block = v[3:6, 2:5]
    assert s.n == 9 and s.mean == pytest.approx(block.mean()) and s.min == 32 and s.max == 54
    assert s.sd == pytest.approx(block.std(ddof=1))
    assert s.area_mm2 == pytest.approx(9 * 0.25)
    e = roi_stats(v, Shape.ELLIPSE, (0, 0), (10, 10), None)
    assert e.n < 100 and e.area_px == pytest.approx(math.pi * 25) and e.area_mm2 is None
    assert roi_stats(v, Shape.RECT, (20, 20), (30, 30), None) is None
    lines = describe(Measurement(Shape.RECT, (2, 3), (5, 6)), v, (0.5, 0.5), "HU")
    assert lines[0].startswith("Mean 43.0 HU") and lines[-1] == "Area 2.2 mm²"


def test_orientation_labels_axial_and_radiograph():
    axial = orientation_labels((1, 0, 0, 0, 1, 0), None)
    assert axial == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    flipped = orientation_labels((1, 0, 0, 0, 1, 0), None, flip_h=True)
    assert flipped["right"] == "R"
    rotated = orientation_labels((1, 0, 0, 0, 1, 0), None, rotation=90)
    assert rotated["top"] == "R" and rotated["right"] == "A"
    pa_chest = orientation_labels(None, ["L", "F"])
    assert pa_chest == {"right": "L", "left": "R", "bottom": "F", "top": "H"}
    assert orientation_labels(None, None) is None


def test_corner_text_can_leave_out_patient():
    class Inst:
        patient_name = "Doe^Jane"
        patient_id = "123"
        patient_sex = "F"
        patient_age = "042Y"
        study_description = "CHEST"
        study_date = "20240102"
        modality = "CR"
        series_number = 2
        series_description = "PA"
        slice_location = None
        slice_thickness = None
        rows, columns = 10, 20

    c = corner_text(Inst(), 0, 3, (40.0, 400.0), 0.5)
    assert c["tl"] == ["DOE, Jane", "ID: 123", "F 042Y"]
    assert "2024-01-02" in c["tr"] and "Im 1/3" in c["bl"] and c["br"][0] == "W 400  L 40"
    assert corner_text(Inst(), 0, 3, None, 1.0, patient=False)["tl"] == []
    assert format_person_name("") == ""


def test_key_bindings_are_unique_and_listed():
    keys = [b.key for b in KEYS] + list(PRESET_KEYS)
    assert len(keys) == len(set(keys)), "a key is bound twice"
    assert key_for(Command.HEATMAP) == "H" and key_for(Command.INVERT) == "I"
    listed = {row[1] for row in shortcut_table()}
    assert all(b.key in listed for b in KEYS)


def test_valid_spacing_rejects_zero():
    assert valid_spacing([0.0, 0.0]) is None
    assert valid_spacing((0.7, 0.7)) == (0.7, 0.7)
    assert valid_spacing(None) is None


def test_known_bad_pyside_is_refused_with_one_line():
    """PySide6 6.12.0 on CPython 3.11 aborts long sessions; the workstation refuses it at import."""
    from medviewer.errors import MedViewerError
    from medviewer.gui import check_qt_bindings

    with pytest.raises(MedViewerError, match=r"PySide6 6\.12\.0 on Python 3\.11 .*pyside6-essentials!=6\.12\.0") as info:
        check_qt_bindings("6.12.0", (3, 11))
    assert "\n" not in str(info.value)
    check_qt_bindings("6.12.0", (3, 12))  # None is immortal there (PEP 683)
    check_qt_bindings("6.11.3", (3, 11))
    check_qt_bindings()  # the installed binding is fine
