"""``medviewer info`` and ``medviewer render`` through the real entry point, good and bad input."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pydicom
import pytest
from conftest import pydicom_test_file

import medviewer.cli as cli
from medviewer.imaging import display_image
from medviewer.io import read_instance


@pytest.fixture(autouse=True)
def _only_info_and_render(monkeypatch):
    # exercise medviewer.cli.main with just the two subcommands under test
    monkeypatch.setattr(cli, "SUBCOMMANDS", {k: cli.SUBCOMMANDS[k] for k in ("info", "render")})


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])  # an exception escaping here would be a traceback
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medviewer: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ info
def test_info_json_on_ct_folder(capsys, ct_series_dir):
    code, out, err = run_cli(capsys, "info", ct_series_dir, "--json")
    assert code == 0 and not err
    doc = json.loads(out)
    assert set(doc) == {"studies", "skipped"}
    (study,) = doc["studies"]
    assert {"study_instance_uid", "patient_id", "series"} <= set(study)
    assert study["patient_id"] == "Pancreas-CT-CB_001"
    (series,) = study["series"]
    assert {"series_instance_uid", "modality", "instances"} <= set(series)
    assert series["modality"] == "CT" and len(series["instances"]) == 134
    for inst in series["instances"]:
        assert {"path", "sop_instance_uid", "instance_number", "image_position_patient"} <= set(inst)
    z = [i["image_position_patient"][2] for i in series["instances"]]
    assert z == sorted(z, reverse=True) or z == sorted(z)
    assert sorted(s["path"].rsplit("/", 1)[-1] for s in doc["skipped"]) == ["CITATIONS", "LICENSE"]
    assert all(s["reason"] for s in doc["skipped"])


def test_info_text_tree(capsys):
    path = pydicom_test_file("CT_small.dcm")
    code, out, _ = run_cli(capsys, "info", path)
    assert code == 0
    assert "Patient" in out and "Study" in out and "Series" in out
    assert "CT" in out and "128x128" in out and "0.6615x0.6615 mm (PixelSpacing)" in out
    assert "Explicit VR Little Endian" in out


def test_info_folder_lists_bad_files_under_skipped_and_reads_the_rest(capsys, tmp_path):
    shutil.copy(pydicom_test_file("CT_small.dcm"), tmp_path / "good.dcm")
    shutil.copy(pydicom_test_file("MR_truncated.dcm"), tmp_path / "truncated.dcm")
    shutil.copy(pydicom_test_file("rtplan.dcm"), tmp_path / "plan.dcm")
    (tmp_path / "readme.txt").write_text("hello")
    code, out, err = run_cli(capsys, "info", tmp_path, "--json")
    assert code == 0 and not err
    doc = json.loads(out)
    assert len(doc["studies"]) == 1
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in doc["skipped"]}
    assert set(reasons) == {"truncated.dcm", "plan.dcm", "readme.txt"}
    assert "truncated" in reasons["truncated.dcm"]
    assert "no Pixel Data" in reasons["plan.dcm"] and "RT Plan" in reasons["plan.dcm"]
    assert "not a DICOM" in reasons["readme.txt"]


def test_info_reads_a_dicomdir(capsys):
    dicomdir = pydicom_test_file("DICOMDIR")
    code, out, _ = run_cli(capsys, "info", dicomdir, "--json")
    assert code == 0
    doc = json.loads(out)
    assert {s["patient_id"] for s in doc["studies"]} == {"77654033", "98890234"}
    n = sum(len(se["instances"]) for st in doc["studies"] for se in st["series"])
    assert n > 0 and all(s["reason"] for s in doc["skipped"])
    code, text, _ = run_cli(capsys, "info", dicomdir.parent)
    assert code == 0 and text.count("Patient ") >= 2


def test_info_single_bad_file_is_one_line_error(capsys, tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\x00" * 10)
    code, _, err = run_cli(capsys, "info", bad)
    assert_one_line_error(code, err, str(bad), "not a DICOM")


# ---------------------------------------------------------------------------------------------- render
def _read_png(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img


def test_render_writes_exactly_the_displayed_image(capsys, tmp_path):
    path = pydicom_test_file("CT_small.dcm")
    out = tmp_path / "ct.png"
    code, stdout, _ = run_cli(capsys, "render", path, "--out", out)
    assert code == 0 and "wrote" in stdout
    np.testing.assert_array_equal(_read_png(out), display_image(read_instance(path)))
    code, _, _ = run_cli(capsys, "render", path, "--out", out, "--preset", "lung")
    assert code == 0
    np.testing.assert_array_equal(_read_png(out), display_image(read_instance(path), preset="lung"))
    code, _, _ = run_cli(capsys, "render", path, "--out", out, "--window", "40", "400", "--invert")
    assert code == 0
    np.testing.assert_array_equal(_read_png(out), display_image(read_instance(path), window=(40, 400),
                                                                invert=True))


def test_render_colour_and_multiframe(capsys, tmp_path):
    out = tmp_path / "rgb.png"
    path = pydicom_test_file("SC_rgb_jpeg_dcmtk.dcm")
    assert run_cli(capsys, "render", path, "--out", out)[0] == 0
    img = _read_png(out)
    assert img.shape == (100, 100, 3)
    np.testing.assert_array_equal(img, display_image(read_instance(path)))
    mf = pydicom_test_file("emri_small.dcm")
    assert run_cli(capsys, "render", mf, "--out", out, "--frame", "9")[0] == 0
    np.testing.assert_array_equal(_read_png(out), display_image(read_instance(mf), frame=9))
    code, _, err = run_cli(capsys, "render", mf, "--out", out, "--frame", "10")
    assert_one_line_error(code, err, "--frame 10 out of range", "0..9")


def test_render_monochrome1_chest_has_dark_lungs(capsys, tmp_path):
    out = tmp_path / "cr.png"
    assert run_cli(capsys, "render", pydicom_test_file("RG1_UNCR.dcm"), "--out", out)[0] == 0
    img = _read_png(out)
    h, w = img.shape
    assert img[h // 3: h // 2, w // 5: w // 3].mean() < img[h // 3: h // 2, 9 * w // 20: 11 * w // 20].mean() - 30


# ------------------------------------------------------------------------------------------- bad input
def test_render_non_dicom(capsys, tmp_path):
    bad = tmp_path / "report.dcm"
    bad.write_text("Patient is fine.\n" * 50)
    code, _, err = run_cli(capsys, "render", bad, "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, str(bad), "not a DICOM, PNG or JPEG")


def test_render_truncated_native_pixel_data(capsys, tmp_path):
    src = pydicom_test_file("CT_small.dcm")
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(src.read_bytes()[:-5000])
    code, _, err = run_cli(capsys, "render", bad, "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, str(bad), "truncated")


def test_render_truncated_compressed_pixel_data(capsys, tmp_path):
    src = pydicom_test_file("MR_small_jp2klossless.dcm")
    bad = tmp_path / "cut_j2k.dcm"
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) - 3000])
    code, _, err = run_cli(capsys, "render", bad, "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, str(bad), "truncated")
    assert not (tmp_path / "o.png").exists()


def test_render_missing_pixel_data(capsys, tmp_path):
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    del ds.PixelData
    bad = tmp_path / "nopixels.dcm"
    ds.save_as(bad)
    code, _, err = run_cli(capsys, "render", bad, "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, str(bad), "no Pixel Data (7FE0,0010)", "CT Image Storage")


def test_render_unsupported_transfer_syntax_names_what_would_decode_it(capsys, tmp_path):
    ds = pydicom.dcmread(pydicom_test_file("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    bad = tmp_path / "video.dcm"
    ds.save_as(bad)
    code, _, err = run_cli(capsys, "render", bad, "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, str(bad), "MPEG2", "transcode")


def test_render_missing_plugin_names_the_plugin(capsys, tmp_path, monkeypatch):
    import pydicom.pixels

    real = pydicom.pixels.get_decoder

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder",
                        lambda uid: Unavailable() if uid == pydicom.uid.JPEG2000 else real(uid))
    path = pydicom_test_file("JPEG2000.dcm")
    code, _, err = run_cli(capsys, "render", path, "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, "JPEG 2000", "pylibjpeg-openjpeg")


def test_render_odd_vr_header(capsys, tmp_path):
    # badVR.dcm: Number of Frames (IS) holds '1A'
    path = pydicom_test_file("badVR.dcm")
    code, _, err = run_cli(capsys, "render", path, "--out", tmp_path / "o.png")
    assert_one_line_error(code, err, "Number of Frames", "'1A'")


def test_render_bad_window_and_preset(capsys, tmp_path):
    path = pydicom_test_file("CT_small.dcm")
    code, _, err = run_cli(capsys, "render", path, "--out", tmp_path / "o.png", "--window", "40", "0")
    assert_one_line_error(code, err, "width")
    code, _, err = run_cli(capsys, "render", path, "--out", tmp_path / "o.png", "--preset", "nope")
    assert_one_line_error(code, err, "unknown window preset", "lung")


def test_render_unwritable_output(capsys, tmp_path):
    path = pydicom_test_file("CT_small.dcm")
    code, _, err = run_cli(capsys, "render", path, "--out", tmp_path / "missing" / "o.png")
    assert_one_line_error(code, err, "does not exist")
