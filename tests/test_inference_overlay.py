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
