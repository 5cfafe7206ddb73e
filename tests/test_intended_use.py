"""The intended-use policy on real files, with the shipped model: one decision for the CLI and the GUI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import pydicom_test_file
from onnx_models import make_package

from medviewer.cli import main
from medviewer.errors import ModelPackageError
from medviewer.imaging import display_image
from medviewer.inference import ModelPackage, default_model
from medviewer.inference.card import Applicability, load_card, save_card
from medviewer.inference.session import Session
from medviewer.io import read_instance
from medviewer.resources import demo_dir
from medviewer.workstation.intended_use import (
    CheckStatus,
    IntendedUsePolicy,
    Status,
    check_header,
    header_facts,
    parse_age_string,
    should_auto_run,
)

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-pancreas-cbct-seg-001"
PAEDIATRIC = demo_dir() / "paediatric-cxr-pneumonia.dcm"


@pytest.fixture(scope="module")
def shipped():
    pkg = default_model()
    assert pkg.card.schema_version >= 2 and pkg.ood is not None
    return pkg, Session(pkg, "cpu"), IntendedUsePolicy(pkg.card)


def _run(shipped, path):
    _, sess, policy = shipped
    inst = read_instance(path)
    img = display_image(inst)
    pred = sess.predict([img], [inst.pixel_spacing])[0]
    return policy.apply(inst, pred, img), pred


def test_age_strings_follow_ps3_5():
    assert parse_age_string("064Y") == 64 and parse_age_string("018M") == pytest.approx(1.5)
    assert parse_age_string("003W") == pytest.approx(21 / 365.25) and parse_age_string("010D") > 0
    assert parse_age_string("000Y") is None and parse_age_string("64") is None and parse_age_string("") is None


def test_rg1_adult_chest_is_out_of_scope_by_age_and_by_pixels(shipped):
    a, pred = _run(shipped, pydicom_test_file("RG1_UNCR.dcm"))
    assert a.status == Status.OUT_OF_SCOPE
    assert "patient age 64 y; model: 1\u20135 y" in a.reasons
    assert a.checks["modality"].status == CheckStatus.PASS and a.checks["body_part"].status == CheckStatus.PASS
    assert a.checks["view"].status == CheckStatus.PASS  # PA
    assert a.checks["appearance"].status == CheckStatus.FAIL  # pixels alone say no: the gate sees an adult film
    op = shipped[0].card.operating_point("pneumonia").threshold
    assert pred.flagged == [] and pred.regions == []
    assert pred.suppressed_flags == (["pneumonia"] if pred.scores["pneumonia"] >= op else [])
    assert sum(pred.scores.values()) == pytest.approx(1.0, abs=1e-5)  # kept for research


def test_rg3_extremity_is_out_of_scope_by_body_part(shipped):
    a, pred = _run(shipped, pydicom_test_file("RG3_UNCR.dcm"))
    assert a.status == Status.OUT_OF_SCOPE and "body part EXTREMITY; model: CHEST" in a.reasons
    assert pred.flagged == []


def test_ct_is_out_of_scope_by_modality_and_not_auto_run(shipped):
    pkg, _, _ = shipped
    a, pred = _run(shipped, pydicom_test_file("CT_small.dcm"))
    assert a.status == Status.OUT_OF_SCOPE and "modality CT; model: CR, DX" in a.reasons
    # what the model would have flagged on this CT slice is withheld, and recorded as such
    assert pred.scores["pneumonia"] >= pkg.card.operating_point("pneumonia").threshold
    assert pred.flagged == [] and pred.regions == [] and pred.suppressed_flags == ["pneumonia"]
    ok, why = should_auto_run(pkg.card, read_instance(pydicom_test_file("CT_small.dcm")))
    assert not ok and "modality CT" in why
    assert should_auto_run(pkg.card, read_instance(pydicom_test_file("RG1_UNCR.dcm")))[0]  # runs, then says why not


def test_paediatric_demo_is_in_scope_and_flagged(shipped):
    a, pred = _run(shipped, PAEDIATRIC)
    assert a.status == Status.IN_SCOPE and a.reasons == () and a.checks["age"].value == "3 y"
    assert a.checks["view"].status == CheckStatus.UNKNOWN  # an empty View Position is unknown, never a failure
    assert pred.flagged == ["pneumonia"] and pred.regions


def test_tagless_png_is_decided_by_pixels(shipped, tmp_path):
    """A PNG has no header: every header check is unknown, the OOD score decides both ways."""
    paed = display_image(read_instance(PAEDIATRIC))
    cv2.imwrite(str(tmp_path / "child.png"), paed)
    a, _ = _run(shipped, tmp_path / "child.png")
    assert a.status == Status.IN_SCOPE
    assert all(a.checks[k].status == CheckStatus.UNKNOWN for k in ("modality", "body_part", "view", "age"))
    assert a.checks["photometric"].status == CheckStatus.PASS
    knee = display_image(read_instance(pydicom_test_file("RG3_UNCR.dcm")))
    cv2.imwrite(str(tmp_path / "knee.png"), cv2.resize(knee, (512, 512), interpolation=cv2.INTER_AREA))
    a, pred = _run(shipped, tmp_path / "knee.png")
    assert a.status == Status.OUT_OF_SCOPE and a.checks["image"].status == CheckStatus.FAIL and pred.flagged == []
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[..., 2] = 200
    facts = header_facts(read_instance_png(tmp_path, colour), colour)
    assert check_header(Applicability(photometric=["MONOCHROME2"]), facts)["photometric"].status == CheckStatus.FAIL


def read_instance_png(tmp_path: Path, img: np.ndarray):
    cv2.imwrite(str(tmp_path / "c.png"), img)
    return read_instance(tmp_path / "c.png")


@pytest.mark.skipif(not SHARED_CT.is_dir(), reason="../shared/data (the shared CT series) is not present")
def test_shared_ct_slices_are_out_of_distribution_from_pixels(shipped):
    pkg, sess, _ = shipped
    paths = sorted(SHARED_CT.glob("*.dcm"))[::16]
    preds = sess.predict([display_image(read_instance(p)) for p in paths])
    assert all(p.ood_score > pkg.ood.threshold for p in preds)


def test_v1_card_loads_with_unknown_applicability(tmp_path):
    d = make_package(tmp_path / "v1")
    card = load_card(d)
    data = json.loads(card.model_dump_json())
    data["schema_version"] = 1
    for k in ("applicability", "ood", "files", "history"):
        data.pop(k, None)
    data["outputs"].pop("features", None)
    (d / "model.json").write_text(json.dumps(data))
    pkg = ModelPackage.load(d)
    assert pkg.card.schema_version == 1 and pkg.ood is None
    inst = read_instance(pydicom_test_file("RG1_UNCR.dcm"))
    img = display_image(inst)
    pred = Session(pkg, "cpu").predict([img])[0]
    a = IntendedUsePolicy(pkg.card).apply(inst, pred, img)
    assert a.status == Status.UNKNOWN and all(c.status == CheckStatus.UNKNOWN for c in a.checks.values())


def test_tampered_ood_statistics_are_refused(tmp_path):
    d = tmp_path / "pcxr"
    shutil.copytree(default_model().path, d)
    with np.load(d / "ood.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith(".precision"))
    arrays[key] = arrays[key] * 0.1  # everything would look in distribution
    np.savez(d / "ood.npz", **arrays)
    with pytest.raises(ModelPackageError, match=r"ood.npz SHA-256 .* does not match"):
        ModelPackage.load(d)


def test_cli_infer_records_applicability_and_override(tmp_path, capsys):
    inputs = [str(pydicom_test_file("RG1_UNCR.dcm")), str(PAEDIATRIC)]
    out = tmp_path / "r"
    assert main(["infer", *inputs, "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    by = {Path(r["path"]).name: r for r in doc["results"]}
    rg1, paed = by["RG1_UNCR.dcm"], by["paediatric-cxr-pneumonia.dcm"]
    assert rg1["applicability"]["status"] == "out_of_scope" and rg1["flagged"] == [] and rg1["regions"] == []
    # out of scope by the header (age 64 y) and by the pixels alone: the gate calls it an adult chest film
    appearance = rg1["applicability"]["checks"]["appearance"]
    assert appearance["status"] == "fail" and "adult chest" in appearance["reason"], appearance
    gate = rg1["applicability"]["gate"]
    assert gate["looks_like"] == "adult_chest" and gate["in_scope_probability"] < gate["threshold"], gate
    assert paed["applicability"]["status"] == "in_scope" and paed["flagged"] == ["pneumonia"]
    assert doc["summary"]["out_of_scope"] == 1 and doc["intended_use"]["applicability"]["body_parts"] == ["CHEST"]
    rows = {Path(r["path"]).name: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["RG1_UNCR.dcm"]["applicability"] == "out_of_scope" and float(rows["RG1_UNCR.dcm"]["ood_score"]) > 0
    err = capsys.readouterr().err
    assert "outside intended use (no findings reported)" in err and "patient age 64 y" in err
    out2 = tmp_path / "r2"
    # the override: a CT slice the model scores above its operating point (out of scope by modality and
    # pixels) is flagged only when the reader overrides the policy, and the override is recorded
    ct = str(pydicom_test_file("CT_small.dcm"))
    assert main(["infer", ct, "--out", str(tmp_path / "r1"), "--quiet"]) == 0
    r = json.loads((tmp_path / "r1" / "results.json").read_text())["results"][0]
    assert r["flagged"] == [] and r["applicability"]["overridden"] is False
    assert main(["infer", ct, "--out", str(out2), "--quiet", "--ignore-intended-use"]) == 0
    r = json.loads((out2 / "results.json").read_text())["results"][0]
    assert r["applicability"]["overridden"] is True and r["flagged"] == ["pneumonia"]


def test_card_applicability_age_range_is_validated(tmp_path):
    with pytest.raises(ValueError):
        Applicability(age_years=(10, 5))
    d = make_package(tmp_path / "m")
    card = load_card(d).model_copy(update={"applicability": Applicability(modalities=["DX"])})
    save_card(card, d)
    assert ModelPackage.load(d).card.applicability.modalities == ["DX"]


def test_cli_infer_dicom_results_follow_the_policy(tmp_path):
    """--dicom writes an SR and an SC per DICOM image; the out-of-scope image's SR has no region."""
    import pydicom

    from medviewer.export.dicom_ai import read_sr_findings

    out = tmp_path / "r"
    inputs = [str(pydicom_test_file("RG1_UNCR.dcm")), str(PAEDIATRIC)]
    assert main(["infer", *inputs, "--out", str(out), "--quiet", "--dicom"]) == 0
    doc = json.loads((out / "results.json").read_text())
    by = {Path(r["path"]).name: r for r in doc["results"]}
    for name in ("RG1_UNCR.dcm", "paediatric-cxr-pneumonia.dcm"):
        files = by[name]["dicom"]
        assert sorted(Path(f).name[:3] for f in files) == ["SC_", "SR_"]
    def sr(name):
        return pydicom.dcmread(out / next(f for f in by[name]["dicom"] if Path(f).name.startswith("SR_")))
    def regions(name):
        return [f for f in read_sr_findings(sr(name)) if f.get("polyline") is not None]
    assert regions("paediatric-cxr-pneumonia.dcm")  # the flagged region, as an image region (SCOORD)
    assert regions("RG1_UNCR.dcm") == []  # out of scope: no region recorded
    assert sr("RG1_UNCR.dcm").StudyInstanceUID == pydicom.dcmread(inputs[0], stop_before_pixels=True).StudyInstanceUID


def test_assessment_is_a_frozen_typed_value_carried_to_every_view(shipped):
    """The policy's Assessment travels typed on the prediction; the withhold rule is one property; to_dict() and
    from_dict() are the edges (results.json) and give the same value back."""
    import dataclasses

    from medviewer.inference.applicability import (
        OUT_OF_SCOPE_LABEL,
        OVERRIDDEN_LABEL,
        Assessment,
        show_anyway,
    )

    a, pred = _run(shipped, pydicom_test_file("RG1_UNCR.dcm"))
    assert pred.applicability is a and isinstance(a, Assessment)
    assert a.status is Status.OUT_OF_SCOPE and a.withheld and pred.withheld and a.scope_label == OUT_OF_SCOPE_LABEL
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.overridden = True  # type: ignore[misc]
    back = Assessment.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a and back.reasons == a.reasons and back.checks == a.checks and back.status is Status.OUT_OF_SCOPE
    assert back.ood_score == pytest.approx(a.ood_score, abs=1e-4)
    # the override is a new value; the old one stays withheld
    withheld_flags = list(pred.suppressed_flags)
    assert not pred.flagged and not pred.regions
    assert show_anyway(pred) and pred.flagged == withheld_flags
    assert pred.applicability.overridden and not pred.applicability.withheld and a.withheld
    assert pred.applicability.scope_label == OVERRIDDEN_LABEL and not show_anyway(pred)
    # a dict assigned to a prediction (results.json read back, older callers) becomes an Assessment
    pred.applicability = {"status": "in_scope", "reasons": [], "ood_score": "inf"}
    assert isinstance(pred.applicability, Assessment) and pred.applicability.status is Status.IN_SCOPE
    assert pred.applicability.ood_score == float("inf") and not pred.withheld
    with pytest.raises(ValueError):
        Assessment.from_dict({"status": "maybe"})


def test_export_and_inference_import_nothing_from_the_workstation():
    """The policy and the overlay composition sit below export: no module of inference/ or export/ imports
    medviewer.workstation (checked on the source with ast, module level and inside functions)."""
    import ast

    import medviewer

    root = Path(medviewer.__file__).parent
    bad = []
    for pkg in ("inference", "export"):
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("medviewer.workstation")]
    assert not bad, bad
