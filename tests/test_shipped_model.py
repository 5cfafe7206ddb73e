"""The shipped default model, run the way the app runs it, on real validation images.

The validation patients are recomputed with the training package's own seeded patient-level split (the
one the card reports), so these images were never trained on. Needs ../shared/data (skips without it).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medviewer.imaging import display_image
from medviewer.imaging.preprocess import fit_to_input
from medviewer.inference import default_model, open_session
from medviewer.io import read_instance

training_data = pytest.importorskip("training.data")


@pytest.fixture(scope="module")
def val_sample(kermany_dir):
    index = training_data.discover(kermany_dir / "train")
    parts = training_data.split_by_patient(index, val_fraction=0.15, seed=0)
    val = index.take(parts["val"])
    rng = np.random.default_rng(1)
    picked = []
    for label in range(len(val.classes)):
        idx = [i for i, s in enumerate(val.samples) if s.label == label]
        picked += list(rng.choice(idx, size=40, replace=False))
    return val.take(picked)


def test_default_model_package_is_valid_and_small():
    pkg = default_model()
    assert pkg.card.labels == ["normal", "pneumonia"] and pkg.card.negative_label == "normal"
    op = pkg.card.operating_point("pneumonia")
    assert op is not None and 0.0 < op.threshold < 1.0 and "validation" in op.split
    assert pkg.onnx_path.stat().st_size < 30 * 1024 * 1024


def test_app_and_training_see_the_same_pixels(val_sample):
    pkg = default_model()
    paths = [s.path for s in val_sample.samples[:8]]
    trained_on = training_data.load_fitted(paths, pkg.card.preprocessing, pkg.card.input, progress=False)
    in_app = np.stack([fit_to_input(display_image(read_instance(p)), pkg.card.preprocessing,
                                    pkg.card.input)[0] for p in paths])
    np.testing.assert_array_equal(trained_on, in_app)


def test_default_model_separates_validation_patients(val_sample):
    pkg = default_model()
    session = open_session(pkg, "cpu")
    images = [display_image(read_instance(s.path)) for s in val_sample.samples]
    preds = session.predict(images)
    y = val_sample.labels == val_sample.classes.index("pneumonia")
    p = np.array([pr.scores["pneumonia"] for pr in preds])
    assert roc_auc_score(y, p) > 0.95
    flagged = np.array(["pneumonia" in pr.flagged for pr in preds])
    np.testing.assert_array_equal(flagged, p >= pkg.card.operating_point("pneumonia").threshold)
    assert flagged[y].mean() > 0.85 and (~flagged[~y]).mean() > 0.85  # sensitivity, specificity
    # the class activation map sits on the image grid and, for most flagged images, peaks inside the
    # chest rather than in the outer 10 % border where labels and collimation live (on the whole
    # validation split: 96.6 % of 555 flagged images)
    inside = []
    for pr, img in zip(preds, images, strict=True):
        cam = pr.cam("pneumonia")
        assert cam.shape == img.shape[:2]
        if "pneumonia" in pr.flagged:
            r, c = np.unravel_index(np.argmax(cam), cam.shape)
            h, w = cam.shape
            inside.append(0.1 * h <= r <= 0.9 * h and 0.1 * w <= c <= 0.9 * w)
    assert len(inside) >= 30 and np.mean(inside) >= 0.85


def test_evaluate_cli_runs_a_package_at_the_cards_operating_point(val_sample, tmp_path):
    """`medviewer-train evaluate PACKAGE` (the independent test-set check) runs the app's code path."""
    import json

    from training.cli import main as train_main

    pkg = default_model()
    root = tmp_path / "data"
    chosen = val_sample.samples[:8] + val_sample.samples[-8:]
    for s in chosen:
        folder = root / "test" / val_sample.classes[s.label].upper()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / s.path.name).symlink_to(s.path.resolve())
    out = tmp_path / "eval"
    assert train_main(["evaluate", str(pkg.path), "--data", str(root), "--split", "test", "--out", str(out),
                       "--bootstrap", "50", "--device", "cpu"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["operating_point"]["threshold"] == pkg.card.operating_point("pneumonia").threshold
    assert report["metrics"]["n"] == 16
    probs = np.loadtxt(out / "probabilities.csv", delimiter=",", skiprows=1)
    session = open_session(pkg, "cpu")
    direct = [p.scores["pneumonia"] for p in session.predict(
        [display_image(read_instance(s.path)) for s in chosen])]
    np.testing.assert_allclose(np.sort(probs[:, 1]), np.sort(direct), atol=1e-6)
