"""Reading instances: DICOM by content, header first, pixels lazily; PNG/JPEG; bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from conftest import pydicom_test_file

from medviewer.errors import ReadError
from medviewer.io import read_instance, sniff_kind


def test_ct_small_header_and_pixels():
    path = pydicom_test_file("CT_small.dcm")
    inst = read_instance(path)
    ref = pydicom.dcmread(path)
    assert inst.is_dicom and inst.modality == "CT"
    assert inst.sop_instance_uid == ref.SOPInstanceUID
    assert inst.series_instance_uid == ref.SeriesInstanceUID
    assert inst.study_instance_uid == ref.StudyInstanceUID
    assert (inst.rows, inst.columns, inst.number_of_frames) == (128, 128, 1)
    assert inst.pixel_spacing == pytest.approx(tuple(float(v) for v in ref.PixelSpacing))
    assert inst.pixel_spacing_source == "PixelSpacing"
    assert inst.image_position_patient == pytest.approx(tuple(float(v) for v in ref.ImagePositionPatient))
    assert "PixelData" not in inst.dataset  # header only
    np.testing.assert_array_equal(inst.stored_pixels(), ref.pixel_array)


def test_dicom_recognised_by_content_not_extension(tmp_path):
    src = pydicom_test_file("CT_small.dcm")
    renamed = tmp_path / "image.jpg"
    shutil.copy(src, renamed)
    assert sniff_kind(renamed) == "dicom"
    assert read_instance(renamed).modality == "CT"


def test_multiframe_reads_one_frame():
    path = pydicom_test_file("emri_small.dcm")
    inst = read_instance(path)
    ref = pydicom.dcmread(path).pixel_array
    assert inst.number_of_frames == ref.shape[0] == 10
    np.testing.assert_array_equal(inst.stored_pixels(7), ref[7])
    with pytest.raises(ReadError, match="out of range"):
        inst.stored_pixels(10)


def test_not_an_image(tmp_path):
    bad = tmp_path / "notes.dcm"
    bad.write_text("hello, this is not DICOM at all" * 20)
    with pytest.raises(ReadError, match="not a DICOM, PNG or JPEG"):
        read_instance(bad)
    with pytest.raises(ReadError, match="no such file"):
        read_instance(tmp_path / "missing.dcm")


# ---------------------------------------------------------------------------------------------- scan
def test_shared_ct_series_assembles_in_position_order(ct_series_dir):
    from medviewer.imaging import DisplayPipeline
    from medviewer.io import scan

    result = scan(ct_series_dir)
    assert len(result.studies) == 1 and len(result.series) == 1
    series = result.series[0]
    assert len(series.instances) == 134 and series.ordered_by == "position"
    assert not series.duplicates and not series.gaps
    z = np.array([i.image_position_patient[2] for i in series.instances])
    steps = np.diff(z)
    assert np.all(steps < 0) or np.all(steps > 0)  # strictly monotonic along the normal (axial: z)
    assert np.allclose(np.abs(steps), 3.0, atol=0.01) and series.slice_spacing_mm == pytest.approx(3.0)
    # the non-image files of the folder are reported, not silently dropped
    assert {s.path.name for s in result.skipped} == {"LICENSE", "CITATIONS"}
    mid = series.instances[67]
    hu = DisplayPipeline.from_instance(mid).modality_values(mid.stored_pixels())
    air = hu[40:80, 226:286]  # above the patient, inside the field of view
    assert abs(float(np.median(air)) + 1000) < 30


def test_scan_orders_by_position_not_name_and_reports_gaps_and_duplicates(ct_series_dir, tmp_path):
    from medviewer.io import scan

    src = sorted(ct_series_dir.glob("1-0[0-1]?.dcm"))[:12]  # 12 contiguous slices
    for k, f in enumerate(src):
        if k == 5:
            continue  # a missing slice -> a gap
        shutil.copy(f, tmp_path / f"img_{len(src) - k:03d}")  # names run against the slice order
    shutil.copy(src[8], tmp_path / "copy_of_slice_8.dcm")  # a duplicate SOP Instance
    (tmp_path / "notes.txt").write_text("not an image")
    result = scan(tmp_path)
    (series,) = result.series
    assert [i.instance_number for i in series.instances] == [pydicom.dcmread(f, stop_before_pixels=True)
                                                           .InstanceNumber for k, f in enumerate(src) if k != 5]
    assert len(series.duplicates) == 1
    assert len(series.gaps) == 1 and series.gaps[0].index == 5 and series.gaps[0].missing == 1
    assert series.gaps[0].distance_mm == pytest.approx(6.0, abs=0.01)
    assert [s.path.name for s in result.skipped] == ["notes.txt"]


def test_scan_falls_back_to_instance_number(tmp_path):
    from medviewer.io import scan

    src = pydicom_test_file("CT_small.dcm")
    for number in (3, 1, 2):
        ds = pydicom.dcmread(src)
        del ds.ImagePositionPatient
        ds.InstanceNumber = number
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
        ds.save_as(tmp_path / f"n{number * 7 % 5}.dcm")
    (series,) = scan(tmp_path).series
    assert series.ordered_by == "instance_number"
    assert [i.instance_number for i in series.instances] == [1, 2, 3]


def test_scan_reads_dicomdir_and_groups_patients():
    from medviewer.io import scan

    root = pydicom_test_file("DICOMDIR").parent
    result = scan(root / "DICOMDIR")
    assert result.studies and not result.cancelled
    patients = result.patients()
    assert len(patients) == 2  # the pydicom DICOMDIR test set holds two patients
    # every referenced image was read (or skipped with a reason), nothing else
    ref = pydicom.dcmread(root / "DICOMDIR")
    n_refs = sum(1 for r in ref.DirectoryRecordSequence if "ReferencedFileID" in r)
    assert len(result.instances) + sum(len(s.duplicates) for s in result.series) + len(result.skipped) == n_refs
    for series in result.series:
        if series.ordered_by == "position" and len(series.instances) > 2:
            normal = np.cross(*np.reshape(series.instances[0].image_orientation_patient, (2, 3)))
            d = [float(np.dot(i.image_position_patient, normal)) for i in series.instances]
            assert d == sorted(d) or d == sorted(d, reverse=True)


def test_scan_progress_and_cancel(ct_series_dir):
    from medviewer.io import scan

    calls = []

    def progress(done, total):
        calls.append((done, total))
        return done < 5  # cancel after five files

    result = scan(ct_series_dir, progress=progress)
    assert result.cancelled and len(calls) == 5 and calls[0][1] == 136
    assert len(result.instances) <= 5


def test_raster_files_are_one_image_studies(kermany_dir):
    from medviewer.io import scan

    files = sorted((kermany_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[:3]
    result = scan(files)
    assert len(result.studies) == 3
    for study in result.studies:
        (series,) = study.series
        (inst,) = series.instances
        assert inst.modality == "OT" and not inst.is_dicom and inst.pixel_spacing is None
        assert (inst.rows, inst.columns) == (224, 224)


def test_png_and_jpeg_variants(tmp_path):
    import cv2

    rng = np.random.default_rng(2)
    rgb16 = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    inst = read_instance(tmp_path / "rgb16.png")
    assert (inst.rows, inst.columns, inst.samples_per_pixel, inst.photometric_interpretation) == (20, 30, 3, "RGB")
    px = inst.stored_pixels()
    assert px.dtype == np.uint8 and px.shape == (20, 30, 3)
    np.testing.assert_array_equal(px, np.rint(rgb16 / 257.0).astype(np.uint8))
    rgba = np.dstack([rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), np.full((10, 12), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)  # BGRA on disk
    inst = read_instance(tmp_path / "rgba.png")
    np.testing.assert_array_equal(inst.stored_pixels(), rgba[:, :, 2::-1])  # alpha dropped, BGR -> RGB
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.jpg"), gray)
    inst = read_instance(tmp_path / "g.jpg")
    assert (inst.rows, inst.columns, inst.samples_per_pixel, inst.modality) == (16, 16, 1, "OT")
    np.testing.assert_array_equal(inst.stored_pixels(), cv2.imread(str(tmp_path / "g.jpg"), cv2.IMREAD_UNCHANGED))
    (tmp_path / "cut.png").write_bytes((tmp_path / "rgb16.png").read_bytes()[:40])
    with pytest.raises(ReadError, match="truncated"):
        read_instance(tmp_path / "cut.png").stored_pixels()


def test_error_line_is_one_line_for_any_exception():
    from medviewer.errors import ReadError, error_line

    assert error_line(ReadError("a.dcm", "Pixel Data is\ntruncated")) == "a.dcm: Pixel Data is truncated"
    assert error_line(ValueError("bad\n  value")) == "ValueError: bad value"
    assert error_line(KeyError()) == "KeyError"
    assert len(error_line(RuntimeError("x" * 1000))) == 300
