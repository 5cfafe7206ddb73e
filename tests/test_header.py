"""The one header reader (medviewer.io.header): functional-group precedence, per-frame spacing and rescale,
units (HU decided once), and the one rule for missing/invalid DS values -- on real files and edited copies."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import pydicom_test_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medviewer.errors import ReadError
from medviewer.imaging import DisplayPipeline, display_image
from medviewer.io import PixelSpacingSource, read_instance
from medviewer.io import header as hdr
from medviewer.io.enum import RescaleType

ENHANCED_CT = "eCT_Supplemental.dcm"  # pydicom-data: Enhanced CT, 2 frames, shared Pixel Measures / rescale (US)


def _read(name: str) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(pydicom_test_file(name))


def _save(ds: Dataset, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=False)
    return path


def _raw(ds: Dataset, keyword: str, value: str | list[str]) -> None:
    """Put `value` into `ds` as the raw bytes a non-conformant writer leaves (pydicom validates on set)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    raw = ("\\".join(value) if isinstance(value, list) else value).encode("ascii")
    raw += b" " * (len(raw) % 2)
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)


def _item(**attrs: object) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def _enhanced_with_frame2_overrides(tmp_path: Path) -> Path:
    """The real Enhanced CT with frame 2 given its own Pixel Measures and Pixel Value Transformation."""
    ds = _read(ENHANCED_CT)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.388672, 0.388672]
    assert shared.PixelValueTransformationSequence[0].RescaleType == "US"
    frame2 = ds.PerFrameFunctionalGroupsSequence[1]
    frame2.PixelMeasuresSequence = Sequence([_item(PixelSpacing=["0.5", "0.25"], SliceThickness="2.5")])
    frame2.PixelValueTransformationSequence = Sequence(
        [_item(RescaleSlope="2", RescaleIntercept="-500", RescaleType="HU")])
    return _save(ds, tmp_path / "enhanced.dcm")


# ------------------------------------------------------------------------------ functional groups
def test_per_frame_pixel_measures_override_shared(tmp_path):
    inst = read_instance(_enhanced_with_frame2_overrides(tmp_path))
    assert inst.number_of_frames == 2
    first, second = inst.frame_pixel_spacing(0), inst.frame_pixel_spacing(1)
    assert first.as_tuple() == (0.388672, 0.388672)  # frame 1 has no per-frame item: the shared one
    assert second.as_tuple() == (0.5, 0.25) and second.source == PixelSpacingSource.PIXEL_SPACING
    assert inst.pixel_spacing == first.as_tuple()  # the typed field is frame 1's
    assert hdr.slice_thickness(inst.dataset, 0) == 10.0 and hdr.slice_thickness(inst.dataset, 1) == 2.5
    measures = hdr.functional_group(inst.dataset, "PixelMeasuresSequence", 1)
    assert [float(v) for v in measures.PixelSpacing] == [0.5, 0.25]


def test_per_frame_rescale_overrides_shared_in_the_pipeline(tmp_path):
    inst = read_instance(_enhanced_with_frame2_overrides(tmp_path))
    shared, own = inst.frame_rescale(0), inst.frame_rescale(1)
    assert (shared.slope, shared.intercept, shared.rescale_type, shared.units) == (1.0, -1024.0, "US", RescaleType.US)
    assert (own.slope, own.intercept, own.rescale_type, own.units) == (2.0, -500.0, "HU", RescaleType.HU)
    for frame, rescale in ((0, shared), (1, own)):
        stored = inst.stored_pixels(frame)
        pipe = DisplayPipeline.from_instance(inst, frame)
        expected = stored.astype(np.float64) * rescale.slope + rescale.intercept
        np.testing.assert_array_equal(pipe.modality_values(stored), expected.astype(np.float32))
        assert pipe.units == rescale.units and pipe.modality_lut.units == rescale.units
    # the same window gives different pictures because the modality values differ
    assert not np.array_equal(display_image(inst, 0, window=(0, 400)), display_image(inst, 1, window=(0, 400)))


def test_functional_group_precedence_is_per_frame_then_shared():
    ds = _read(ENHANCED_CT)
    shared_measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert hdr.functional_group(ds, "PixelMeasuresSequence", 0) is shared_measures
    positions = [hdr.functional_group(ds, "PlanePositionSequence", k) for k in (0, 1)]
    assert positions[0] is ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    assert positions[1] is ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    assert hdr.image_position(ds, 0) != hdr.image_position(ds, 1)  # two real slices
    assert hdr.functional_group(ds, "NoSuchSequence", 0) is None
    assert hdr.functional_group(ds, "PixelMeasuresSequence", 99) is shared_measures  # no frame 100: shared


def test_bad_per_frame_rescale_is_refused_naming_the_frame(tmp_path):
    ds = _read(ENHANCED_CT)
    ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence = Sequence(
        [_item(RescaleSlope="1", RescaleIntercept="-1024", RescaleType="HU")])
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence = Sequence(
        [_item(RescaleSlope="1e308", RescaleIntercept="0", RescaleType="HU")])
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    path = _save(ds, tmp_path / "bad.dcm")
    with pytest.raises(ReadError, match=r"frame 2: Rescale Slope 1e\+308 / Intercept 0 overflow"):
        read_instance(path)


# ------------------------------------------------------------------------------ units: HU decided once
def test_ct_without_rescale_type_is_hu():
    inst = read_instance(pydicom_test_file("CT_small.dcm"))
    assert inst.modality == "CT" and "RescaleType" not in inst.dataset
    assert inst.units == RescaleType.HU and inst.frame_rescale().is_hu
    assert DisplayPipeline.from_instance(inst).units == RescaleType.HU


def test_shared_ct_series_is_hu(ct_series_dir):
    inst = read_instance(sorted(ct_series_dir.glob("*.dcm"))[0])
    assert "RescaleType" not in inst.dataset and inst.units == RescaleType.HU
    assert DisplayPipeline.from_instance(inst).units.label == "HU"


def test_ct_with_rescale_type_us_is_not_hu(tmp_path):
    ds = _read("CT_small.dcm")
    ds.RescaleType = "US"
    inst = read_instance(_save(ds, tmp_path / "ct_us.dcm"))
    assert inst.modality == "CT"
    assert inst.units == RescaleType.US and not inst.frame_rescale().is_hu
    pipe = DisplayPipeline.from_instance(inst)
    assert pipe.units == RescaleType.US and pipe.units.label == ""
    # the real Enhanced CT says US too
    assert read_instance(pydicom_test_file(ENHANCED_CT)).units == RescaleType.US


def test_rescale_type_decides_units_for_any_modality():
    assert read_instance(pydicom_test_file("693_UNCR.dcm")).units == RescaleType.HU  # CT, Rescale Type HU
    assert read_instance(pydicom_test_file("MR2_UNCR.dcm")).units == RescaleType.US  # MR, Rescale Type US
    assert read_instance(pydicom_test_file("MR_small.dcm")).units == RescaleType.US  # MR, none
    mlut = read_instance(pydicom_test_file("mlut_18.dcm"))  # Modality LUT Sequence, Modality LUT Type US
    assert mlut.units == RescaleType.US and DisplayPipeline.from_instance(mlut).units == RescaleType.US
    assert hdr.rescale_units("hu ", "MR") == RescaleType.HU
    assert hdr.rescale_units("", "ct") == RescaleType.HU
    assert hdr.rescale_units("COUNTS", "CT") == RescaleType.US  # not a defined term: unspecified
    assert hdr.rescale_units("MGML", "CT") == RescaleType.MGML and RescaleType.MGML.label == "mg/ml"
    png_like = DisplayPipeline(modality="OT")
    assert png_like.units == RescaleType.US


# ------------------------------------------------------------------------------ the one DS rule: None
@pytest.mark.parametrize("raw", ["abc", "nan", "inf", "-inf", "1e999", "1..2"])
def test_invalid_ds_values_read_as_none(raw):
    ds = Dataset()
    _raw(ds, "SliceLocation", raw)
    _raw(ds, "PixelSpacing", ["0.5", raw])
    _raw(ds, "WindowCenter", ["40", raw, "-600"])
    assert hdr.decimal(ds, "SliceLocation") is None
    assert hdr.decimals(ds, "PixelSpacing", 2) is None  # a vector with a bad component is missing
    assert hdr.decimal_values(ds, "WindowCenter") == (40.0, None, -600.0)  # per value in a VM 1-n list


def test_missing_empty_and_wrong_count_read_as_none():
    ds = Dataset()
    assert hdr.decimal(ds, "SliceLocation") is None and hdr.decimal_values(ds, "WindowCenter") is None
    ds.SliceLocation = ""
    assert hdr.decimal(ds, "SliceLocation") is None
    ds.PixelSpacing = ["0.5", "0.5", "0.5"]
    assert hdr.decimals(ds, "PixelSpacing", 2) is None
    ds.SliceLocation = ["1", "2"]
    assert hdr.decimal(ds, "SliceLocation") is None
    ds.SliceLocation = " -12.5 "
    assert hdr.decimal(ds, "SliceLocation") == -12.5
    assert hdr.integer(ds, "InstanceNumber") is None


def test_ds_rule_on_a_real_file(tmp_path):
    """Garbage in a real CT: the spacing and a window read as missing; a bad slope refuses the image."""
    ds = _read("CT_small.dcm")
    _raw(ds, "PixelSpacing", ["0.66", "abc"])
    _raw(ds, "SliceLocation", "nan")
    _raw(ds, "WindowCenter", ["40", "abc"])
    _raw(ds, "WindowWidth", ["400", "1500"])
    inst = read_instance(_save(ds, tmp_path / "garbage.dcm"))
    assert inst.pixel_spacing is None and inst.pixel_spacing_source is None and inst.frame_pixel_spacing() is None
    assert inst.slice_location is None
    pipe = DisplayPipeline.from_instance(inst)
    assert [(w.center, w.width) for w in pipe.windows] == [(40.0, 400.0)]
    assert pipe.notes[0] == "window 2 of the file ignored: its Window Center/Width is not a number"

    _raw(ds, "RescaleSlope", "abc")
    with pytest.raises(ReadError, match=r"Rescale Slope \(0028,1053\) is 'abc', not a finite number"):
        read_instance(_save(ds, tmp_path / "bad_slope.dcm"))


# ------------------------------------------------------------------------------ pixel spacing source
def test_pixel_spacing_source_order(tmp_path):
    ds = _read("MR_small.dcm")
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.143", "0.144"]
    ds.NominalScannedPixelSpacing = ["0.2", "0.2"]
    inst = read_instance(_save(ds, tmp_path / "imager.dcm"))
    assert inst.pixel_spacing == (0.143, 0.144)
    assert inst.pixel_spacing_source == PixelSpacingSource.IMAGER_PIXEL_SPACING == "ImagerPixelSpacing"
    assert not inst.pixel_spacing_source.in_patient

    del ds.ImagerPixelSpacing
    inst = read_instance(_save(ds, tmp_path / "scanned.dcm"))
    assert inst.pixel_spacing == (0.2, 0.2)
    assert inst.pixel_spacing_source == PixelSpacingSource.NOMINAL_SCANNED_PIXEL_SPACING

    ds.PixelSpacing = ["0", "0.3"]  # present but not positive: skipped for the next source
    inst = read_instance(_save(ds, tmp_path / "zero.dcm"))
    assert inst.pixel_spacing_source == PixelSpacingSource.NOMINAL_SCANNED_PIXEL_SPACING


# ------------------------------------------------------------------------------ one source of truth
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", ENHANCED_CT, "RG1_UNCR.dcm", "SC_rgb.dcm"])
def test_typed_fields_are_what_the_reader_gives(name):
    inst = read_instance(pydicom_test_file(name))
    ds = inst.dataset
    spacing = hdr.pixel_spacing(ds, 0)
    assert inst.pixel_spacing == (spacing.as_tuple() if spacing else None)
    assert inst.pixel_spacing_source == (spacing.source if spacing else None)
    assert inst.image_position_patient == hdr.image_position(ds, 0)
    assert inst.image_orientation_patient == hdr.image_orientation(ds, 0)
    assert inst.slice_thickness == hdr.slice_thickness(ds, 0)
    assert inst.modality == hdr.text(ds, "Modality").upper()
    assert inst.photometric_interpretation == hdr.text(ds, "PhotometricInterpretation")
    assert inst.sop_instance_uid == str(ds.SOPInstanceUID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inst.pixel_spacing = (1.0, 1.0)  # type: ignore[misc]


def test_reader_does_not_touch_the_dataset():
    ds = _read(ENHANCED_CT)
    before = copy.deepcopy(ds)
    for frame in (0, 1):
        hdr.pixel_spacing(ds, frame), hdr.rescale(ds, frame), hdr.image_position(ds, frame)
    assert ds == before


# ------------------------------------------------------------------------------ the CLI reports what the reader decides
def _cli(capsys, *argv: object) -> tuple[int, str, str]:
    import medviewer.cli as cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_reports_units_and_spacing_source(capsys, tmp_path):
    code, out, _ = _cli(capsys, "info", "--json", pydicom_test_file(ENHANCED_CT))
    series = json.loads(out)["studies"][0]["series"][0]
    assert code == 0 and series["units"] == "US" and series["pixel_spacing_source"] == "PixelSpacing"
    code, out, _ = _cli(capsys, "info", pydicom_test_file("CT_small.dcm"))
    assert code == 0 and "0.6615x0.6615 mm (PixelSpacing)  HU" in out

    ds = _read("MR_small.dcm")
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.143", "0.143"]
    code, out, _ = _cli(capsys, "info", "--json", _save(ds, tmp_path / "imager.dcm"))
    series = json.loads(out)["studies"][0]["series"][0]
    assert series["pixel_spacing_source"] == "ImagerPixelSpacing" and series["units"] == "US"


def test_render_notes_an_hu_preset_on_values_that_are_not_hu(capsys, tmp_path):
    code, _, err = _cli(capsys, "render", pydicom_test_file("CT_small.dcm"), "--preset", "lung",
                        "--out", tmp_path / "ct.png")
    assert code == 0 and err == ""
    ds = _read("CT_small.dcm")
    ds.RescaleType = "US"
    code, _, err = _cli(capsys, "render", _save(ds, tmp_path / "ct_us.dcm"), "--preset", "lung",
                        "--out", tmp_path / "ct_us.png")
    assert code == 0
    assert err.strip().endswith("preset 'lung' is in HU, but this image's values are in unspecified units "
                                "(Modality CT, Rescale Type US); rendered with it anyway")
    assert (tmp_path / "ct_us.png").is_file()


def test_binary_numbers_read_without_pydicom_conversion_equal_pydicom(tmp_path):
    """The fast path of header.value for unconverted US/SS/UL/SL/FL/FD elements gives exactly pydicom's
    values, on every such element of pydicom's test files (both byte orders, implicit and explicit VR)."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    compared, orders = 0, set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm")):
            try:
                fast = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                tags = list(fast.keys())
            except Exception:
                continue
            slow = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            for tag in tags:
                raw = fast.get_item(tag)
                keyword = keyword_for_tag(tag)
                if not isinstance(raw, RawDataElement) or not keyword or tag_for_keyword(keyword) != tag:
                    continue  # converted already, private, or a repeating group (60xx overlays)
                vr = raw.VR or dictionary_VR(tag)
                if vr not in ("US", "SS", "UL", "SL", "FL", "FD"):
                    continue
                try:
                    expected = slow[tag].value
                except Exception:
                    continue
                expected = None if expected in (None, "", b"") else (
                    list(expected) if isinstance(expected, pydicom.multival.MultiValue | list) else expected)
                assert hdr.value(fast, keyword) == expected, (path, keyword)
                compared += 1
                orders.add(raw.is_little_endian)
    assert compared > 500 and orders == {True, False}
