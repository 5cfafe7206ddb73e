"""``medviewer infer`` end to end: real files in, results.json/.csv/overlays out, exit codes 0/1/2."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import pydicom_test_file
from onnx_models import make_package

from medviewer.cli import main
from medviewer.inference.batch import score_instances
from medviewer.inference.package import ModelPackage
from medviewer.inference.session import Session
from medviewer.io import Skipped


@pytest.fixture
def model_dir(tmp_path):
    return make_package(tmp_path / "model", resize="letterbox", height=64, width=64)


def _png(path, shape, box):
    img = np.zeros(shape, np.uint8)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = 255
    cv2.imwrite(str(path), img)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    _png(d / "wide.png", (200, 300), (50, 100, 180, 260))
    _png(d / "sub" / "tall.png", (300, 160), (200, 260, 20, 80))
    shutil.copy(pydicom_test_file("CT_small.dcm"), d / "ct.dcm")
    return d


def test_folder_with_a_corrupt_file_completes_with_exit_2(tmp_path, folder, model_dir, capsys):
    shutil.copy(pydicom_test_file("MR_truncated.dcm"), folder / "truncated.dcm")
    (folder / "garbage.dcm").write_bytes(bytes(range(256)) * 4)  # named like DICOM, but is not
    (folder / "notes.txt").write_text("not an image")  # not meant to be an image: ignored
    out = tmp_path / "out"
    rc = main(["infer", str(folder), "--model", str(model_dir), "--out", str(out), "--overlays", "--batch", "2",
               "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "failed:" in err and "truncated.dcm" in err and "Traceback" not in err
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["name"] == "test-cam" and len(doc["model"]["sha256"]) == 64
    assert doc["provider"] == "CPUExecutionProvider" or doc["provider"] == "CUDAExecutionProvider"
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in doc["results"]}
    assert set(by_name) == {"wide.png", "tall.png", "ct.dcm", "truncated.dcm", "garbage.dcm"}
    assert [i["path"].rsplit("/", 1)[-1] for i in doc["ignored"]] == ["notes.txt"]
    for bad in ("truncated.dcm", "garbage.dcm"):
        assert by_name[bad]["error"] and by_name[bad]["scores"] == {} and "\n" not in by_name[bad]["error"]
    for good in ("wide.png", "tall.png", "ct.dcm"):
        r = by_name[good]
        assert r["error"] is None and set(r) >= {"path", "sop_instance_uid", "scores", "flagged", "regions", "seconds"}
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert (out / r["overlay"]).is_file()
    assert by_name["ct.dcm"]["sop_instance_uid"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert by_name["wide.png"]["sop_instance_uid"] is None
    assert doc["summary"] == {**doc["summary"], "images": 5, "scored": 3, "failed": 2, "ignored": 1}
    # the bright box of wide.png is flagged and its region is where the box is, on the original grid
    wide = by_name["wide.png"]
    assert wide["flagged"] == ["PNEUMONIA"]
    x0, y0, x1, y1 = wide["regions"][0]["bbox"]
    assert abs(x0 - 180) <= 6 and abs(x1 - 260) <= 6 and abs(y0 - 50) <= 6 and abs(y1 - 100) <= 6
    assert wide["regions"][0]["area_mm2"] is None  # PNG: no pixel spacing
    overlay = cv2.imread(str(out / wide["overlay"]))
    assert overlay.shape == (200, 300, 3)
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0] == ["path", "NORMAL", "PNEUMONIA", "flagged", "applicability", "ood_score", "error"]
    assert len(rows) == 6
    csv_wide = next(r for r in rows if r[0].endswith("wide.png"))
    assert float(csv_wide[2]) == pytest.approx(wide["scores"]["PNEUMONIA"], abs=1e-6) and csv_wide[3] == "PNEUMONIA"


def test_all_good_exits_0_and_mm_regions_from_pixel_spacing(tmp_path, folder, model_dir, capsys):
    out = tmp_path / "out"
    rc = main(["infer", str(folder / "ct.dcm"), str(folder / "wide.png"), "--model", str(model_dir), "--out", str(out),
               "--all-regions", "--region-threshold", "0.6", "--quiet"])
    assert rc == 0
    assert "2/2 images scored" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    ct = next(r for r in doc["results"] if r["path"].endswith("ct.dcm"))
    assert ct["regions"], "the brightest CT structures give PNEUMONIA evidence with this test network"
    spacing = 0.661468  # CT_small.dcm Pixel Spacing (0028,0030), both axes
    for reg in ct["regions"]:
        assert reg["area_mm2"] == pytest.approx(reg["area_px"] * spacing * spacing, rel=1e-3)
        assert reg["bbox_mm"] == pytest.approx([v * spacing for v in reg["bbox"]], abs=1e-2)
    assert not (out / "overlays").exists()


def test_invalid_model_is_one_line_exit_1(tmp_path, folder, model_dir, capsys):
    (model_dir / "model.onnx").write_bytes(b"tampered")
    rc = main(["infer", str(folder), "--model", str(model_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "SHA-256" in err and err.startswith("medviewer: error:")


def test_non_image_files_named_explicitly_fail(tmp_path, folder, model_dir):
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["infer", str(folder / "wide.png"), str(folder / "notes.txt"), "--model", str(model_dir),
                 "--out", str(out), "--quiet"]) == 2
    doc = json.loads((out / "results.json").read_text())
    assert [r["error"] is None for r in doc["results"]] == [True, False] and doc["ignored"] == []
    assert main(["infer", str(folder), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0


def test_no_images_found_is_exit_1(tmp_path, model_dir, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["infer", str(tmp_path / "empty"), "--model", str(model_dir), "--out", str(tmp_path / "out")])
    assert rc == 1 and "no DICOM, PNG or JPEG images found" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = capsys.readouterr().out
    assert "exit status:" in text and "2  some inputs failed" in text and "results.json" in text


def test_real_kermany_radiographs(tmp_path, kermany_dir, model_dir):
    files = sorted((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))[:3] + sorted(
        (kermany_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[:3]
    rc = main(["infer", *map(str, files), "--model", str(model_dir), "--out", str(tmp_path / "out"), "--quiet",
               "--overlays"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["error"] for r in doc["results"]] == [None] * 6
    assert all(cv2.imread(str(tmp_path / "out" / r["overlay"])).shape[:2] == (224, 224) for r in doc["results"])


class _Img:
    def __init__(self, path, img, spacing=None):
        self.path, self.img, self.pixel_spacing, self.sop_instance_uid = path, img, spacing, ""


def test_score_instances_order_progress_failures_and_cancel(tmp_path, model_dir):
    sess = Session(ModelPackage.load(model_dir), "cpu")
    imgs = [_Img(tmp_path / f"{i}.png", np.full((30 + i, 40), 20 * i, np.uint8)) for i in range(7)]
    imgs.insert(3, Skipped(tmp_path / "bad.png", "not an image"))
    imgs.insert(5, _Img(tmp_path / "float.png", np.zeros((5, 5), np.float32)))
    seen = []
    outs = score_instances(sess, imgs, batch_size=3, workers=2, render=lambda it: it.img,
                           progress=lambda o: seen.append(o.index), keep_cams=True)
    assert seen == list(range(9)) and [o.index for o in outs] == seen
    assert [o.ok for o in outs] == [True, True, True, False, True, False, True, True, True]
    assert outs[3].error == "not an image" and "8-bit display image" in outs[5].error
    assert outs[4].prediction.cams.shape == (2, 33, 40)
    calls = []
    outs = score_instances(sess, imgs, batch_size=2, workers=2, render=lambda it: it.img,
                           cancel=lambda: calls.append(1) or len(calls) >= 2)
    assert 0 < len(outs) < len(imgs) and outs[0].prediction.cams.shape == (2, 0, 0)


def test_every_frame_of_a_multiframe_instance(tmp_path, model_dir):
    src = pydicom_test_file("SC_rgb_rle_2frame.dcm")
    out = tmp_path / "out"
    assert main(["infer", str(src), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    assert [r["frame"] for r in json.loads((out / "results.json").read_text())["results"]] == [0]
    assert main(["infer", str(src), "--model", str(model_dir), "--out", str(out), "--quiet", "--frames", "all",
                 "--overlays"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [(r["frame"], r["error"], r["overlay"]) for r in results] == [
        (0, None, "overlays/SC_rgb_rle_2frame_f0000.png"), (1, None, "overlays/SC_rgb_rle_2frame_f0001.png")]
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0][:2] == ["path", "frame"] and [r[1] for r in rows[1:]] == ["0", "1"]


def test_infer_uses_the_workstations_controller_session_cache_and_policy(tmp_path, monkeypatch):
    """`medviewer infer` and the workstation run a model through one AiController: the same ONNX Runtime session
    (no second one is created) and the same intended-use result for the same image."""
    from medviewer.inference import default_model
    from medviewer.io import read_instance
    from medviewer.workstation.ai import AiController
    from medviewer.workstation.frames import FrameSource

    path = pydicom_test_file("RG1_UNCR.dcm")  # an adult chest CR: outside the shipped model's intended use
    gui = AiController(provider="cpu")
    gui.select(default_model())
    entry = gui.run(FrameSource([read_instance(path)]), 0).future.result(timeout=120)
    created = []
    real_init = Session.__init__
    monkeypatch.setattr(Session, "__init__", lambda self, *a, **k: (created.append(a), real_init(self, *a, **k))[1])
    out = tmp_path / "out"
    assert main(["infer", str(path), "--provider", "cpu", "--out", str(out), "--quiet"]) == 0
    assert created == []  # the controller's session cache had it
    (res,) = json.loads((out / "results.json").read_text())["results"]
    assert res["applicability"] == entry.prediction.applicability and res["applicability"]["status"] == "out_of_scope"
    assert res["scores"] == pytest.approx(entry.prediction.scores, abs=1e-5) and res["flagged"] == [] == entry.prediction.flagged
    gui.shutdown()
