"""Class activation maps land on the right original pixels; regions, mm areas and heat-map colouring."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from onnx_models import cam_model, make_package

from medviewer.inference.card import ResizeMode
from medviewer.inference.heatmap import COLORMAPS, blend, colorize, normalize_cam
from medviewer.inference.package import ModelPackage
from medviewer.inference.regions import find_regions
from medviewer.inference.session import Session


def _blob(h, w, cx, cy, sigma=12.0, channels=None):
    yy, xx = np.mgrid[:h, :w]
    img = (255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2) if channels == 3 else img


def _session(tmp_path, resize, stride=1, height=64, width=64, channels=1):
    d = make_package(tmp_path / f"m-{resize}-{stride}", model=cam_model(height, width, channels, stride=stride),
                     height=height, width=width, channels=channels, resize=resize)
    return Session(ModelPackage.load(d), "cpu")


def _peak_xy(cam):
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(x), int(y)


@pytest.mark.parametrize(("resize", "shape", "centre"), [
    (ResizeMode.LETTERBOX, (300, 500), (350, 100)),  # landscape: padded above and below
    (ResizeMode.LETTERBOX, (500, 300), (60, 420)),  # portrait: padded left and right
    (ResizeMode.SQUEEZE, (300, 500), (350, 100)),
    (ResizeMode.SQUEEZE, (180, 700), (90, 150)),
])
def test_cam_peak_maps_to_the_original_pixel(tmp_path, resize, shape, centre):
    sess = _session(tmp_path, resize)
    img = _blob(*shape, *centre)
    pred = sess.predict([img])[0]
    assert pred.cams.shape == (2, *shape) and pred.cams.dtype == np.float32
    x, y = _peak_xy(pred.cam("PNEUMONIA"))
    # one input pixel is 500/64 ~ 7.8 original pixels; the peak must be within half of one
    assert abs(x - centre[0]) <= 4 and abs(y - centre[1]) <= 4, (x, y, centre)
    assert pred.cam("PNEUMONIA").max() == pytest.approx(1.0)
    assert pred.cam("NORMAL").max() == 0.0  # no positive evidence for NORMAL anywhere


def test_ignoring_the_letterbox_would_miss(tmp_path):
    """The test above can fail: stretching the whole padded input over the image puts the peak elsewhere."""
    sess = _session(tmp_path, ResizeMode.LETTERBOX)
    img = _blob(300, 500, 350, 40)
    prep = sess.prepare(img)
    _, cam = sess.run(prep.x[None])
    naive = cv2.resize(cam[0, 1], (500, 300), interpolation=cv2.INTER_LINEAR)
    assert abs(_peak_xy(naive)[1] - 40) > 20
    assert abs(_peak_xy(sess.finish(prep, *(o[0] for o in sess.run(prep.x[None]))).cam("PNEUMONIA"))[1] - 40) <= 4


def test_coarse_feature_map_lands_within_one_cell(tmp_path):
    sess = _session(tmp_path, ResizeMode.LETTERBOX, stride=8, height=64, width=64)
    assert sess.package.feature_shape == (8, 8)
    centre = (410, 150)
    pred = sess.predict([_blob(300, 500, *centre, sigma=50)])[0]
    x, y = _peak_xy(pred.cam("PNEUMONIA"))
    cell = 8 * 500 / 64  # one feature cell in original pixels (62.5)
    assert abs(x - centre[0]) <= cell and abs(y - centre[1]) <= cell
    assert pred.cam("PNEUMONIA")[:, :250].max() < 0.5  # the left half is far from the peak


def test_rgb_input_and_three_channel_model(tmp_path):
    sess = _session(tmp_path, ResizeMode.SQUEEZE, channels=3, height=32, width=48)
    pred = sess.predict([_blob(120, 160, 40, 90, channels=3)])[0]
    x, y = _peak_xy(pred.cam("PNEUMONIA"))
    assert abs(x - 40) <= 3 and abs(y - 90) <= 3


def test_region_of_a_bright_rectangle_has_its_size_in_mm(tmp_path):
    sess = _session(tmp_path, ResizeMode.SQUEEZE, height=128, width=128)
    img = np.zeros((300, 500), np.uint8)
    img[120:180, 200:300] = 255  # 100 x 60 px
    pred = sess.predict([img], [(0.5, 0.25)])[0]  # rows 0.5 mm apart, columns 0.25 mm
    assert pred.flagged == ["PNEUMONIA"]
    [reg] = pred.regions
    assert reg.label == "PNEUMONIA"
    x0, y0, x1, y1 = reg.bbox
    assert abs(x0 - 200) <= 4 and abs(x1 - 300) <= 4 and abs(y0 - 120) <= 4 and abs(y1 - 180) <= 4
    assert reg.area_px == pytest.approx(6000, rel=0.1)
    assert reg.area_mm2 == pytest.approx(reg.area_px * 0.125)
    assert reg.bbox_mm == pytest.approx((x0 * 0.25, y0 * 0.5, x1 * 0.25, y1 * 0.5))
    assert reg.size_mm == pytest.approx(((x1 - x0) * 0.25, (y1 - y0) * 0.5))
    assert reg.peak == pytest.approx(1.0) and 0.5 <= reg.mean <= 1.0
    # without spacing: pixels only
    [reg2] = sess.predict([img])[0].regions
    assert reg2.area_mm2 is None and reg2.bbox_mm is None and reg2.bbox == reg.bbox


def test_find_regions_thresholds_orders_and_filters():
    cam = np.zeros((100, 200), np.float32)
    cam[10:30, 20:60] = 0.6  # 800 px, weaker
    cam[50:90, 120:180] = 1.0  # 2400 px, strongest
    cam[70:72, 10:12] = 0.9  # 4 px speck
    regs = find_regions(cam, "X", (2.0, 1.0), fraction=0.5, min_area_px=10)
    assert [r.bbox for r in regs] == [(120, 50, 180, 90), (20, 10, 60, 30)]
    assert [r.area_px for r in regs] == [2400, 800]
    assert [r.area_mm2 for r in regs] == [4800.0, 1600.0]
    assert regs[1].peak == pytest.approx(0.6) and regs[1].mean == pytest.approx(0.6)
    c = regs[0].contour
    assert c.dtype == np.int32 and c.shape[1] == 2
    assert c[:, 0].min() == 120 and c[:, 0].max() == 179 and c[:, 1].min() == 50 and c[:, 1].max() == 89
    assert len(find_regions(cam, "X", fraction=0.7, min_area_px=1)) == 2  # 0.6 block drops out, speck stays
    assert find_regions(np.zeros((5, 5), np.float32), "X") == []
    with pytest.raises(ValueError, match="fraction"):
        find_regions(cam, "X", fraction=0.0)


def test_normalize_cam_maps_peak_to_one_and_negative_to_zero():
    raw = np.array([[[-2.0, 0.0], [1.0, 4.0]], [[-1.0, -3.0], [-2.0, -0.5]]], np.float32)
    out = normalize_cam(raw)
    np.testing.assert_allclose(out[0], [[0.0, 0.0], [0.25, 1.0]])
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(normalize_cam(raw[0]), out[0])


def test_colorize_and_blend():
    cam = np.zeros((10, 20), np.float32)
    cam[:, 10:] = 1.0
    for name in COLORMAPS:
        assert colorize(cam, name).shape == (10, 20, 3)
    jet = colorize(cam, "jet")
    assert jet[0, 15, 0] > 100 and jet[0, 15, 2] < 50  # hot = red in RGB order
    assert jet[0, 0, 2] > 100 and jet[0, 0, 0] < 50  # cold = blue
    gray = np.full((10, 20), 100, np.uint8)
    out = blend(gray, cam, alpha=0.5, colormap="turbo")
    assert out.dtype == np.uint8 and out.shape == (10, 20, 3)
    np.testing.assert_array_equal(out[:, :10], 100)  # no activation: image unchanged
    assert np.abs(out[:, 10:].astype(int) - 100).max() > 20
    flat = blend(gray, cam, alpha=0.5, colormap="jet", weighted=False)
    assert np.abs(flat[:, :10].astype(int) - 100).max() > 20  # classic: tinted everywhere
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(cam, "rainbowz")
    with pytest.raises(ValueError, match="does not match"):
        blend(gray, cam[:5], 0.5)
