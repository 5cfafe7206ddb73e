"""Overlay rendering and image export (medviewer.export), Qt-free."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from onnx_models import make_package

from medviewer.errors import MedViewerError
from medviewer.export import overlay_label, render_overlay, save_image
from medviewer.inference.package import ModelPackage
from medviewer.inference.session import Session


def test_overlay_shows_heat_and_outline_on_the_original_grid(tmp_path):
    sess = Session(ModelPackage.load(make_package(tmp_path / "m", resize="squeeze")), "cpu")
    img = np.full((120, 200), 30, np.uint8)
    img[40:80, 120:180] = 255
    pred = sess.predict([img])[0]
    assert overlay_label(pred, negative_label="NORMAL") == "PNEUMONIA"
    rgb = render_overlay(img, pred, caption=False, negative_label="NORMAL")
    assert rgb.shape == (120, 200, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[100:, :60], 30)  # far from the evidence: untouched grey
    assert (rgb[60, 150] != 255).any()  # the hot box is tinted
    outline = np.all(rgb == (255, 230, 0), axis=2)
    outline[:36] = False  # the region's caption is written just above it
    ys, xs = np.nonzero(outline)
    assert abs(xs.min() - 120) <= 3 and abs(xs.max() - 179) <= 3
    assert abs(ys.min() - 40) <= 3 and abs(ys.max() - 79) <= 3
    with pytest.raises(ValueError, match="unknown label"):
        render_overlay(img, pred, "EFFUSION")
    path = save_image(tmp_path / "o" / "overlay.png", render_overlay(img, pred))
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert back.shape == (120, 200, 3)


def test_save_image_round_trip_and_errors(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    back = cv2.imread(str(save_image(tmp_path / "x.png", rgb)))
    assert back[0, 0].tolist() == [0, 0, 200]  # written as BGR on disk: colours kept
    save_image(tmp_path / "g.jpg", np.zeros((4, 5), np.uint8))
    with pytest.raises(MedViewerError, match="unsupported image type"):
        save_image(tmp_path / "x.gif", rgb)
    with pytest.raises(MedViewerError, match="expected a uint8"):
        save_image(tmp_path / "x.png", rgb.astype(np.float32))


def test_heat_map_rule_is_the_viewports_ramp_and_composite_rounds_like_qt():
    from medviewer.inference.heatmap import HEAT_FLOOR, HEAT_RAMP, composite, heat_alpha, heat_rgba

    cam = np.array([[0.0, 0.1, HEAT_FLOOR, HEAT_FLOOR + HEAT_RAMP / 2, HEAT_FLOOR + HEAT_RAMP, 1.0]], np.float32)
    np.testing.assert_allclose(heat_alpha(cam, 0.6), [[0, 0, 0, 0.3, 0.6, 0.6]], atol=1e-6)
    rgba = heat_rgba(cam, "jet", 0.6)
    assert rgba.shape == (1, 6, 4)
    np.testing.assert_allclose(rgba[0, :, 3], [0, 0, 0, 76.5, 153, 153], atol=0.5)
    with pytest.raises(ValueError, match="opacity"):
        heat_alpha(cam, 1.5)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    layer = rng.integers(0, 256, (50, 60, 4), dtype=np.uint8)
    a = layer[..., 3:].astype(float) / 255
    exact = layer[..., :3] * a + base * (1 - a)
    assert np.abs(composite(base, layer) - exact).max() <= 1.0  # Qt's integer rounding, within 1 of exact
    np.testing.assert_array_equal(composite(base, np.zeros((50, 60, 4), np.uint8)), base)


def test_out_of_scope_overlay_has_no_heat_map_and_says_so(tmp_path):
    sess = Session(ModelPackage.load(make_package(tmp_path / "m", resize="squeeze")), "cpu")
    img = np.full((240, 320), 30, np.uint8)
    img[40:80, 120:180] = 255
    pred = sess.predict([img])[0]
    pred.applicability = {"status": "out_of_scope", "reasons": ["test"]}
    rgb = render_overlay(img, pred, caption=False, negative_label="NORMAL")
    changed = np.any(rgb != img[..., None], axis=2)
    rows = np.nonzero(changed.any(axis=1))[0]
    assert rows.size and rows.min() > 240 * 0.6  # only the intended-use line, near the bottom
    assert (rgb[changed] == (255, 159, 26)).all(axis=1).any()  # in the flag amber
