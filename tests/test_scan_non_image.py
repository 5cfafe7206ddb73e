"""The folder scan lists presentation states and structured reports as the non-image objects they are (by SOP
Class UID), never among the files that could not be opened; real objects written with highdicom next to a real
CT, and a real RT Plan (a non-image object the workstation does not read) still skipped with its reason."""

from __future__ import annotations

import shutil

import pydicom
import pytest

from medviewer.export.presentation_state import (
    GSPS_SOP_CLASS,
    Annotation,
    ReadingState,
    build_presentation_state,
)
from medviewer.io.scan import non_image_kind, scan
from tests.conftest import pydicom_test_file
from tests.vendor_sr import write_vendor_sr


@pytest.fixture
def study_folder(tmp_path):
    """A CT image, a GSPS and a TID 1500 SR that reference it, a truncated MR, an RT Plan and a text file."""
    ct_path = tmp_path / "ct.dcm"
    shutil.copy(pydicom_test_file("CT_small.dcm"), ct_path)
    ct = pydicom.dcmread(ct_path)
    ps = build_presentation_state([ct], ReadingState(window=(40.0, 400.0), annotations=[
        Annotation("distance", [(10.0, 10.0), (50.0, 10.0)], str(ct.SOPInstanceUID), 0, "26.5 mm")]))
    ps.save_as(tmp_path / "PR_state.dcm", enforce_file_format=True)
    write_vendor_sr(ct, tmp_path / "report.dcm")
    shutil.copy(pydicom_test_file("MR_truncated.dcm"), tmp_path / "truncated.dcm")
    shutil.copy(pydicom_test_file("rtplan.dcm"), tmp_path / "plan.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    return tmp_path, ct


def test_presentation_state_and_sr_are_non_images_not_failures(study_folder):
    folder, ct = study_folder
    result = scan(folder)
    assert [i.path.name for i in result.instances] == ["ct.dcm"]
    assert sorted(s.path.name for s in result.skipped) == ["notes.txt", "plan.dcm", "truncated.dcm"]
    by_name = {n.path.name: n for n in result.non_images}
    assert set(by_name) == {"PR_state.dcm", "report.dcm"}
    pr, sr = by_name["PR_state.dcm"], by_name["report.dcm"]
    assert pr.kind == "presentation state" and pr.sop_class_uid == GSPS_SOP_CLASS
    assert pr.sop_class_name == "Grayscale Softcopy Presentation State Storage"
    assert sr.kind == "structured report" and sr.sop_class_name == "Comprehensive 3D SR Storage"
    assert pr.study_instance_uid == sr.study_instance_uid == str(ct.StudyInstanceUID)
    assert pr.modality == "PR" and sr.modality == "SR" and pr.patient_id == str(ct.PatientID)
    assert result.non_image_summary() == "1 presentation state, 1 structured report"


def test_a_folder_of_only_a_presentation_state_has_nothing_to_skip(study_folder, tmp_path_factory):
    folder, _ = study_folder
    only = tmp_path_factory.mktemp("only")
    shutil.copy(folder / "PR_state.dcm", only / "a.dcm")
    result = scan(only)
    assert result.studies == [] and result.skipped == [] and len(result.non_images) == 1


def test_a_broken_presentation_state_header_is_still_skipped_with_a_reason(study_folder, tmp_path_factory):
    folder, _ = study_folder
    bad = tmp_path_factory.mktemp("bad") / "cut.dcm"
    bad.write_bytes((folder / "PR_state.dcm").read_bytes()[:200])
    result = scan(bad.parent)
    assert result.non_images == [] and [s.path.name for s in result.skipped] == ["cut.dcm"]


def test_non_image_kind_by_sop_class_uid():
    assert non_image_kind("1.2.840.10008.5.1.4.1.1.11.2") == "presentation state"  # colour softcopy PS
    assert non_image_kind("1.2.840.10008.5.1.4.1.1.88.59") == "structured report"  # key object selection
    assert non_image_kind("1.2.840.10008.5.1.4.1.1.2") is None  # CT Image Storage
    assert non_image_kind("1.2.840.10008.5.1.4.1.1.481.5") is None  # RT Plan: not read by the workstation
    assert non_image_kind("") is None
