"""Multi-label training on real data: label tables, patient-level iterative stratification, calibration,
fit -> export -> import -> show, cv/search/baseline, streaming = cached, resume, and the CLI help without torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA

pytest.importorskip("torch")

from training.cli import MODEL_NAMES, main  # noqa: E402
from training.multilabel import fit_label_temperatures, parse_criteria  # noqa: E402
from training.multilabel_data import (  # noqa: E402
    TargetDataset,
    iterative_stratification,
    multilabel_folds,
    pos_weights,
    read_multilabel_csv,
    split_multilabel,
)

NIH = SHARED_DATA / "nih-cxr14-64"
FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
            "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"]


@pytest.fixture(scope="module")
def nih_csv():
    if not (NIH / "labels.csv").is_file():
        pytest.skip(f"NIH ChestX-ray14 64 px subset not found at {NIH} (../shared/data is absent)")
    return NIH / "labels.csv"


def test_nih_finding_labels_form_equals_the_01_columns(nih_csv, tmp_path):
    cols = read_multilabel_csv(nih_csv, FINDINGS)
    assert len(cols) == 999 and cols.targets.shape == (999, 14) and cols.labels == FINDINGS
    assert int(cols.targets.sum(axis=1).__eq__(0).sum()) == 499  # "No Finding"
    # the NIH form: 'Image Index', 'Finding Labels' (A|B, "No Finding"), 'Patient ID'; images/ looked up
    nih_form = tmp_path / "Data_Entry.csv"
    with open(nih_csv, newline="") as f, open(nih_form, "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["Image Index", "Finding Labels", "Patient ID", "Patient Age", "View Position"])
        for r in csv.DictReader(f):
            w.writerow([r["path"].split("/")[-1], r["finding_labels"], r["patient_id"], r["age_years"], r["view"]])
    (tmp_path / "images").symlink_to(NIH / "images")
    nih = read_multilabel_csv(nih_form)  # labels from the table: the 14 findings, sorted
    assert nih.labels == FINDINGS
    assert np.array_equal(nih.targets, cols.targets) and nih.patients == cols.patients
    assert all(p.is_file() for p in nih.paths[:20]) and nih.views[:2] == ["PA", "PA"] and nih.ages.min() >= 18


def test_bad_tables_are_one_clear_error(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("path,A,B\nx.png,1,2\n")
    with pytest.raises(ValueError, match="not 0 or 1"):
        read_multilabel_csv(t, ["A", "B"])
    with pytest.raises(ValueError, match="--labels"):
        read_multilabel_csv(t)
    with pytest.raises(ValueError, match="no column for"):
        read_multilabel_csv(t, ["C"])
    rc = main(["fit", "--task", "multilabel", "--data", str(t), "--labels", "A,B", "--out", str(tmp_path / "r")])
    assert rc == 2


def _deviation(index, parts):
    """Mean over findings of |prevalence in validation - prevalence overall| (percentage points)."""
    all_p = np.array(list(index.prevalence().values()))
    val_p = np.array(list(index.take(parts).prevalence().values()))
    return float(np.abs(val_p - all_p).mean())


def test_iterative_stratification_keeps_prevalence_by_patient(nih_csv):
    from sklearn.model_selection import GroupShuffleSplit

    index = read_multilabel_csv(nih_csv, FINDINGS)
    ours, random = [], []
    for seed in range(5):
        parts = split_multilabel(index, 0.2, 0.0, seed)
        tr, va = set(np.asarray(index.patients)[parts["train"]]), set(np.asarray(index.patients)[parts["val"]])
        assert not tr & va and len(parts["train"]) + len(parts["val"]) == 999
        assert 0.15 <= len(parts["val"]) / 999 <= 0.25
        ours.append(_deviation(index, parts["val"]))
        _, va_r = next(GroupShuffleSplit(1, test_size=0.2, random_state=seed).split(index.paths, groups=index.patients))
        random.append(_deviation(index, va_r))
    assert np.mean(ours) < 0.6 * np.mean(random), (ours, random)
    folds = multilabel_folds(index, 5, 0)
    for f in range(5):  # every finding with at least 5 positive patients is in every fold
        y = index.targets[folds == f]
        assert y[:, FINDINGS.index("Effusion")].sum() > 10 and y[:, FINDINGS.index("Cardiomegaly")].sum() > 5


def test_iterative_stratification_places_rare_labels_first():
    # 10 one-image patients; label 1 is rare (2 patients): the two parts get one each
    counts = np.zeros((10, 2), int)
    counts[:6, 0] = 1
    counts[[3, 8], 1] = 1
    part = iterative_stratification(counts, np.ones(10), [0.5, 0.5], seed=3)
    assert sorted(part[[3, 8]]) == [0, 1] and np.bincount(part).tolist() == [5, 5]
    assert np.bincount(part[:6], minlength=2).tolist() == [3, 3]
    with pytest.raises(ValueError, match="sum to 1"):
        iterative_stratification(counts, np.ones(10), [0.5, 0.6])


def test_temperature_per_label_and_shared_fallback():
    rng = np.random.default_rng(0)
    n = 4000
    true_z = rng.normal(0, 2, (n, 2))
    y = (rng.random((n, 2)) < 1 / (1 + np.exp(-true_z))).astype(int)
    y[:, 1] = 0
    y[:3, 1] = 1  # 3 positives: too few for a temperature of its own
    t, shared = fit_label_temperatures(y, true_z * 3.0)  # logits 3x too confident
    assert t[0] == pytest.approx(3.0, rel=0.1) and t[1] == shared


def test_operating_point_criteria_per_finding():
    c = parse_criteria("youden,Pneumothorax=sensitivity>=0.9", FINDINGS)
    assert c["Pneumothorax"] == "sensitivity>=0.9" and c["Mass"] == "youden"
    assert parse_criteria("sensitivity>=0.95", ["A"]) == {"A": "sensitivity>=0.95"}
    with pytest.raises(ValueError, match="Nope"):
        parse_criteria("youden,Nope=youden", FINDINGS)
    w = pos_weights(np.array([[1, 0], [0, 0], [0, 0], [1, 0]]))
    assert w.tolist() == [1.0, 1.0] and pos_weights(np.array([[1], [0], [0], [0]])).tolist() == [3.0]


def test_streamed_items_equal_cached_items(nih_csv):
    from medviewer.inference.card import InputSpec, Preprocessing
    from training.data import Augment, load_fitted

    index = read_multilabel_csv(nih_csv, FINDINGS).take(range(6))
    spec, inp = Preprocessing(), InputSpec(channels=1, height=48, width=48)
    y = index.targets.astype(np.float32)
    cached = TargetDataset(y, spec, inp, images=load_fitted(index.paths, spec, inp, progress=False),
                           augment=Augment(), seed=4)
    streamed = TargetDataset(y, spec, inp, paths=list(index.paths), augment=Augment(), seed=4)
    for ds in (cached, streamed):
        ds.set_epoch(2)
    for i in range(6):
        (xc, yc), (xs, ys) = cached[i], streamed[i]
        assert xc.shape == (1, 48, 48) and np.array_equal(xc.numpy(), xs.numpy()) and np.array_equal(yc, ys)
    assert not np.array_equal(cached[0][0].numpy(), cached[1][0].numpy())


def _fit(nih_csv, out, *extra):
    return main(["fit", "--task", "multilabel", "--data", str(nih_csv), "--input-size", "32", "--model",
                 "compact-tiny", "--limit", "240", "--val-fraction", "0.3", "--bootstrap", "30", "--threads", "1",
                 "--no-progress", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def tiny_package(nih_csv, tmp_path_factory):
    """A multi-label model trained for 3 epochs on 240 NIH films (seconds), exported as a package."""
    run = tmp_path_factory.mktemp("run")
    assert _fit(nih_csv, run, "--epochs", "3", "--operating-point", "youden,Effusion=sensitivity>=0.9") == 0
    pkg = tmp_path_factory.mktemp("pkg") / "nih-tiny"
    assert main(["export", str(run / "best.pt"), "--out", str(pkg), "--name", "nih-cxr14-tiny",
                 "--parity-images", "8"]) == 0
    return run, pkg


def test_fit_writes_per_finding_metrics_and_calibrated_checkpoint(tiny_package):
    import torch

    run, _ = tiny_package
    m = json.loads((run / "metrics.json").read_text())
    v = m["validation"]
    assert m["task"] == "multilabel" and list(v["per_label"]) == FINDINGS and len(m["operating_points"]) == 14
    assert m["operating_points"]["Effusion"]["criterion"] == "sensitivity>=0.9"
    assert m["operating_points"]["Effusion"]["sensitivity"] >= 0.9
    assert 0 < v["macro_auroc"] < 1 and v["macro_auroc_ci95"][0] <= v["macro_auroc"] <= v["macro_auroc_ci95"][1]
    assert v["micro_auroc_ci95"][0] <= v["micro_auroc"] <= v["micro_auroc_ci95"][1]
    assert "patients" in v["ci_method"]
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert ck["task"] == "multilabel" and len(ck["temperatures"]) == 14 and all(t > 0 for t in ck["temperatures"])
    # the saved predictions are the calibrated checkpoint's: evaluate reproduces the fit's AUROCs
    rows = list(csv.DictReader(open(run / "val_predictions.csv")))
    assert len(rows) == v["n"]


def test_export_import_show_lists_14_findings_with_operating_points(tiny_package, model_dirs, capsys):
    from medviewer.cli import main as app_main
    from medviewer.inference import ModelPackage
    from medviewer.inference.card import Task

    _, pkg = tiny_package
    card = ModelPackage.load(pkg).card  # validates hashes, ONNX outputs, the OOD statistics
    assert card.task == Task.MULTILABEL and card.labels == FINDINGS and card.negative_label is None
    assert card.applicability.age_years == (18, 150) and card.applicability.views == ["AP", "PA"]
    readme = (pkg / "README.md").read_text()
    assert "| Pneumothorax |" in readme and "CheXNet" in readme and "different scale of problem" in readme
    from medviewer.inference import open_session
    from training.data import read_display_u8

    img = read_display_u8(NIH / "images" / "00000231_013.png")
    (pred,) = open_session(ModelPackage.load(pkg), "cpu").predict([img])
    assert pred.cams.shape[0] == 14 and pred.cams.shape[1:] == img.shape[:2]  # a CAM per finding, image grid
    assert set(pred.scores) == set(FINDINGS) and all(0 < v < 1 for v in pred.scores.values())
    assert app_main(["models", "validate", str(pkg)]) == 0
    assert app_main(["models", "import", str(pkg)]) == 0
    capsys.readouterr()
    assert app_main(["models", "show", "nih-cxr14-tiny"]) == 0
    out = capsys.readouterr().out
    ops = [line for line in out.splitlines() if line.startswith("  ") and ": p >= " in line]
    assert [line.split(":")[0].strip() for line in ops] == FINDINGS
    assert "age 18-150 y" in out and "multilabel" in out


def test_evaluate_package_equals_checkpoint(tiny_package, nih_csv, tmp_path):
    run, pkg = tiny_package
    a, b = tmp_path / "ck", tmp_path / "pkg"
    assert main(["evaluate", str(run / "best.pt"), "--data", str(nih_csv), "--bootstrap", "0", "--out", str(a)]) == 0
    assert main(["evaluate", str(pkg), "--data", str(nih_csv), "--bootstrap", "0", "--out", str(b)]) == 0
    ma = json.loads((a / "metrics.json").read_text())["metrics"]
    mb = json.loads((b / "metrics.json").read_text())["metrics"]
    assert ma["n"] == mb["n"] == 999
    assert mb["macro_auroc"] == pytest.approx(ma["macro_auroc"], abs=1e-4)
    for lab in FINDINGS:
        assert mb["per_label"][lab]["auroc"] == pytest.approx(ma["per_label"][lab]["auroc"], abs=1e-4)


def test_infer_models_auto_routes_each_image_to_the_model_for_it(tiny_package, model_dirs, tmp_path, capsys):
    """Paediatric demo film -> pneumonia-cxr only (adult model: age); adult RG1 film -> the adult model only
    (pneumonia-cxr: age); one run, each entry naming its model."""
    import shutil

    from conftest import pydicom_test_file

    from medviewer.cli import main as app_main
    from medviewer.inference import registry

    builtin = model_dirs[0]  # a copy of the shipped default model: isolated from edits to resources/
    shutil.copytree(REPO / "resources" / "models" / registry.DEFAULT_MODEL_NAME, builtin / registry.DEFAULT_MODEL_NAME)
    _, pkg = tiny_package
    assert app_main(["models", "import", str(pkg)]) == 0
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(REPO / "resources" / "demo" / "paediatric-cxr-pneumonia.dcm", d / "child.dcm")
    shutil.copy(pydicom_test_file("RG1_UNCR.dcm"), d / "adult.dcm")
    out = tmp_path / "out"
    assert app_main(["infer", str(d), "--models", "auto", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in doc["models"]] == [registry.DEFAULT_MODEL_NAME, "nih-cxr14-tiny"]
    by = {(r["path"].rsplit("/", 1)[-1], r["model"]) for r in doc["results"]}
    assert by == {("child.dcm", "pneumonia-cxr"), ("adult.dcm", "nih-cxr14-tiny")}
    for r in doc["results"]:
        assert r["applicability"]["status"] != "out_of_scope" and r["error"] is None
    adult = next(r for r in doc["results"] if r["model"] == "nih-cxr14-tiny")
    assert set(adult["scores"]) == set(FINDINGS)
    left = {(e["path"].rsplit("/", 1)[-1], e["model"]): " ".join(e["reasons"]) for e in doc["outside_intended_use"]}
    assert set(left) == {("child.dcm", "nih-cxr14-tiny"), ("adult.dcm", "pneumonia-cxr")}
    assert all("age" in why.lower() for why in left.values()), left
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["path"].rsplit("/", 1)[-1], r["model"]) for r in rows} == by
    # a named list, with overlays and DICOM results: one SR + SC per in-scope (image, model), by model
    two = tmp_path / "two"
    assert app_main(["infer", str(d), "--models", "pneumonia-cxr,nih-cxr14-tiny", "--overlays", "--dicom",
                     "--out", str(two), "--quiet"]) == 0
    for r in json.loads((two / "results.json").read_text())["results"]:
        assert (two / r["overlay"]).is_file() and r["overlay"].startswith(f"overlays/{r['model']}/")
        assert sorted(p.split("/")[-1][:3] for p in r["dicom"]) == ["SC_", "SR_"]
        assert all(p.startswith(f"dicom/{r['model']}/") for p in r["dicom"])
    assert len(list((two / "dicom").rglob("SR_*.dcm"))) == 2 and len(list((two / "overlays").rglob("*.png"))) == 2
    # an image that cannot be read fails once, for no model in particular
    (d / "broken.dcm").write_bytes(b"DICM" * 64)
    assert app_main(["infer", str(d), "--models", "auto", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    bad = [r for r in json.loads((tmp_path / "bad" / "results.json").read_text())["results"] if r["error"]]
    assert len(bad) == 1 and bad[0]["model"] is None and bad[0]["path"].endswith("broken.dcm")
    (d / "broken.dcm").unlink()
    # the default stays one model, the default one
    assert app_main(["infer", str(d), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["model"]["name"] == "pneumonia-cxr" and {r["model"] for r in one["results"]} == {"pneumonia-cxr"}
    assert app_main(["infer", str(d), "--model", "x", "--models", "auto", "--out", str(tmp_path / "e")]) == 1
    assert "not both" in capsys.readouterr().err


def test_resume_cv_search_baseline(nih_csv, tmp_path):
    run = tmp_path / "run"
    assert _fit(nih_csv, run, "--epochs", "1") == 0
    assert _fit(nih_csv, run, "--epochs", "2", "--resume") == 0
    log = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["epoch"]) for r in log] == [1, 2]
    assert "resumed from" in (run / "train.log").read_text()
    assert _fit(nih_csv, tmp_path / "cv", "--epochs", "1") == 0
    assert main(["cv", "--task", "multilabel", "--data", str(nih_csv), "--input-size", "32", "--model",
                 "compact-tiny", "--limit", "240", "--folds", "2", "--epochs", "1", "--bootstrap", "0",
                 "--no-progress", "--threads", "1", "--out", str(tmp_path / "cv")]) == 0
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert len(cv["folds"]) == 2 and all(0 < f["macro_auroc"] < 1 for f in cv["folds"])
    assert main(["search", "--task", "multilabel", "--data", str(nih_csv), "--input-size", "32", "--model",
                 "compact-tiny", "--limit", "240", "--epochs", "1", "--bootstrap", "0", "--no-progress",
                 "--threads", "1", "--grid", '{"lr": [0.001, 0.003]}', "--out", str(tmp_path / "s")]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "s" / "search.csv")))) == 2
    assert main(["baseline", "--task", "multilabel", "--data", str(nih_csv), "--limit", "240", "--feature-size",
                 "64", "--folds", "2", "--bootstrap", "20", "--classifiers", "logreg", "--no-progress",
                 "--out", str(tmp_path / "b")]) == 0
    row = json.loads((tmp_path / "b" / "baselines.json").read_text())["rows"][0]
    assert 0 < row["metrics"]["auroc"] < 1 and set(row["per_label"]) == set(FINDINGS)


def test_help_without_torch_is_one_line_and_help_texts_exist(capsys):
    code = ("import sys; sys.modules['torch'] = None; from training.cli import main; "
            "sys.exit(main(['--help']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "pip install 'medviewer[train]'" in r.stderr
    from training.models import MODELS

    assert list(MODEL_NAMES) == list(MODELS)
    for cmd in ("fit", "baseline", "cv", "search", "prepare"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert out.count("(default: None)") == 0 and "training." not in out
        assert len(out.split("options:")[0].split("\n\n")) >= 3, f"{cmd} has no description"
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for opt in ("--seed SEED seed", "--epochs EPOCHS maximum", "--lr LR peak", "--resize {squeeze,letterbox} fit",
                "--model {", "--preset {chexnet} chexnet"):
        assert opt in out, opt
    with pytest.raises(SystemExit):
        main(["cv", "--help"])
    assert "--folds FOLDS number of patient folds" in " ".join(capsys.readouterr().out.split())


def test_chexnet_preset_sets_the_published_setup_and_explicit_options_win():
    from training.cli import _config, build_parser

    args = build_parser("chexnet").parse_args(["fit", "--preset", "chexnet", "--data", "x.csv", "--batch-size", "8"])
    cfg = _config(args, [])
    assert (cfg.model, cfg.input_size, cfg.optimizer, cfg.lr, cfg.schedule, cfg.task) == (
        "densenet121", 224, "adam", 1e-3, "plateau", "multilabel")
    assert cfg.batch_size == 8
    assert _config(build_parser().parse_args(["fit", "--data", "x"]), []).model == "compact"
