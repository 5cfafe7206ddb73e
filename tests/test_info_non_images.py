"""``medviewer info`` lists presentation states and structured reports as the non-image objects they are, under
their study, never as failures: a GSPS written with the project's writer and a TID 1500 SR written with
highdicom as another vendor would, beside pydicom's CT_small, plus a real RT Plan that is still skipped."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

from medviewer.cli import main
from medviewer.export.presentation_state import Annotation, ReadingState, build_presentation_state
from tests.conftest import pydicom_test_file
from tests.vendor_sr import write_vendor_sr


@pytest.fixture
def folder(tmp_path):
    ct_path = tmp_path / "ct.dcm"
    shutil.copy(pydicom_test_file("CT_small.dcm"), ct_path)
    ct = pydicom.dcmread(ct_path)
    ps = build_presentation_state([ct], ReadingState(window=(40.0, 400.0), annotations=[
        Annotation("distance", [(10.0, 10.0), (50.0, 10.0)], str(ct.SOPInstanceUID), 0, "26.5 mm")]))
    ps.save_as(tmp_path / "PR_state.dcm", enforce_file_format=True)
    write_vendor_sr(ct, tmp_path / "report.dcm")
    shutil.copy(pydicom_test_file("rtplan.dcm"), tmp_path / "plan.dcm")
    return tmp_path, ct, ps


def test_text_tree_lists_pr_and_sr_under_their_study(folder, capsys):
    path, ct, ps = folder
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    study = next(i for i, ln in enumerate(lines) if ln.startswith("  Study "))
    skipped = next(i for i, ln in enumerate(lines) if ln.startswith("Skipped"))
    pr = next(i for i, ln in enumerate(lines) if "presentation state" in ln)
    sr = next(i for i, ln in enumerate(lines) if "structured report" in ln)
    assert study < pr < skipped and study < sr < skipped  # inside the study, not among the failures
    assert lines[pr] == (f"    Series  PR  1 presentation state (Grayscale Softcopy Presentation State Storage), "
                         f"not an image  uid {ps.SeriesInstanceUID}")
    assert "    Series  SR  1 structured report (Comprehensive 3D SR Storage), not an image  uid " in lines[sr]
    assert out.count("Skipped 1 file:") == 1 and "plan.dcm" in out  # the RT Plan is still skipped
    assert "PR_state.dcm" not in out and "report.dcm" not in out


def test_json_has_non_images(folder, capsys):
    path, ct, ps = folder
    assert main(["info", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    kinds = {n["kind"]: n for n in doc["non_images"]}
    assert set(kinds) == {"presentation state", "structured report"}
    assert kinds["presentation state"]["sop_instance_uid"] == str(ps.SOPInstanceUID)
    assert kinds["presentation state"]["study_instance_uid"] == str(ct.StudyInstanceUID)
    assert kinds["structured report"]["sop_class_name"] == "Comprehensive 3D SR Storage"
    assert [s["path"].rsplit("/", 1)[-1] for s in doc["skipped"]] == ["plan.dcm"]


def test_a_presentation_state_alone_is_not_an_error(folder, capsys, tmp_path_factory):
    path, ct, _ = folder
    assert main(["info", str(path / "PR_state.dcm")]) == 0  # one file: listed, exit 0, no "no Pixel Data" error
    cap = capsys.readouterr()
    assert cap.err == "" and "No images." in cap.out
    assert "Non-image objects (1 presentation state):" in cap.out and f"Study uid {ct.StudyInstanceUID}" in cap.out
    # a bad single file is still one error line
    bad = tmp_path_factory.mktemp("bad") / "cut.dcm"
    bad.write_bytes((path / "PR_state.dcm").read_bytes()[:200])
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medviewer: error: ") and "\n" not in err


def test_objects_of_a_study_without_images_are_listed_after_the_tree(folder, capsys, tmp_path_factory):
    path, _ct, _ = folder
    other = tmp_path_factory.mktemp("mixed")
    shutil.copy(pydicom_test_file("MR_small.dcm"), other / "mr.dcm")
    shutil.copy(path / "report.dcm", other / "report.dcm")
    assert main(["info", str(other)]) == 0
    out = capsys.readouterr().out
    assert "Non-image objects (1 structured report) of studies without images here:" in out
    assert out.index("Series  SR") > out.index("Non-image objects")
