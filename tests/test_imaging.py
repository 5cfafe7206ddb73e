"""Display pipeline (PS3.3 C.11 / PS3.4 N.2) on real files: identity for 8-bit raster, MONOCHROME1,
windows, presets, LUT fast path vs the float path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import pydicom_test_file

from medviewer.imaging import (
    IDENTITY_8BIT,
    PRESETS,
    DisplayPipeline,
    VoiLutFunction,
    Window,
    apply_window,
    auto_window,
    display_image,
    find_preset,
    presets_for,
)
from medviewer.io import read_instance


def test_kermany_jpeg_display_is_identity(kermany_dir):
    files = sorted((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))[:3]
    assert files
    for f in files:
        inst = read_instance(f)
        raw = cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        shown = display_image(inst)
        assert shown.dtype == np.uint8
        assert np.array_equal(shown, raw)


def test_8bit_gray_png_identity_and_16bit_png_auto(tmp_path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g8.png"), img8)
    inst = read_instance(tmp_path / "g8.png")
    assert (inst.rows, inst.columns, inst.samples_per_pixel, inst.modality) == (40, 30, 1, "OT")
    assert np.array_equal(display_image(inst), img8)
    assert np.array_equal(display_image(inst, invert=True), 255 - img8)
    img16 = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 3).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), img16)
    inst16 = read_instance(tmp_path / "g16.png")
    assert inst16.bits_allocated == 16
    shown = display_image(inst16)
    assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255
    assert np.all(np.diff(shown.ravel().astype(int)) >= 0)  # monotonic ramp stays monotonic


def test_identity_window_maps_every_8bit_value_to_itself():
    x = np.arange(256, dtype=np.float64)
    assert np.array_equal(np.rint(apply_window(x, IDENTITY_8BIT) * 255).astype(int), np.arange(256))


def test_window_formulas_ps33_c11_2_1_2():
    # LINEAR: x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2 -> 1
    w = Window(40, 400)
    x = np.array([w.lower, w.lower + 1e-9, 40 - 0.5, w.upper, w.upper + 1e-9], np.float64)
    y = apply_window(x, w)
    assert y[0] == 0 and 0 < y[1] < 1e-6 and y[2] == pytest.approx(0.5) and y[3] == 1 and y[4] == 1
    e = Window(0, 100, VoiLutFunction.LINEAR_EXACT)
    assert apply_window(np.array([-50.0, 0.0, 25.0, 50.0]), e).tolist() == [0.0, 0.5, 0.75, 1.0]
    s = Window(0, 100, VoiLutFunction.SIGMOID)
    ys = apply_window(np.array([-1e4, 0.0, 1e4]), s)
    assert ys[0] == pytest.approx(0) and ys[1] == pytest.approx(0.5) and ys[2] == pytest.approx(1)


def test_window_validation():
    with pytest.raises(ValueError, match="LINEAR"):
        Window(0, 0.5)
    with pytest.raises(ValueError, match="> 0"):
        Window(0, 0, VoiLutFunction.SIGMOID)
    with pytest.raises(ValueError, match="finite"):
        Window(float("nan"), 10)


def test_presets():
    names = {p.name for p in presets_for("CT")}
    assert {"lung", "mediastinum", "abdomen", "liver", "bone", "brain"} <= names
    assert presets_for("MR") == []
    assert find_preset("Lung").window == Window(-600, 1500, VoiLutFunction.LINEAR, "lung")
    with pytest.raises(ValueError, match="known"):
        find_preset("kidney-ish")
    assert len({p.name for p in PRESETS}) == len(PRESETS)


def test_rg1_monochrome1_renders_with_dark_lungs():
    inst = read_instance(pydicom_test_file("RG1_UNCR.dcm"))
    assert inst.photometric_interpretation == "MONOCHROME1"
    img = display_image(inst)
    h, w = img.shape
    lungs = np.concatenate([img[h // 3: h // 2, w // 5: w // 3].ravel(), img[h // 3: h // 2, 2 * w // 3: 4 * w // 5].ravel()])
    spine = img[h // 3: h // 2, 9 * w // 20: 11 * w // 20]
    assert lungs.mean() < spine.mean() - 30  # lungs (low attenuation) darker than the mediastinum/spine
    inverted = display_image(inst, invert=True)
    assert np.array_equal(inverted, 255 - img)


def test_ct_small_hu_and_presets():
    inst = read_instance(pydicom_test_file("CT_small.dcm"))
    pipe = DisplayPipeline.from_instance(inst)
    stored = inst.stored_pixels()
    hu = pipe.modality_values(stored)
    ds = inst.dataset
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    lung = display_image(inst, preset="lung")
    bone = display_image(inst, preset="bone")
    assert lung.shape == bone.shape == (inst.rows, inst.columns)
    assert not np.array_equal(lung, bone)
    assert np.array_equal(display_image(inst, window=(-600, 1500)), lung)
    with pytest.raises(ValueError):
        display_image(inst, window=(0, 100), preset="lung")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_lut_fast_path_equals_float_path(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    stored = rng.integers(info.min, info.max, (64, 64), endpoint=True).astype(dtype)
    from medviewer.imaging.lut import ModalityLut

    pipe = DisplayPipeline(modality="CT", modality_lut=ModalityLut(slope=0.5, intercept=-20))
    for window in (Window(10, 300), Window(-5, 77, VoiLutFunction.LINEAR_EXACT), Window(3, 50, VoiLutFunction.SIGMOID)):
        for invert in (False, True):
            fast = pipe.render(stored, window, invert)
            ref = np.rint(apply_window(stored.astype(np.float64) * 0.5 - 20, window) * 255).astype(np.uint8)
            if invert:
                ref = 255 - ref
            assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1
            assert np.mean(fast == ref) > 0.999


def test_auto_window_is_robust_to_outliers():
    values = np.full((100, 100), 100.0)
    values[:, :50] = 0.0
    values[0, 0] = 1e6  # a single hot pixel must not flatten the contrast
    w = auto_window(values)
    assert w.lower <= 0 and w.upper >= 100 and w.width < 1000


def _variant(tmp_path, name: str, **attrs) -> object:
    """CT_small.dcm with some attributes changed, saved and read back."""
    import pydicom

    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    out = tmp_path / name
    ds.save_as(out)
    return read_instance(out)


def test_monochrome1_and_inverse_shape_invert_exactly_once(tmp_path):
    # the OHIF #818 / Weasis #372 class of bug: MONOCHROME1 must be inverted once, after the VOI
    mono2 = _variant(tmp_path, "m2.dcm")
    mono1 = _variant(tmp_path, "m1.dcm", PhotometricInterpretation="MONOCHROME1")
    mono1_inverse = _variant(tmp_path, "m1i.dcm", PhotometricInterpretation="MONOCHROME1",
                             PresentationLUTShape="INVERSE")
    mono2_inverse = _variant(tmp_path, "m2i.dcm", PresentationLUTShape="INVERSE")
    mono2_identity = _variant(tmp_path, "m2id.dcm", PresentationLUTShape="IDENTITY")
    base = display_image(mono2, window=(40, 400))
    assert not np.array_equal(base, 255 - base)
    for inst in (mono1, mono1_inverse, mono2_inverse):
        assert np.array_equal(display_image(inst, window=(40, 400)), 255 - base)
        assert np.array_equal(display_image(inst, window=(40, 400), invert=True), base)
    assert np.array_equal(display_image(mono2_identity, window=(40, 400)), base)


def test_choice_among_multiple_file_windows(tmp_path):
    inst = _variant(tmp_path, "w.dcm", WindowCenter=[40, -600], WindowWidth=[400, 1500],
                    WindowCenterWidthExplanation=["ABDOMEN", "LUNG"])
    pipe = DisplayPipeline.from_instance(inst)
    assert [w.explanation for w in pipe.windows] == ["ABDOMEN", "LUNG"]
    stored = inst.stored_pixels()
    assert pipe.default_window(stored) == pipe.windows[0]
    assert np.array_equal(pipe.render(stored), pipe.render(stored, Window(40, 400)))
    assert np.array_equal(pipe.render(stored, voi_index=1), pipe.render(stored, Window(-600, 1500)))
    assert not np.array_equal(pipe.render(stored, voi_index=1), pipe.render(stored))


def test_voi_lut_function_from_file(tmp_path):
    inst = _variant(tmp_path, "s.dcm", WindowCenter=40, WindowWidth=400, VOILUTFunction="SIGMOID")
    pipe = DisplayPipeline.from_instance(inst)
    assert pipe.windows[0].function == pipe.voi_function == VoiLutFunction.SIGMOID
    stored = inst.stored_pixels()
    hu = pipe.modality_values(stored).astype(np.float64)
    expected = np.rint(255 / (1 + np.exp(-4 * (hu - 40) / 400)))
    assert np.abs(pipe.render(stored).astype(int) - expected).max() <= 1


def test_invalid_file_window_is_skipped_not_fatal(tmp_path):
    inst = _variant(tmp_path, "bad_w.dcm", WindowCenter=40, WindowWidth=0)
    pipe = DisplayPipeline.from_instance(inst)
    assert pipe.windows == []
    img = display_image(inst)  # falls back to the automatic window
    assert img.dtype == np.uint8 and img.max() > img.min()


def test_raster_window_and_preset_apply_per_channel(kermany_dir):
    f = sorted((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))[0]
    inst = read_instance(f)
    raw = display_image(inst)
    narrow = display_image(inst, window=(128, 64))
    assert narrow.shape == raw.shape and narrow.dtype == np.uint8
    assert (narrow == 0).mean() > (raw == 0).mean()  # a narrow window clips more to black
    assert np.array_equal(display_image(inst, invert=True), 255 - raw)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "emri_small.dcm", "vlut_04.dcm",
                                  "mlut_18.dcm", "OBXXXX1A.dcm"])
def test_default_window_rebuilt_from_numbers_renders_the_default_display(name):
    # a viewer keeps only center/width while dragging: Window(c, w) must reproduce display_image's default
    inst = read_instance(pydicom_test_file(name))
    pipe = DisplayPipeline.from_instance(inst)
    stored = inst.stored_pixels()
    default = pipe.default_window(stored)
    shown = display_image(inst)
    if default is None:  # colour: shown unchanged
        assert inst.is_color and np.array_equal(shown, stored)
        return
    rebuilt = pipe.render(stored, Window(default.center, default.width))
    if pipe.voi_luts:  # the file's VOI LUT is only used with window=None; W/L starts from the auto window
        assert np.array_equal(shown, pipe.render(stored, None))
        assert rebuilt.min() == 0 and rebuilt.max() == 255
    else:
        assert np.array_equal(rebuilt, shown)


def test_display_image_uses_already_decoded_stored_values():
    """A viewer passes its cached frame instead of decoding again; the result is the same image."""
    inst = read_instance(pydicom_test_file("CT_small.dcm"))
    stored = inst.stored_pixels(0)
    np.testing.assert_array_equal(display_image(inst, stored=stored), display_image(inst))
    flipped = np.ascontiguousarray(stored[::-1])
    np.testing.assert_array_equal(display_image(inst, stored=flipped), display_image(inst)[::-1])
