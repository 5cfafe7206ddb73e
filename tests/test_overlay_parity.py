"""What you export is what you saw: the viewport's AI overlay pixels equal the one overlay function's.

A real CT (pydicom's CT_small.dcm) and a real class activation map from a small ONNX CAM network
(tests/onnx_models.py) through ONNX Runtime. Tolerance: at most 1 grey level per channel. The viewport
draws the layer with Qt's raster engine, which premultiplies the RGBA colour and blends
``src + dst * (255 - a) / 255`` in 8 bits; :func:`medviewer.inference.heatmap.composite` does the same
arithmetic with Qt's integer rounding, and the pixels came out identical (0) where this was written;
the one level allows for a Qt build whose SIMD path rounds a product differently.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import pydicom_test_file
from onnx_models import make_package

pytest.importorskip("pytestqt")
from PySide6.QtGui import QImage  # noqa: E402

from medviewer.export import render_overlay  # noqa: E402
from medviewer.gui.viewport import AiOverlay, Viewport  # noqa: E402
from medviewer.imaging import display_image  # noqa: E402
from medviewer.inference.heatmap import composite  # noqa: E402
from medviewer.inference.package import ModelPackage  # noqa: E402
from medviewer.inference.session import Session  # noqa: E402
from medviewer.io import read_instance  # noqa: E402
from medviewer.workstation.frames import FrameSource  # noqa: E402
from medviewer.workstation.overlay import REGION_COLOR, ai_overlay_layer  # noqa: E402

TOLERANCE = 1  # grey levels, see the module docstring


def _rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format_RGB888)
    h, w = img.height(), img.width()
    return np.frombuffer(img.constBits(), np.uint8).reshape(h, img.bytesPerLine())[:, : w * 3].reshape(h, w, 3).copy()


@pytest.fixture
def ct_result(tmp_path: Path):
    """(frame source, display image, prediction) of CT_small.dcm with the test CAM network."""
    inst = read_instance(pydicom_test_file("CT_small.dcm"))
    src = FrameSource([inst])
    src.decode(0)
    u8 = display_image(inst)
    pkg = make_package(tmp_path / "m", name="test-cam", height=64, width=64, labels=("NORMAL", "PNEUMONIA"))
    pred = Session(ModelPackage.load(pkg), "cpu").predict([u8])[0]
    assert pred.flagged == ["PNEUMONIA"] and pred.regions, "the test needs a flagged result with regions"
    return src, u8, pred


def _viewport(qtbot, src: FrameSource, size: tuple[int, int]) -> Viewport:
    vp = Viewport()
    qtbot.addWidget(vp)
    vp.resize(*size)
    vp.set_source(src, "ct")
    assert vp.has_image()
    return vp


def test_viewport_overlay_pixels_equal_the_one_overlay_function_at_its_geometry(qtbot, ct_result):
    src, _, pred = ct_result
    vp = _viewport(qtbot, src, (420, 300))
    vp.model.zoom_by(2.3, (150, 120))  # magnified about an off-centre point, rotated, panned: no trivial grid
    vp.model.rotate(90)
    vp.model.pan_by(-17.0, 9.0)
    ai = AiOverlay(vp.frame_uid(), pred, list(pred.labels), list(pred.flagged), heatmap_on=True, opacity=0.6,
                   colormap="turbo", cam_label=1, show_regions=True)
    no_text = vp.grab().toImage()
    vp.show_overlays = True
    base = _rgb(vp.grab().toImage())  # image + corner text, no AI
    vp.show_overlays = False
    plain = _rgb(vp.grab().toImage())
    vp.show_overlays = True
    vp.set_ai(ai)
    shown = _rgb(vp.grab().toImage())
    assert no_text.size() == vp.size()

    layer = ai_overlay_layer(ai, (vp.width(), vp.height()), vp.model.matrix())  # the one function, not the model
    area = layer[..., 3] > 0
    assert area.sum() > 2000  # heat map and outlines cover a real part of the view
    assert np.all(layer[area][:, :3].reshape(-1, 3) == REGION_COLOR, axis=1).any()  # the outline is in the layer
    assert np.abs(shown.astype(int) - base.astype(int))[area].max() > 40  # the overlay is visible
    # the viewport draws its corner text over the layer; leave those pixels out (and 2 px around them, where
    # anti-aliased glyph edges can equal the image by chance)
    text = cv2.dilate(np.any(base != plain, axis=2).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    keep = area & ~text
    expected = composite(base, layer)
    diff = np.abs(shown.astype(int) - expected.astype(int))
    assert keep.sum() > 2000
    assert diff[keep].max() <= TOLERANCE
    # outside the layer the viewport shows the image untouched
    np.testing.assert_array_equal(shown[~area], base[~area])

    # PNG export (Viewport.render_image, the MainWindow.export_png path) is the screen, pixel for pixel
    exported = _rgb(vp.render_image(overlays=True, patient=True))
    np.testing.assert_array_equal(exported, shown)


def test_viewport_at_one_to_one_shows_what_infer_overlays_writes(qtbot, ct_result):
    """At 1:1 the viewport's image with the heat map is ``medviewer infer --overlays``' image."""
    src, u8, pred = ct_result
    h, w = u8.shape
    vp = _viewport(qtbot, src, (w + 64, h + 32))
    vp.model.actual_size()  # zoom 1, centred: the image at an integer offset
    assert vp.model.matrix()[0, 0] == 1.0
    ox, oy = 32, 16
    vp.show_overlays = False  # no corner text; regions follow the overlays switch
    vp.set_ai(AiOverlay(vp.frame_uid(), pred, list(pred.labels), list(pred.flagged), heatmap_on=True,
                        opacity=0.4, colormap="jet", cam_label=1, show_regions=True))
    shown = _rgb(vp.grab().toImage())[oy:oy + h, ox:ox + w]
    written = render_overlay(u8, pred, "PNEUMONIA", alpha=0.4, colormap="jet", regions=False, caption=False)
    assert np.abs(written.astype(int) - u8[..., None].astype(int)).max() > 40  # the heat map is there
    assert np.abs(shown.astype(int) - written.astype(int)).max() <= TOLERANCE


def test_out_of_scope_layer_has_only_the_scope_line(ct_result):
    """The policy is part of the one function: out of scope, no heat map and no region, the line says so."""
    _, u8, pred = ct_result
    h, w = u8.shape
    pred.applicability = {"status": "out_of_scope", "reasons": ["test"]}
    ai = AiOverlay(("ct", 0), pred, list(pred.labels), list(pred.flagged), heatmap_on=True, opacity=0.6,
                   colormap="jet", cam_label=1, show_regions=True)
    layer = ai_overlay_layer(ai, (w * 3, h * 3), np.diag([3.0, 3.0, 1.0]))
    drawn = layer[..., 3] > 0
    rows = np.nonzero(drawn.any(axis=1))[0]
    assert rows.size and rows.min() > h * 3 * 0.6  # only a line of text near the bottom
    pred.applicability = {**pred.applicability, "overridden": True}
    shown = ai_overlay_layer(ai, (w * 3, h * 3), np.diag([3.0, 3.0, 1.0]))
    assert (shown[..., 3] > 0).sum() > drawn.sum() * 3  # shown anyway: the heat map is back, labelled
