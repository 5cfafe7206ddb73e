"""Routing over several models, Qt-free: the AI controller's multi-model run and the triage worklist.

Two models: the shipped paediatric ``pneumonia-cxr`` (ages 1-5 y) and a small adult chest model built here
(``adult-cxr``, age 18-150 y). Images: the paediatric demo DICOM (Patient's Age 003Y) and pydicom's adult
RG1_UNCR radiograph with Patient's Age 064Y (reduced to 460 px to keep the tests quick).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import pydicom_test_file
from onnx_models import make_package

from medviewer.inference import ModelPackage, default_model
from medviewer.inference.applicability import Status
from medviewer.inference.card import Applicability, Task
from medviewer.inference.session import Session
from medviewer.io import read_instance
from medviewer.resources import demo_dir
from medviewer.workstation.ai import AiController, header_route
from medviewer.workstation.frames import FrameSource
from medviewer.workstation.session import ReadingSession
from medviewer.workstation.worklist import Worklist, triage_folder

TIMEOUT = 60
ADULT_LABELS = ("Effusion", "Cardiomegaly", "Atelectasis")
PAEDIATRIC = demo_dir() / "paediatric-cxr-pneumonia.dcm"


def adult_model(directory: Path) -> Path:
    """A small real ONNX CAM network with an adult chest card (schema 2, no gate, no OOD detector)."""
    return make_package(
        directory, name="adult-cxr", labels=ADULT_LABELS, task=Task.MULTILABEL, negative_label=None,
        thresholds={"Effusion": 0.05, "Cardiomegaly": 0.5, "Atelectasis": 0.95}, schema_version=2,
        intended_use="tests: adult frontal chest radiographs",
        applicability=Applicability(modalities=["CR", "DX"], body_parts=["CHEST"], views=["AP", "PA"],
                                    age_years=(18, 150)))


def adult_radiograph(path: Path) -> Path:
    """pydicom's RG1_UNCR (an adult PA chest CR) with Patient's Age 064Y, its pixels reduced to 460 px."""
    import pydicom

    ds = pydicom.dcmread(pydicom_test_file("RG1_UNCR.dcm"))
    px = ds.pixel_array
    small = cv2.resize(px, (px.shape[1] // 4, px.shape[0] // 4), interpolation=cv2.INTER_AREA).astype(px.dtype)
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = np.ascontiguousarray(small).tobytes()
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [float(v) * 4 for v in ds.PixelSpacing]
    ds.PatientAge = "064Y"
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[ModelPackage, ModelPackage]:
    if not PAEDIATRIC.is_file():
        pytest.skip(f"demo study {PAEDIATRIC} is absent (python -m training.demo_data builds it)")
    d = tmp_path_factory.mktemp("models")
    return default_model(), ModelPackage.load(adult_model(d / "adult-cxr"))


@pytest.fixture(scope="module")
def adult_file(tmp_path_factory) -> Path:
    return adult_radiograph(tmp_path_factory.mktemp("adult") / "rg1-064y.dcm")


def test_header_route_rules_out_a_model_by_the_tags(two_models, adult_file):
    paed, adult = two_models
    child, grown = read_instance(PAEDIATRIC), read_instance(adult_file)
    assert header_route(paed.card, child) is None and header_route(adult.card, grown) is None
    no = header_route(adult.card, child)
    assert no.status is Status.OUT_OF_SCOPE and no.withheld and no.reasons == ("patient age 3 y; model: 18\u2013150 y",)
    assert header_route(paed.card, grown).reasons == ("patient age 64 y; model: 1\u20135 y",)
    ct = read_instance(pydicom_test_file("CT_small.dcm"))
    assert any("modality CT" in r for r in header_route(adult.card, ct).reasons)


def test_controller_runs_every_model_the_header_lets_through(two_models, adult_file):
    paed, adult = two_models
    ai = AiController(ReadingSession(), provider="cpu")
    ai.packages, ai.package = [paed, adult], paed
    seen: list = []
    ai.events.prediction_ready.connect(seen.append)
    # the child's film: pneumonia-cxr only; the adult model is not run, with the age as the reason
    child = FrameSource([read_instance(PAEDIATRIC)])
    job = ai.run(child, 0)
    first = job.future.result(timeout=TIMEOUT)
    assert [p.card.name for p in job.packages] == ["pneumonia-cxr"] and first.package is paed
    res = ai.results(child, 0)
    assert [(r.package.card.name, r.entry is first, r.preferred) for r in res] == [("pneumonia-cxr", True, True),
                                                                                  ("adult-cxr", False, False)]
    assert res[0].shown and first.prediction.flagged == ["pneumonia"]
    assert not res[1].shown and res[1].assessment.reasons == ("patient age 3 y; model: 18\u2013150 y",)
    # the adult's film: both run (the preferred model always runs when asked), one entry each, each judged
    grown = FrameSource([read_instance(adult_file)])
    job = ai.run(grown, 0)
    assert job.future.result(timeout=TIMEOUT).package is paed
    ai.wait(TIMEOUT)
    assert [e.package.card.name for e in job.entries] == ["pneumonia-cxr", "adult-cxr"]
    assert [e.package for e in seen[1:]] == [paed, adult]
    by = {r.package.card.name: r for r in ai.results(grown, 0)}
    assert by["pneumonia-cxr"].assessment.withheld and not by["pneumonia-cxr"].shown
    assert by["adult-cxr"].assessment.status is Status.IN_SCOPE and by["adult-cxr"].shown
    # re-running the preferred model keeps the other model's result (not re-run)
    kept = by["adult-cxr"].entry
    again = ai.run(grown, 0)
    again.future.result(timeout=TIMEOUT)
    assert [p.card.name for p in again.packages] == ["pneumonia-cxr"] and ai.reading.prediction(kept.key) is kept
    # run on open decides each image and model once
    other = FrameSource([read_instance(adult_file)])
    ai2 = AiController(ReadingSession(), provider="cpu")
    ai2.packages, ai2.package = [paed, adult], paed
    pkgs, reason = ai2.auto_run_packages(other, 0)
    assert [p.card.name for p in pkgs] == ["pneumonia-cxr", "adult-cxr"] and reason is None
    assert ai2.auto_run_packages(other, 0) is None
    ai.shutdown()
    ai2.shutdown()


def test_worklist_ranks_by_the_highest_in_scope_flag_over_all_models(two_models, adult_file, tmp_path):
    paed, adult = two_models
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(PAEDIATRIC, folder / PAEDIATRIC.name)
    shutil.copy(adult_file, folder / adult_file.name)
    shutil.copy(pydicom_test_file("CT_small.dcm"), folder / "CT_small.dcm")
    sessions = [Session(paed, "cpu"), Session(adult, "cpu")]
    progress: list = []
    wl = triage_folder(sessions, [folder], worklist=Worklist(None), progress=lambda d, n: progress.append((d, n)))
    rows = wl.sorted()
    assert progress[-1] == (6, 6)  # 3 images x 2 models
    by_pid = {r.paths[0].name: r for r in rows}
    child, grown, ct = by_pid[PAEDIATRIC.name], by_pid[adult_file.name], by_pid["CT_small.dcm"]
    # each study is ranked by its highest in-scope probability, whichever model gave it, and names it
    assert child.top_model == "pneumonia-cxr" and child.flagged == ["pneumonia"]
    assert child.flagged_by == {"pneumonia": ["pneumonia-cxr"]}
    assert grown.applicability is Status.IN_SCOPE and grown.top_model == "adult-cxr"
    assert grown.top_label in ADULT_LABELS and grown.in_scope == 1 and grown.out_of_scope == 1
    assert any(r.startswith("pneumonia-cxr: patient age 64 y") for r in grown.reasons)
    assert ct.applicability is Status.OUT_OF_SCOPE and ct.top_model is None and ct.out_of_scope == 2
    in_scope = [r for r in rows if r.applicability is Status.IN_SCOPE]
    assert rows[:2] == sorted(in_scope, key=lambda r: -r.top_probability) and rows[2] is ct
    assert child.row()["top_model"] == "pneumonia-cxr" and grown.row()["applicability"] == "in_scope"
    # one model: each image scored once, the reasons still name the model
    one = triage_folder(sessions[0], [folder], worklist=Worklist(None))
    assert {r.paths[0].name: r.out_of_scope for r in one.sorted()} == {PAEDIATRIC.name: 0, adult_file.name: 1,
                                                                        "CT_small.dcm": 1}
    assert all(r.startswith("pneumonia-cxr: ") for e in one.sorted() for r in e.reasons)


def test_sr_regions_name_their_model_when_several_reports_reference_an_image():
    """One report per model on one image: each region's tag names its model (from the SR's Series Description
    "AI results <model> <version>"); with one report the tags stay the finding alone."""
    from medviewer.workstation.sr_reports import SrReport, SrReports, report_source

    def finding(name: str, x: float) -> dict:
        return {"referenced_sop_instance_uid": "1.2.3", "polyline": [[x, 10.0], [x + 20, 10.0], [x + 20, 30.0]],
                "graphic_type": "POLYGON", "finding": name, "measurements": {"probability": 0.9}}

    a = SrReport("SR_a.dcm", "9.1", "7.1", "AI results pneumonia-cxr 2.1.0", "MedViewer", [finding("pneumonia", 5)])
    b = SrReport("SR_b.dcm", "9.2", "7.1", "AI results adult-cxr 0.0.1", "MedViewer", [finding("Effusion", 50)])
    other = SrReport("x.dcm", "9.3", "7.1", "", "ACME AI", [finding("Nodule", 80)])
    assert report_source(a) == "pneumonia-cxr 2.1.0" and report_source(other) == "ACME AI"
    one = SrReports()
    one.add([a])
    assert [r.label for r in one.regions("1.2.3", 0)] == ["pneumonia"]
    both = SrReports()
    both.add([a, b])
    assert [r.label for r in both.regions("1.2.3", 0)] == ["pneumonia · pneumonia-cxr 2.1.0",
                                                           "Effusion · adult-cxr 0.0.1"]
    assert both.overlay_prediction("1.2.3", 0).flagged == ["pneumonia · pneumonia-cxr 2.1.0",
                                                           "Effusion · adult-cxr 0.0.1"]
    mixed = SrReports()  # ours beside another vendor's: one of ours, so the tags stay as they were
    mixed.add([a, other])
    assert [r.label for r in mixed.regions("1.2.3", 0)] == ["pneumonia", "Nodule"]
