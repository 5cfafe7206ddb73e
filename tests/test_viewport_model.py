"""The Qt-free viewport model (medviewer.workstation.viewport) without a window, on real DICOM files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pydicom_test_file
from frames import Frames
from onnx_models import make_package

from medviewer.imaging import display_image, presets_for
from medviewer.io import read_instance
from medviewer.workstation.overlay import AiOverlay, ai_overlay_layer
from medviewer.workstation.viewport import RenderCache, ViewportModel, minification_factors


class Recorder:
    """Every event a model emits, in order."""

    def __init__(self, m: ViewportModel) -> None:
        self.events: list[tuple] = []
        for name in ("source_changed", "frame_changed", "image_ready", "window_changed", "view_changed",
                     "overlay_changed", "links_changed", "frame_wanted"):
            getattr(m, name).connect(lambda *a, n=name: self.events.append((n, *a)))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def clear(self) -> None:
        self.events.clear()


def _ct_model(size=(512, 512)) -> tuple[ViewportModel, Frames, Recorder]:
    inst = read_instance(pydicom_test_file("CT_small.dcm"))
    m = ViewportModel()
    m.set_view_size(*size)
    rec = Recorder(m)
    src = Frames([inst], "ct")
    m.set_source(src, "ct")
    return m, src, rec


def test_frame_is_asked_for_then_adopted_with_the_file_window():
    m, src, rec = _ct_model()
    assert rec.names() == ["source_changed", "frame_wanted"] and rec.events[1] == ("frame_wanted", 0)
    assert not m.has_image() and m.display_layer() is None
    src.decode(0)
    rec.clear()
    m.on_frame_decoded(0)
    assert m.has_image()
    inst = src.instance(0)
    win = src.pipeline(0).default_window(src.cached(0))
    assert ("window_changed", float(win.center), float(win.width)) in rec.events
    assert rec.names()[-1] == "image_ready"
    assert (m.state.center_w, m.state.width_w) == (float(win.center), float(win.width)) == m.file_window
    assert m.frame_uid() == ("ct", 0) and m.current_instance() is inst
    rec.clear()
    m.on_frame_decoded(0)  # already shown: nothing happens
    assert rec.events == []


def test_display_layer_is_the_display_image_and_cached_by_key():
    m, src, _ = _ct_model()
    src.decode(0)
    m.on_frame_decoded(0)
    m.actual_size()  # zoom 1: full resolution
    layer = m.display_layer()
    np.testing.assert_array_equal(layer.image, display_image(src.instance(0)))
    assert (layer.scale_x, layer.scale_y) == (1.0, 1.0)
    assert m.display_layer() is layer  # same key: the cached image
    misses = m.cache.misses
    m.pan_by(13, -7)  # geometry alone does not re-render the grey scale
    assert m.display_layer() is layer and m.cache.misses == misses
    m.set_window(40, 400)
    lung = m.display_layer()
    assert lung is not layer and not np.array_equal(lung.image, layer.image)
    m.toggle_invert()
    inverted = m.display_layer()
    np.testing.assert_array_equal(inverted.image, 255 - lung.image)  # MONOCHROME2, linear window
    m.toggle_invert()
    assert m.display_layer() is lung  # back to a key still in the cache
    m.set_view_size(100, 100)
    m.fit()  # 128 px into 100: minified by an area average
    small = m.display_layer()
    fx, fy = minification_factors(m.state.zoom, m.state.aspect)
    assert fx < 1 and small.image.shape == (round(128 * fy), round(128 * fx))
    assert small.scale_x == pytest.approx(128 / small.image.shape[1])


def test_render_cache_one_rule_bounded_per_kind():
    c = RenderCache(max_per_kind=2)
    calls = []

    def make(v):
        return lambda: calls.append(v) or v

    assert c.get("display", 1, make("a")) == "a" and c.get("display", 1, make("x")) == "a"
    c.get("values", 1, make("v"))
    c.get("display", 2, make("b"))
    c.get("display", 3, make("c"))  # evicts display 1 only; values untouched
    assert c.get("values", 1, make("y")) == "v"
    assert c.get("display", 1, make("a2")) == "a2"
    assert calls == ["a", "v", "b", "c", "a2"] and len(c) == 3


def test_events_for_frame_window_and_view_commands():
    inst = read_instance(pydicom_test_file("emri_small.dcm"))  # MR, 10 frames
    m = ViewportModel()
    m.set_view_size(300, 200)
    src = Frames([inst], "mr")
    for k in range(len(src)):
        src.decode(k)
    m.set_source(src, "mr", frame=2)
    rec = Recorder(m)
    assert m.has_image() and m.frame == 2 and m.n_frames == 10
    assert not m.set_frame(2) and rec.events == []  # no change, no event
    assert m.step(100) and m.frame == 9  # adopted before frame_changed: listeners see has_image()
    assert rec.events == [("image_ready", 9), ("frame_changed", 9)]
    rec.clear()
    m.set_window(500, 800)
    assert rec.events == [("window_changed", 500.0, 800.0)]
    rec.clear()
    m.drag_window(10, 0)  # right widens
    assert m.state.width_w > 800 and rec.names() == ["window_changed"] and m.state.preset == ""
    rec.clear()
    for cmd in (lambda: m.zoom_by(2, (10, 10)), lambda: m.pan_by(5, 5), lambda: m.rotate(90),
                lambda: m.flip(True), m.fit, m.actual_size):
        cmd()
    assert rec.names() == ["view_changed"] * 6
    assert m.state.rotation == 90 and m.state.flip_h
    rec.clear()
    m.reset()
    assert m.state.rotation == 0 and not m.state.flip_h and m.state.fitted
    assert (m.state.center_w, m.state.width_w) == m.file_window
    assert "window_changed" in rec.names() and "view_changed" in rec.names()


def test_ct_values_presets_and_screen_mapping():
    m, src, _ = _ct_model((400, 300))
    src.decode(0)
    m.on_frame_decoded(0)
    vals, unit = m.values()
    assert unit == "HU"
    np.testing.assert_array_equal(vals, src.pipeline(0).modality_values(src.cached(0)))
    assert m.values()[0] is vals  # cached per frame
    lung = next(p for p in presets_for("CT") if p.name.lower() == "lung")
    m.apply_preset(lung)
    assert (m.state.center_w, m.state.width_w, m.state.preset) == (lung.center, lung.width, lung.name)
    m.zoom_by(1.7, (100, 50))
    x, y = m.to_image(123.0, 77.0)
    assert m.to_screen(x, y) == pytest.approx((123.0, 77.0))
    zoom = m.state.zoom
    m.set_view_size(800, 600)  # zoomed by hand: a resize keeps the zoom
    assert not m.state.fitted and m.state.zoom == zoom
    m.fit()
    fitted = m.state.zoom
    m.set_view_size(400, 300)  # fitted: a resize refits
    assert m.state.fitted and m.state.zoom == pytest.approx(fitted / 2)


def test_units_are_the_header_readers_not_the_modality(tmp_path):
    """HU is decided by Rescale Type (else CT), once: a CT whose Rescale Type says US is not labelled HU,
    an MR is not, and an MR whose Rescale Type says HU is -- in the values the ROI statistics use."""
    import pydicom

    from medviewer.io.enum import RescaleType

    def unit_of(name: str, rescale_type: str | None) -> tuple[str, RescaleType]:
        ds = pydicom.dcmread(pydicom_test_file(name))
        if rescale_type is not None:
            ds.RescaleType = rescale_type
            ds.RescaleSlope, ds.RescaleIntercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
        path = tmp_path / f"{name}-{rescale_type}.dcm"
        ds.save_as(path)
        inst = read_instance(path)
        m = ViewportModel()
        src = Frames([inst], "x")
        m.set_source(src, "x")
        src.decode(0)
        m.on_frame_decoded(0)
        return m.values()[1], inst.units

    assert unit_of("CT_small.dcm", None) == ("HU", RescaleType.HU)
    assert unit_of("CT_small.dcm", "US") == ("", RescaleType.US)
    assert unit_of("MR_small.dcm", None) == ("", RescaleType.US)
    assert unit_of("MR_small.dcm", "HU") == ("HU", RescaleType.HU)


def test_overlay_layer_is_the_one_function_at_the_views_geometry(tmp_path):
    from medviewer.inference.package import ModelPackage
    from medviewer.inference.session import Session

    m, src, rec = _ct_model((320, 240))
    src.decode(0)
    m.on_frame_decoded(0)
    u8 = display_image(src.instance(0))
    pkg = make_package(tmp_path / "m", name="test-cam", height=64, width=64, labels=("NORMAL", "PNEUMONIA"))
    pred = Session(ModelPackage.load(pkg), "cpu").predict([u8])[0]
    assert m.overlay_layer() is None
    rec.clear()
    m.set_ai(AiOverlay(("ct", 5), pred, list(pred.labels), list(pred.flagged), cam_label=1))
    assert rec.names() == ["overlay_changed"] and m.overlay_layer() is None  # another frame's result
    ai = AiOverlay(("ct", 0), pred, list(pred.labels), list(pred.flagged), opacity=0.5, cam_label=1)
    m.set_ai(ai)
    layer = m.overlay_layer()
    assert layer.shape == (240, 320, 4) and layer[..., 3].any()
    np.testing.assert_array_equal(layer, ai_overlay_layer(ai, (320, 240), m.matrix()))
    assert m.overlay_layer() is layer  # cached while nothing changes
    no_regions = m.overlay_layer(regions=False)
    assert (no_regions[..., 3] > 0).sum() < (layer[..., 3] > 0).sum()
    m.zoom_by(2.0, (160, 120))
    zoomed = m.overlay_layer()
    assert zoomed is not layer and (zoomed[..., 3] > 0).sum() > (layer[..., 3] > 0).sum()
    # "Show anyway" changes the prediction in place: the key follows its applicability and regions
    pred.applicability = {"status": "out_of_scope", "reasons": ["test"]}
    withheld = m.overlay_layer()
    assert (withheld[..., 3] > 0).sum() < (zoomed[..., 3] > 0).sum() / 4


def test_linking_flags_are_checked():
    m = ViewportModel()
    rec = Recorder(m)
    m.set_linked("scroll", True)
    m.set_linked("scroll", True)
    assert m.links == {"scroll"} and rec.names() == ["links_changed"]
    with pytest.raises(ValueError, match="cannot link 'colour'"):
        m.set_linked("colour", True)


def test_screen_layer_is_the_image_at_its_on_screen_size():
    """An axis-aligned view gets the display layer resampled to the image's on-screen rectangle (copied
    without scaling); a magnified or rotated view gets the part of the view the image covers, warped."""
    m, src, _ = _ct_model((100, 90))
    src.decode(0)
    m.on_frame_decoded(0)  # fitted into 100 x 90: the 128^2 slice shown at about 0.69x
    x, y, img = m.screen_layer()
    mat = m.matrix()
    x1, y1 = mat[:2] @ np.array([src.frames[0][0].columns, src.frames[0][0].rows, 1.0])
    assert abs(x - mat[0, 2]) <= 0.5 and abs(y - mat[1, 2]) <= 0.5  # whole pixels, within half a pixel
    assert abs(x + img.shape[1] - x1) <= 1 and abs(y + img.shape[0] - y1) <= 1
    assert img.dtype == np.uint8 and m.screen_layer()[2] is img  # cached under the layer's key
    # the same grey levels as the display layer (a resampling, not another rendering)
    assert abs(float(img.mean()) - float(m.display_layer().image.mean())) < 2.0
    def check(points_inside: int) -> None:  # every screen pixel shows the layer pixel the matrix puts there
        x, y, img = m.screen_layer()
        layer, mat = m.display_layer(), m.matrix()
        to_layer = np.linalg.inv(mat @ np.diag([layer.scale_x, layer.scale_y, 1.0]))
        lh, lw = layer.image.shape[:2]
        rng, seen = np.random.default_rng(0), 0
        for _ in range(400):
            sy, sx = int(rng.integers(0, img.shape[0])), int(rng.integers(0, img.shape[1]))
            lx, ly = (to_layer @ np.array([x + sx + 0.5, y + sy + 0.5, 1.0]))[:2]  # the pixel centre in the layer
            if not (1 <= lx < lw - 1 and 1 <= ly < lh - 1):
                continue
            near = layer.image[int(ly - 0.5):int(ly - 0.5) + 2, int(lx - 0.5):int(lx - 0.5) + 2].astype(int)
            assert near.min() - 1 <= int(img[sy, sx]) <= near.max() + 1, (sx, sy)  # bilinear between neighbours
            seen += 1
        assert seen >= points_inside

    # magnified 4x: only the part of the view the image covers, which is all of it here
    m.state.zoom *= 4
    x, y, img = m.screen_layer()
    assert (x, y) == (0, 0) and img.shape[:2] == (m.view_size[1], m.view_size[0])
    check(300)
    # fitted again and rotated 90 degrees, then 30 degrees and mirrored: the picture turned, black outside
    m.state.zoom /= 4
    m.state.rotation = 90
    check(300)
    m.state.rotation, m.state.flip_h = 30, True
    check(150)
    x, y, img = m.screen_layer()
    assert int(img[0, 0]) == 0  # a corner outside the turned image is the view's black
    m.state.center = (1e6, 1e6)  # panned away: nothing of the image in the view
    assert m.screen_layer() is None
