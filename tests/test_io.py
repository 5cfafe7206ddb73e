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
