"""The applicability gate (card schema 3): what an image is, from its pixels alone, on real films.

The shipped pneumonia-cxr package carries ``gate.onnx``; every check here goes through the app's own path
(display pipeline -> Session with its gate -> intended-use policy) on real images written as PNG, so no
header can help. The kit side (train a gate, export it, add it to a package) runs end to end on a few real
images in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from medviewer.errors import ModelPackageError
from medviewer.inference import ModelPackage, default_model
from medviewer.inference.gate import verdict
from medviewer.resources import demo_dir
from tests.conftest import SHARED_DATA, pydicom_test_file

PAEDIATRIC_DEMO = demo_dir() / "paediatric-cxr-pneumonia.dcm"


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    pkg = default_model()
    if pkg.card.gate is None:
        pytest.fail(f"the built-in {pkg.card.name} {pkg.card.version} has no applicability gate")
    return pkg


def _png_of(tmp_path: Path, dicom: Path, name: str) -> Path:
    """The display image of a DICOM file saved as a PNG: no header reaches the policy."""
    from medviewer.imaging import display_image
    from medviewer.io import read_instance

    out = tmp_path / name
    cv2.imwrite(str(out), display_image(read_instance(dicom)))
    return out


def _infer(tmp_path: Path, *paths: Path) -> dict:
    from medviewer.cli import main

    out = tmp_path / "out"
    assert main(["infer", *map(str, paths), "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "results.json").read_text())


def test_builtin_card_ships_a_hashed_gate(package):
    card = package.card
    assert card.schema_version == 3 and card.gate.file in card.files
    assert card.gate.classes[0] == card.gate.in_scope_class == "paediatric_chest"
    assert 0 < card.gate.threshold < 1 and card.gate.validation
    assert any(v["protocol"] == "leave-one-source-out" for v in card.gate.validation)
    assert [h.version for h in card.history][:2] == ["2.1.0", "2.0.0"]  # the card's history is kept


def test_changed_gate_file_is_refused(package, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(package.path, copy)
    data = bytearray((copy / "gate.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "gate.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="gate.onnx SHA-256"):
        ModelPackage.load(copy)


def test_schema2_package_without_gate_still_loads_and_runs(package, tmp_path):
    """Old packages keep loading: the same package as schema 2 (no gate) scores, with no gate verdict."""
    from medviewer.inference.card import load_card, save_card, sha256_file
    from medviewer.inference.session import Session

    copy = tmp_path / "old"
    shutil.copytree(package.path, copy)
    (copy / "gate.onnx").unlink()
    card = load_card(copy)
    data = json.loads(card.model_dump_json())
    data.update(schema_version=2, gate=None)
    data["files"] = {k: sha256_file(copy / k) for k in data["files"] if (copy / k).is_file()}
    (copy / "model.json").write_text(json.dumps(data))
    old = ModelPackage.load(copy)
    assert old.card.schema_version == 2 and old.card.gate is None
    pred = Session(old, "cpu").predict([np.full((64, 64), 128, np.uint8)], regions="none")[0]
    assert pred.gate is None
    save_card(old.card, copy)  # round trip of an old card is unchanged in schema
    assert load_card(copy).schema_version == 2


def test_paediatric_demo_as_png_is_in_scope_and_flagged(package, tmp_path):
    doc = _infer(tmp_path, _png_of(tmp_path, PAEDIATRIC_DEMO, "paediatric.png"))
    (r,) = doc["results"]
    gate = r["applicability"]["gate"]
    assert r["applicability"]["status"] == "in_scope", r["applicability"]
    assert gate["in_scope_probability"] >= gate["threshold"] and gate["looks_like"] == "paediatric_chest"
    assert r["flagged"] == ["pneumonia"]


@pytest.mark.parametrize(("name", "looks_like"), [("RG1_UNCR.dcm", "an adult chest film"),
                                                  ("RG3_UNCR.dcm", None), ("MR_small.dcm", None)])
def test_unseen_films_as_png_are_called_out_of_scope_by_what_they_look_like(package, tmp_path, name, looks_like):
    """pydicom-data's adult chest PA (RG1) and extremity film (RG3), and pydicom's MR slice (held out of the gate's
    training), were never shown to the gate: from pixels alone they are out of scope, nothing is flagged, and the
    reason says what they look like."""
    doc = _infer(tmp_path, _png_of(tmp_path, pydicom_test_file(name), name + ".png"))
    (r,) = doc["results"]
    app = r["applicability"]
    assert app["status"] == "out_of_scope" and r["flagged"] == [], app
    assert any(reason.startswith(("looks like", "the image does not look like")) for reason in app["reasons"])
    if looks_like:
        assert f"looks like {looks_like} (" in "; ".join(app["reasons"])


def test_held_out_adult_films_are_out_of_scope(package):
    """Hannover adult chest films of patients the gate did not train on, judged from pixels alone."""
    import csv

    from medviewer.workstation.intended_use import HeaderFacts, Status, assess
    from training.data import read_display_u8
    from training.gate_data import _patient_split

    hdir = SHARED_DATA / "adult-cxr-hannover"
    if not hdir.is_dir():
        pytest.skip(f"{hdir} not found (../shared/data is absent)")
    from medviewer.inference.session import Session

    with open(hdir / "data.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    split = _patient_split([r["patient_id"] for r in rows], 0.25, 0)
    held = [r for r, s in zip(rows, split, strict=True) if s == "val"]
    assert len(held) >= 20
    images = [read_display_u8(hdir / "png" / f"{r['image_id']}.png") for r in held]
    preds = Session(package, "cpu").predict(images, regions="none")
    out = [assess(package.card, HeaderFacts(), p.ood_score, gate=p.gate).status == Status.OUT_OF_SCOPE for p in preds]
    assert np.mean(out) >= 0.9, f"only {np.mean(out):.0%} of {len(out)} held-out adult films out of scope"


def test_verdict_words(package):
    spec = package.card.gate
    classes = spec.classes
    probs = np.zeros(len(classes))
    probs[classes.index("adult_chest")] = 0.97
    probs[0] = 0.03
    v = verdict(spec, probs)
    assert not v.in_scope and v.reason == "looks like an adult chest film (0.97)"
    probs = np.zeros(len(classes))
    probs[0] = 1.0
    assert verdict(spec, probs).in_scope
    if spec.threshold > 0.3:  # rejected while still the most probable class: said as such, not as a guess
        probs = np.full(len(classes), (1 - spec.threshold * 0.9) / (len(classes) - 1))
        probs[0] = spec.threshold * 0.9
        assert verdict(spec, probs).reason.startswith("does not clearly look like a paediatric frontal chest film")
    with pytest.raises(ValueError, match="classes"):
        verdict(spec, np.ones(len(classes) + 1))


def test_kit_trains_exports_and_packages_a_gate(package, tmp_path):
    """A tiny gate trained on a few real images and generated ones, exported to ONNX and added to a copy of
    the package: the app validates and runs it (the path of ``python -m training.gate train/package``)."""
    pytest.importorskip("torch")
    from training import gate as kit
    from training.gate_data import CACHE, SourceImages, synthetic_non_radiographs

    rng = np.random.default_rng(0)
    demo = cv2.resize(cv2.imread(str(_png_of(tmp_path, PAEDIATRIC_DEMO, "p.png")), cv2.IMREAD_GRAYSCALE), (CACHE, CACHE))
    rg1 = cv2.resize(cv2.imread(str(_png_of(tmp_path, pydicom_test_file("RG1_UNCR.dcm"), "a.png")),
                                cv2.IMREAD_GRAYSCALE), (CACHE, CACHE))
    noise = synthetic_non_radiographs(8)

    def src(name: str, cls: int, img: np.ndarray, n: int = 8) -> SourceImages:
        imgs = np.stack([np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
                         for _ in range(n)])
        return SourceImages(name, cls, imgs, [f"{name}{i}" for i in range(n)], ["train"] * (n - 2) + ["cal", "val"])

    sources = {"kermany": src("kermany", 0, demo), "hannover": src("hannover", 1, rg1),
               "synthetic": SourceImages("synthetic", 3, noise, [f"s{i}" for i in range(8)], ["train"] * 8)}
    model = kit.train_gate(sources, list(sources), kit.TrainConfig(epochs=1, samples_per_epoch=64, batch_size=32),
                           log=lambda _m: None)
    run = tmp_path / "run"
    run.mkdir()
    kit.export_gate_onnx(model, run / "gate.onnx")
    thr, cal = kit._calibrate(model, sources)
    report = {"threshold": thr, "calibration": cal, "rows": [], "train_seconds": 1.0, "config": {"epochs": 1},
              "counts": {k: {"train": int(len(v.where("train")))} for k, v in sources.items()}}
    (run / "report.json").write_text(json.dumps(report))
    out = tmp_path / "pkg"
    assert kit.main(["package", "--package", str(package.path), "--gate", str(run), "--loso", str(tmp_path / "none"),
                     "--out", str(out), "--version", "9.9.9"]) == 0
    pkg = ModelPackage.load(out)
    assert pkg.card.version == "9.9.9" and pkg.card.gate.threshold == pytest.approx(thr)
    assert pkg.card.history[0].version == package.card.version
    from medviewer.inference.session import Session

    pred = Session(pkg, "cpu").predict([demo], regions="none")[0]
    assert set(pred.gate) == set(pkg.card.gate.classes) and sum(pred.gate.values()) == pytest.approx(1.0, abs=1e-4)


def test_revalidate_replaces_the_leave_one_source_out_evidence(package, tmp_path):
    """`python -m training.gate revalidate`: a new leave-one-source-out run replaces the card's LOSO entries
    and the README's table; the graphs, thresholds and other validation rows are untouched, the old version
    is in the history with what it claimed, and every file is re-hashed (the app loads and verifies it)."""
    pytest.importorskip("torch")
    from training import gate as kit

    def row(name: str, n: int, rate: float, measure: str = "out of scope") -> dict:
        return {"set": name, "n": n, "patients": n // 3, "measure": measure, "rate": rate,
                "ci95": [rate - 0.1, min(1.0, rate + 0.05)]}

    loso = [{"run": "adult chest: train on NIH only, test on Hannover", "left_out": ["hannover"], "epochs": 14,
             "rows": [row("paediatric validation (val)", 784, 0.991, "in scope"), row("hannover (all)", 243, 0.897)]},
            {"run": "not a radiograph: no pydicom files in training, test on them", "left_out": ["pydicom"],
             "epochs": 14, "rows": [row("pydicom (all)", 45, 0.8)]}]
    (tmp_path / "loso").mkdir()
    (tmp_path / "loso" / "loso.json").write_text(json.dumps(loso))
    out = tmp_path / "pkg"
    assert kit.main(["revalidate", "--package", str(package.path), "--loso", str(tmp_path / "loso"), "--out", str(out),
                     "--version", "9.9.9", "--previous-epochs", "6"]) == 0
    pkg = ModelPackage.load(out)  # hashes verified
    old, new = package.card, pkg.card
    assert new.version == "9.9.9" and new.gate.threshold == old.gate.threshold and new.ood == old.ood
    assert new.files["gate.onnx"] == old.files["gate.onnx"] and new.files["model.onnx"] == old.files["model.onnx"]
    assert new.files["README.md"] != old.files["README.md"]
    loso_rows = [v for v in new.gate.validation if v["protocol"] == "leave-one-source-out"]
    assert [(v["set"], v["rate"]) for v in loso_rows] == [
        ("paediatric validation (val) [adult chest: train on NIH only, test on Hannover]", 0.991),
        ("hannover [adult chest: train on NIH only, test on Hannover]", 0.897),
        ("pydicom [not a radiograph: no pydicom files in training, test on them]", 0.8)]
    assert [v for v in new.gate.validation if v["protocol"] != "leave-one-source-out"] == \
        [v for v in old.gate.validation if v["protocol"] != "leave-one-source-out"]
    assert new.history[0].version == old.version and "6-epoch gates" in new.history[0].changes
    assert new.history[0].created == old.created and new.created > old.created
    readme = (out / "README.md").read_text()
    assert readme.startswith(f"# {new.name} 9.9.9") and "14 epochs as the shipped gate" in readme
    assert "| hannover (all) | 243 | 81 | out of scope | 89.7 % | 79.7-94.7 % |" in readme
    assert f"- {old.version}: same graphs and thresholds" in readme
    old_rates = {str(v["set"]) for v in old.gate.validation if v["protocol"] == "leave-one-source-out"}
    assert not any(f"| {s.split(' [')[0]} (all) | " in readme for s in old_rates if "knee" in s)  # the old table went
