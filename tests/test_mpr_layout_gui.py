"""The MPR view's 2x2 layout (pytest-qt, offscreen): the acquired plane -- the slices as stored, exactly what
the 2-D viewer shows -- beside the three reformats, on a prone relabelled copy of the shared CT (made in
memory), where the acquired plane and the axial reformat differ by a 180-degree turn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from medviewer.gui.mpr_view import LAYOUTS, MprView  # noqa: E402
from medviewer.imaging import display_image  # noqa: E402
from medviewer.imaging.mpr import ACQUIRED, build_volume  # noqa: E402
from medviewer.io import scan  # noqa: E402
from medviewer.workstation.mpr import PLANE_COLOURS, MprModel  # noqa: E402

PRONE = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows run to the patient's right, columns to anterior


@pytest.fixture(scope="module")
def prone(ct_series_dir):
    slices = [dataclasses.replace(inst, image_orientation_patient=PRONE)
              for inst in scan(ct_series_dir).series[0].instances[40:100]]
    return slices, build_volume(slices)


def _grab(widget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format_RGB888)
    arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height())
    return arr.reshape(img.height(), img.bytesPerLine())[:, : img.width() * 3].reshape(
        img.height(), img.width(), 3).copy()


def _has_colour(rgb: np.ndarray, colour, at_least: int = 50) -> bool:
    return int((np.abs(rgb.astype(int) - colour).sum(axis=2) < 30).sum()) >= at_least


def test_model_acquired_plane(prone):
    slices, vol = prone
    model = MprModel(vol)
    k = model.index(ACQUIRED)
    assert k == model.index("axial") and model.planes[ACQUIRED].labels == {"left": "L", "right": "R", "top": "P",
                                                                            "bottom": "A"}
    acquired = model.image(ACQUIRED)
    assert np.array_equal(acquired, display_image(slices[k]))  # the 2-D viewer's image of that slice
    assert np.array_equal(model.image("axial"), acquired[::-1, ::-1])  # read from the feet, anterior up
    assert {other for other, _kind, _pos in model.reference_lines(ACQUIRED)} == {"coronal", "sagittal"}
    assert model.caption(ACQUIRED).startswith(f"Acquired {k + 1}/60  z = ")
    # a click on the acquired plane moves the coronal and sagittal planes to that voxel
    model.click(ACQUIRED, 100.5, 300.5)
    assert (model.index("sagittal"), model.index("coronal")) == (100, 300)


def test_view_toggles_1x3_and_2x2(prone, qtbot):
    _slices, vol = prone
    view = MprView(MprModel(vol))
    qtbot.addWidget(view)
    view.resize(1200, 900)
    view.show()
    qtbot.waitExposed(view)
    assert view.layout_name == "1x3" and view.shown_planes() == ["axial", "coronal", "sagittal"]
    assert not view.planes[ACQUIRED].isVisible()
    view.layout_box.setCurrentIndex(1)  # the toolbar's toggle
    assert view.layout_name == "2x2" and view.shown_planes() == [ACQUIRED, "axial", "coronal", "sagittal"]
    for plane, r, c in LAYOUTS["2x2"]:
        assert view.planes[plane].isVisible()
        assert view.grid.getItemPosition(view.grid.indexOf(view.planes[plane]))[:2] == (r, c)
    acquired = view.planes[ACQUIRED]
    qtbot.waitUntil(lambda: acquired.width() > 300 and acquired.height() > 300)
    rgb = _grab(acquired)
    # the coronal and sagittal planes cross it; the axial plane is the same plane, so no red line
    assert _has_colour(rgb, PLANE_COLOURS["coronal"]) and _has_colour(rgb, PLANE_COLOURS["sagittal"])
    assert not _has_colour(rgb, PLANE_COLOURS["axial"], at_least=5)
    # clicking it drives the other planes
    before = view.model.index("sagittal")
    qtbot.mouseClick(acquired, Qt.LeftButton, pos=acquired.to_widget(400.5, 256.5).toPoint())
    assert view.model.index("sagittal") != before and view.model.index("sagittal") == pytest.approx(400, abs=1)
    view.set_layout("1x3")
    assert not acquired.isVisible() and view.layout_box.currentIndex() == 0
    with pytest.raises(ValueError, match="MPR layout"):
        view.set_layout("3x3")
