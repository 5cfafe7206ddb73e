"""training.engine / models / export / baselines / cli: short real runs (synthetic and Kermany subsets)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from medviewer.errors import ModelPackageError
from medviewer.imaging.preprocess import ResizeGeometry, normalise
from medviewer.inference import ModelPackage
from medviewer.inference.card import load_card, sha256_file
from training.cli import main
from training.data import DatasetIndex, Sample, synthetic_squares
from training.engine import FitConfig, PreparedData, fit, fit_arrays, load_checkpoint_model
from training.export import ExportOptions, check_parity, export_onnx, export_package, monai_cam
from training.models import MODELS, build_model

REPO = Path(__file__).resolve().parents[1]


def _index(labels: np.ndarray) -> DatasetIndex:
    return DatasetIndex([Sample(Path(f"s{i}.png"), int(v), f"p{i}") for i, v in enumerate(labels)], ["normal", "square"])


@pytest.fixture(scope="module")
def square_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A compact CNN trained on the synthetic bright-square task (64x64), with its validation data."""
    x_tr, y_tr, _ = synthetic_squares(256, 64, seed=0)
    x_va, y_va, b_va = synthetic_squares(64, 64, seed=1)
    data = PreparedData(["normal", "square"], _index(y_tr), _index(y_va), None, x_tr, x_va, None, "synthetic")
    out = tmp_path_factory.mktemp("squares")
    cfg = FitConfig(data="synthetic", out=str(out), model="compact-tiny", input_size=64, epochs=6, batch_size=16,
                    lr=5e-3, augment=False, progress=False, bootstrap=50, patience=0)
    result = fit_arrays(cfg, data)
    assert result.val_metrics["auroc"] > 0.95
    return out, x_va, y_va, b_va


@pytest.mark.parametrize("name", list(MODELS))
def test_models_have_exact_cam(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        logits, cam = model.forward_with_cam(x)
        assert torch.allclose(model(x), logits, atol=1e-5)
    assert cam.shape == (2, 3, 64 // model.stride, 64 // model.stride)
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(monai_cam(model, x, 1), cam[:, 1], atol=1e-4, rtol=1e-4)


def test_local_weights_are_loaded(tmp_path: Path) -> None:
    a = build_model("compact-small", num_classes=2)
    torch.save({"model": a.state_dict()}, tmp_path / "w.pt")
    b = build_model("compact-small", num_classes=3, weights=tmp_path / "w.pt")  # classifier shape differs: skipped
    torch.testing.assert_close(a.stem[0].weight, b.stem[0].weight)
    assert b.classifier.out_features == 3
    with pytest.raises(FileNotFoundError):
        build_model("compact", 2, weights=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 2)


def test_fit_synthetic_writes_run_and_cam_finds_square(square_run) -> None:
    out, x_va, y_va, boxes = square_run
    for name in ("config.json", "log.csv", "best.pt", "last.pt", "metrics.json", "val_predictions.csv",
                 "plots/roc.png", "plots/training_curves.png", "plots/calibration.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["n"] == 64 and metrics["operating_point"]["criterion"] == "youden"
    model, ck = load_checkpoint_model(out / "best.pt")
    x = torch.from_numpy(((x_va.astype(np.float32) / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        _, cam = model.forward_with_cam(x)
    assert cam.shape == (64, 2, 4, 4)  # output stride 16
    hits = 0
    pos = np.flatnonzero(y_va == 1)
    for i in pos:  # the peak cell of the CAM (16x16 pixels each) lies on the square
        r, c = np.unravel_index(np.argmax(cam[i, 1].numpy()), (4, 4))
        x0, y0, x1, y1 = boxes[i]
        hits += (16 * c < x1 and 16 * c + 16 > x0) and (16 * r < y1 and 16 * r + 16 > y0)
    assert hits >= 0.9 * len(pos)
    # mapped onto the image as the app does, the CAM is higher on the square than elsewhere
    geom = ResizeGeometry(64, 64, 64, 64, 0, 0, 64, 64)
    inside = []
    for i in pos:
        up = geom.to_original(cam[i, 1].numpy())
        x0, y0, x1, y1 = boxes[i]
        mask = np.zeros_like(up, bool)
        mask[y0:y1, x0:x1] = True
        inside.append(up[mask].mean() > up[~mask].mean())
    assert np.mean(inside) >= 0.9


def test_export_parity_synthetic(square_run, tmp_path: Path) -> None:
    out, x_va, _, _ = square_run
    model, ck = load_checkpoint_model(out / "best.pt")
    from medviewer.inference.card import InputSpec, Preprocessing

    inp, spec = InputSpec.model_validate(ck["input"]), Preprocessing.model_validate(ck["preprocessing"])
    onnx_path = export_onnx(model, tmp_path / "m.onnx", inp)
    assert not list(tmp_path.glob("*.data"))  # one file
    rep = check_parity(model, onnx_path, x_va[:5], spec)
    assert rep.ok and rep.n_images == 5 and rep.prob_max_abs <= 1e-4
    import onnx

    g = onnx.load(str(onnx_path))
    assert [i.name for i in g.graph.input] == ["image"]
    assert [o.name for o in g.graph.output] == ["logits", "cam", "features"]
    assert rep.features_max_rel <= 1e-3
    # the pooled features end with the penultimate layer: the classifier applied to them gives the logits
    import onnxruntime as ort

    x = np.stack([normalise(im, spec) for im in x_va[:3]]).astype(np.float32)
    logits, feats = ort.InferenceSession(str(onnx_path)).run(["logits", "features"], {"image": x})
    w, b = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    k = w.shape[1]
    assert feats.shape[1] == sum(f for _, f in model.ood_block_sizes(1, inp.height, inp.width))
    assert np.allclose(feats[:, -k:] @ w.T + b, logits, atol=1e-4)
    assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def by_rows(run: Path, part: str) -> list[str]:
    return [line for line in (run / "split.csv").read_text().splitlines()[1:] if line.rsplit(",", 1)[1] == part]


def test_fit_kermany_subset_export_evaluate(kermany_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = FitConfig(data=str(kermany_dir), out=str(run), model="compact-tiny", input_size=64, epochs=1,
                    batch_size=16, limit=140, val_fraction=0.25, progress=False, bootstrap=50,
                    command="medviewer-train fit --limit 140")
    r = fit(cfg)
    assert r.epochs_run == 1 and 0.0 <= r.val_metrics["auroc"] <= 1.0
    split = (run / "split.csv").read_text().splitlines()[1:]
    by = {}
    for line in split:
        path, _label, pid, part = line.rsplit(",", 3)
        by.setdefault(part, set()).add(pid)
    assert by["train"] and by["val"] and not by["train"] & by["val"]

    pkg = tmp_path / "pkg"
    out, parity = export_package(run / "best.pt", pkg, ExportOptions(name="test-cxr", parity_images=8))
    assert parity.ok and parity.n_images == 8
    card = load_card(pkg)
    assert card.labels == ["normal", "pneumonia"] and card.negative_label == "normal"
    assert card.operating_point("pneumonia") is not None and card.sha256 == sha256_file(pkg / "model.onnx")
    assert "Kermany" in card.training.citation and card.training.data_licence == "CC BY 4.0"
    assert card.metrics[0].auroc == pytest.approx(r.val_metrics["auroc"])
    assert (pkg / "README.md").read_text().startswith("# test-cxr") and (pkg / "plots" / "roc.png").is_file()
    loaded = ModelPackage.load(pkg)  # the app's validation: schema, SHA-256, graph vs card
    assert loaded.card.name == "test-cxr"
    # schema 2: intended use, an OOD detector fitted on the run's training split, every file hashed
    assert card.schema_version == 2 and card.applicability.age_years == (1, 5) and "CHEST" in card.applicability.body_parts
    assert card.ood is not None and loaded.ood is not None and card.ood.n_fit == len(by_rows(run, "train"))
    assert card.ood.validation_false_rejection <= 0.05 and card.ood.shifted_false_rejection is not None
    assert set(card.files) >= {"model.onnx", "ood.npz", "README.md", "plots/roc.png"}
    assert all(sha256_file(pkg / rel) == digest for rel, digest in card.files.items())
    # tampered statistics are refused
    import numpy as _np

    with _np.load(pkg / "ood.npz") as z:
        arrays = {k: z[k] for k in z.files}
    first = next(iter(arrays))
    arrays[first] = arrays[first] * 0.5
    _np.savez(pkg / "ood.npz", **arrays)
    with pytest.raises(ModelPackageError, match="ood.npz SHA-256"):
        ModelPackage.load(pkg)

    # the operating point can be re-chosen on the run's validation predictions at export time
    export_package(run / "best.pt", tmp_path / "pkg2", name="test-cxr", parity_images=2,
                   operating_point="sensitivity>=0.9")
    op2 = load_card(tmp_path / "pkg2").operating_point("pneumonia")
    assert op2.criterion == "sensitivity>=0.9" and op2.sensitivity >= 0.9
    assert "--operating-point 'sensitivity>=0.9'" in load_card(tmp_path / "pkg2").training.command

    # transfer evaluation: temperature folded into the graph, operating point on shifted validation copies,
    # patient-level intervals, ECE, CAM-in-thorax, the replaced package measured alike and kept in history
    export_package(run / "best.pt", tmp_path / "pkg3", name="test-cxr", version="2.0.0", parity_images=2,
                   transfer=True, shift_copies=2, previous=tmp_path / "pkg2")
    c3 = load_card(tmp_path / "pkg3")
    ModelPackage.load(tmp_path / "pkg3")
    op3 = c3.operating_point("pneumonia")
    assert op3.criterion == "youden" and op3.split.startswith("shifted validation")
    val3, shifted3 = c3.metrics[0], c3.metrics[1]
    assert shifted3.split.startswith("shifted validation") and shifted3.n == 2 * val3.n
    assert "patients" in val3.ci_method and set(val3.ci95) == {"auroc", "sensitivity", "specificity", "accuracy"}
    lo, hi = val3.ci95["sensitivity"]
    assert lo <= val3.sensitivity <= hi and 0.0 <= val3.ece <= 1.0
    assert val3.auroc == pytest.approx(card.metrics[0].auroc, abs=0.02)  # temperature keeps the ranking
    assert c3.history[0].version == "1.0.0" and c3.history[0].metrics
    assert c3.comparisons[0].name == "test-cxr 1.0.0" and c3.comparisons[0].metrics.n == shifted3.n
    assert "Temperature" in (tmp_path / "pkg3" / "README.md").read_text()

    images = sorted((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))[:6] + \
        sorted((kermany_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[:6]
    csv_path = tmp_path / "eval.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in images))
    assert main(["evaluate", str(run / "best.pt"), "--data", str(csv_path), "--out", str(tmp_path / "ev"),
                 "--bootstrap", "20"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["metrics"]["n"] == 12 and ev["metrics"]["confusion_matrix"][0][0] + ev["metrics"]["confusion_matrix"][0][1] == 6


def test_export_options_are_typed(tmp_path: Path) -> None:
    """export_package takes an ExportOptions (fields may be overridden one by one); a misspelt option is a
    TypeError before any checkpoint is read, not a silently ignored keyword."""
    base = ExportOptions(name="cxr", transfer=True)
    with pytest.raises(TypeError, match="tranfser"):
        export_package(tmp_path / "missing.pt", tmp_path / "pkg", base, tranfser=False)
    with pytest.raises(TypeError, match="name"):
        export_package(tmp_path / "missing.pt", tmp_path / "pkg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.name = "other"  # type: ignore[misc]
    assert dataclasses.replace(base, version="2.0.0").transfer is True
    assert not (tmp_path / "pkg").exists()


def test_baselines_run_on_kermany_subset(kermany_dir: Path, tmp_path: Path) -> None:
    from training.baselines import run_baselines

    args = argparse.Namespace(data=str(kermany_dir), val_fraction=0.3, test_fraction=0.0, seed=0, patient_regex=None,
                              positive=None, limit=120, feature_size=64, resize="squeeze", cache_dir=None,
                              no_progress=True, out=str(tmp_path), classifiers="logreg,svm,tree", folds=3, jobs=1,
                              bootstrap=50)
    rows = run_baselines(args)
    assert [r["name"] for r in rows] == ["features+LogReg", "features+SVM",
                                         "features+DecisionTree"]
    assert rows[0]["metrics"]["auroc"] > 0.7  # handcrafted features separate pneumonia from normal
    saved = json.loads((tmp_path / "baselines.json").read_text())
    from medviewer.inference.card import ComparisonRow

    ComparisonRow.model_validate({k: saved["rows"][0][k] for k in ("name", "description", "metrics")})
    assert (tmp_path / "plots" / "baselines_roc.png").is_file()


@pytest.mark.parametrize("cmd", ["fit", "evaluate", "export", "baseline", "cv", "search"])
def test_cli_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0 and "usage: medviewer-train " + cmd in capsys.readouterr().out


def test_cli_reports_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "not found" in err and "Traceback" not in err


def _square_folder(root: Path, n: int = 24, size: int = 32) -> None:
    imgs, labels, _ = synthetic_squares(n, size, seed=5, square=8)
    for i, (im, lab) in enumerate(zip(imgs, labels, strict=True)):
        d = root / ("square" if lab else "normal")
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"case{i}_0.png"), im[..., 0])


def test_ddp_two_process_cpu(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): one epoch, rank 0 writes the run."""
    data = tmp_path / "data"
    _square_folder(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training", "fit", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "compact-tiny",
           "--input-size", "32", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress",
           "--bootstrap", "20", "--val-fraction", "0.3", "--patient-regex", r"^(case\d+)_"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "world 2" in log and (tmp_path / "run" / "best.pt").is_file()
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3


def test_time_budget_plans_epochs_and_replay_command(tmp_path: Path) -> None:
    from training.engine import replay_command

    x, y, _ = synthetic_squares(48, 32, seed=2)
    data = PreparedData(["normal", "square"], _index(y), _index(y[:16]), None, x, x[:16], None, "synthetic")
    cfg = FitConfig(data="synthetic", out=str(tmp_path), model="compact-tiny", input_size=32, epochs=50,
                    batch_size=16, max_minutes=0.002, ema=0.99, progress=False, bootstrap=0, patience=0,
                    command="medviewer-train fit --data d --epochs 50 --max-minutes 0.002 --ema 0.99")
    r = fit_arrays(cfg, data)
    assert 1 <= r.planned_epochs < 50 and r.epochs_run <= r.planned_epochs
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["reproduce"] == f"medviewer-train fit --epochs {r.planned_epochs} --data d --ema 0.99"
    assert replay_command("medviewer-train fit --epochs=3 --max-minutes=9 --lr 0.1", 7) == \
        "medviewer-train fit --epochs 7 --lr 0.1"


def test_cv_and_search_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    _square_folder(data, n=32)
    common = ["--data", str(data), "--model", "compact-tiny", "--input-size", "32", "--epochs", "1",
              "--batch-size", "8", "--no-progress", "--bootstrap", "0", "--patient-regex", r"^(case\d+)_"]
    assert main(["cv", *common, "--folds", "2", "--out", str(tmp_path / "cv")]) == 0
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [1, 2] and 0 <= cv["auroc_mean"] <= 1
    val_paths = []
    for k in (1, 2):
        rows = (tmp_path / "cv" / f"fold{k}" / "split.csv").read_text().splitlines()[1:]
        val_paths.append({r.split(",")[0] for r in rows if r.endswith(",val")})
    assert not val_paths[0] & val_paths[1] and len(val_paths[0] | val_paths[1]) == 32  # folds partition the data
    assert main(["search", *common, "--grid", '{"lr": [0.001, 0.01]}', "--out", str(tmp_path / "s")]) == 0
    assert len((tmp_path / "s" / "search.csv").read_text().splitlines()) == 3
    assert "best:" in capsys.readouterr().out
    assert main(["search", *common, "--grid", '{"nope": [1]}', "--out", str(tmp_path / "s2")]) == 2
