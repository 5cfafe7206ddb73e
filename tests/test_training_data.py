"""training.data and training.metrics: layouts, patient split, augmentation; metrics vs scikit-learn."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from training.data import (
    Augment,
    class_weights,
    discover,
    kermany_patient_id,
    regex_patient_rule,
    split_by_patient,
    synthetic_squares,
)
from training.metrics import binary_metrics, bootstrap_auroc_ci, choose_operating_point


@pytest.mark.parametrize("name, pid", [
    ("person1372_bacteria_3501.jpeg", "person1372"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("NORMAL2-IM-0019-0001.jpeg", "NORMAL2-IM-0019"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("other_name.png", "other_name"),
])
def test_kermany_patient_id(name: str, pid: str) -> None:
    assert kermany_patient_id(Path("/x") / name) == pid


def test_regex_patient_rule() -> None:
    rule = regex_patient_rule(r"^(sub\d+)_")
    assert rule("a/sub12_scan3.png") == "sub12"
    with pytest.raises(ValueError, match="invalid --patient-regex"):
        regex_patient_rule("(")


def test_kermany_patient_split_is_disjoint_and_stratified(kermany_dir: Path) -> None:
    index = discover(kermany_dir)
    assert index.classes == ["normal", "pneumonia"]
    train = index.subset("train")
    assert train.counts() == {"normal": 1341, "pneumonia": 3875}
    parts = split_by_patient(train, val_fraction=0.15, test_fraction=0.1, seed=3)
    pids = {k: {train.samples[i].patient_id for i in v} for k, v in parts.items()}
    assert not pids["train"] & pids["val"] and not pids["train"] & pids["test"] and not pids["val"] & pids["test"]
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(len(train)))
    for name, frac in (("val", 0.15), ("test", 0.1)):
        part = train.take(parts[name])
        assert abs(len(part) / len(train) - frac) < 0.02
        prev = part.counts()["pneumonia"] / len(part)
        assert abs(prev - 3875 / 5216) < 0.03  # stratified: same prevalence as the whole
    again = split_by_patient(train, val_fraction=0.15, test_fraction=0.1, seed=3)
    assert again == parts
    assert split_by_patient(train, 0.15, 0.1, seed=4)["val"] != parts["val"]


def _write_images(folder: Path, n: int, value: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"pat{i // 2}_img{i}.png"
        cv2.imwrite(str(p), np.full((20, 30), value + i, np.uint8))
        paths.append(p)
    return paths


def test_discover_layouts(tmp_path: Path) -> None:
    _write_images(tmp_path / "flat" / "Neg", 4, 10)
    _write_images(tmp_path / "flat" / "Pos", 6, 100)
    idx = discover(tmp_path / "flat", regex_patient_rule(r"^(pat\d+)_"))
    assert idx.classes == ["neg", "pos"] and idx.counts() == {"neg": 4, "pos": 6} and idx.splits == {None}
    assert {s.patient_id for s in idx.samples} == {"pat0", "pat1", "pat2"}

    _write_images(tmp_path / "split" / "train" / "A", 3, 0)
    _write_images(tmp_path / "split" / "train" / "B", 3, 50)
    _write_images(tmp_path / "split" / "test" / "B", 2, 50)
    idx = discover(tmp_path / "split")
    assert idx.splits == {"train", "test"} and len(idx.subset("test")) == 2

    csv_path = tmp_path / "labels.csv"
    rows = ["path,label,patient_id"] + [f"flat/Pos/pat{i // 2}_img{i}.png,Pos,P{i}" for i in range(3)]
    csv_path.write_text("\n".join(rows) + "\n")
    idx = discover(csv_path, classes=["neg", "pos"])
    assert idx.counts() == {"neg": 0, "pos": 3} and idx.samples[0].patient_id == "P0"
    assert idx.samples[0].path.is_file()

    bad = tmp_path / "bad.csv"
    bad.write_text("file,y\na.png,1\n")
    with pytest.raises(ValueError, match="'path' and 'label'"):
        discover(bad)
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "missing")


def test_augment_is_seeded_and_does_not_flip() -> None:
    img = np.zeros((64, 64, 1), np.uint8)
    img[20:40, 5:15] = 200  # a bright bar on the left
    aug = Augment()
    a = aug(img, np.random.default_rng(1))
    b = aug(img, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    assert not np.array_equal(a, aug(img, np.random.default_rng(2)))
    for seed in range(20):  # rotations/shifts are small and there is no left-right flip
        out = aug(img, np.random.default_rng(seed))[..., 0].astype(float)
        out = np.clip(out - np.median(out) - 20, 0, None)  # the bar, without brightness shift and noise
        assert out[:, :32].sum() > 3 * out[:, 32:].sum()


def test_class_weights_balanced() -> None:
    w = class_weights(np.array([0, 1, 1, 1]), 2)
    np.testing.assert_allclose(w, [2.0, 2.0 / 3.0])


def test_synthetic_squares_boxes() -> None:
    imgs, labels, boxes = synthetic_squares(20, 48, seed=0)
    for im, lab, (x0, y0, x1, y1) in zip(imgs, labels, boxes, strict=True):
        if lab:
            assert im[y0:y1, x0:x1].mean() > im.mean() + 20
        else:
            assert x0 == -1


def test_metrics_agree_with_sklearn() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.65, 0.3, 0.95, 0.6])
    m = binary_metrics(y, s, threshold=0.5, n_boot=200)
    pred = (s >= 0.5).astype(int)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["brier"] == pytest.approx(brier_score_loss(y, s))
    assert m["confusion_matrix"] == [[3, 1], [1, 5]]
    lo, hi = m["auroc_ci95"]
    assert 0.0 <= lo < m["auroc"] < hi <= 1.0


def test_operating_point_youden_and_target_sensitivity() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9])
    op = choose_operating_point(y, s, "youden")
    # thresholds 0.7 (sens 0.75, spec 1.0) and 0.5 (sens 1.0, spec 0.75) both give J = 0.75; the first wins
    assert (op.threshold, op.sensitivity, op.specificity) == (0.7, 0.75, 1.0)
    op = choose_operating_point(y, s, "sensitivity>=0.95")
    assert op.threshold == 0.5 and op.sensitivity == 1.0 and op.specificity == 0.75
    with pytest.raises(ValueError, match="unknown operating-point criterion"):
        choose_operating_point(y, s, "f1")
    with pytest.raises(ValueError, match="both classes"):
        choose_operating_point(np.ones(4), s[:4])


def test_bootstrap_ci_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)

    def width(n: int) -> float:
        y = rng.integers(0, 2, n)
        s = y * 0.5 + rng.random(n)
        lo, hi = bootstrap_auroc_ci(y, s, n_boot=150, seed=1)
        return hi - lo

    assert width(2000) < width(100)
