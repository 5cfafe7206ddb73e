"""``medviewer-train prepare kermany``: a small fake ChestXRay2017.zip in the layout Mendeley publishes."""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.cli import main
from training.data import discover, split_by_patient

# (split, label, file name) as in the published archive; two images of patient person1 in train
FILES = [
    ("train", "NORMAL", "IM-0115-0001.jpeg"),
    ("train", "NORMAL", "NORMAL2-IM-0019-0001.jpeg"),
    ("train", "PNEUMONIA", "person1_bacteria_1.jpeg"),
    ("train", "PNEUMONIA", "person1_bacteria_2.jpeg"),
    ("train", "PNEUMONIA", "person7_virus_14.jpeg"),
    ("test", "NORMAL", "IM-0001-0001.jpeg"),
    ("test", "PNEUMONIA", "person100_bacteria_475.jpeg"),
]


def _jpeg(seed: int, h: int, w: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (5, 5), 0)
    ok, buf = cv2.imencode(".jpeg", img)
    assert ok
    return buf.tobytes()


@pytest.fixture
def archive(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """ChestXRay2017.zip with chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg plus macOS debris."""
    data = {}
    path = tmp_path / "ChestXRay2017.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i, (split, label, name) in enumerate(FILES):
            member = f"chest_xray/{split}/{label}/{name}"
            data[member] = _jpeg(i, 40 + 3 * i, 56 + 5 * i)
            zf.writestr(member, data[member])
        zf.writestr("chest_xray/train/NORMAL/.DS_Store", b"junk")
        zf.writestr("__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg", b"resource fork")
        zf.writestr("chest_xray/README.txt", b"not an image")
    return path, data


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_resized_folder_manifest_and_training_index(archive, tmp_path, capsys):
    src, data = archive
    out = tmp_path / "kermany-32"
    assert main(["prepare", "kermany", str(src), "--out", str(out), "--size", "32", "--no-progress"]) == 0
    assert "prepared 7 images" in capsys.readouterr().out
    rows = _manifest(out)
    assert sorted(r["path"] for r in rows) == sorted(f"{s}/{lab}/{n}" for s, lab, n in FILES)
    for r in rows:
        written = (out / r["path"]).read_bytes()
        assert hashlib.sha256(written).hexdigest() == r["sha256"]
        assert hashlib.sha256(data[f"chest_xray/{r['path']}"]).hexdigest() == r["source_sha256"]
        img = cv2.imread(str(out / r["path"]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (32, 32) and img.dtype == np.uint8
    pid = {Path(r["path"]).name: r["patient_id"] for r in rows}
    assert pid["person1_bacteria_1.jpeg"] == pid["person1_bacteria_2.jpeg"] == "person1"
    assert pid["NORMAL2-IM-0019-0001.jpeg"] == "NORMAL2-IM-0019" and pid["IM-0115-0001.jpeg"] == "IM-0115"
    info = json.loads((out / "prepare.json").read_text())
    assert info["counts"] == {"train": {"NORMAL": 2, "PNEUMONIA": 3}, "test": {"NORMAL": 1, "PNEUMONIA": 1}}
    assert info["patients"] == {"train": 4, "test": 2} and info["root"] == "chest_xray"
    assert info["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert info["dataset"]["licence"] == "CC BY 4.0" and info["skipped"] == []
    assert not list(out.rglob(".DS_Store")) and not (out / "__MACOSX").exists()

    # what fit/baseline/evaluate read: the folder, and the manifest as a CSV, agree
    index = discover(out)
    assert index.classes == ["normal", "pneumonia"] and index.splits == {"train", "test"}
    from_csv = discover(out / "manifest.csv")
    key = lambda ix: sorted((s.path.resolve(), s.label, s.patient_id, s.split) for s in ix.samples)  # noqa: E731
    assert key(index) == key(from_csv)
    train = index.subset("train")
    parts = split_by_patient(train, val_fraction=0.5, seed=0)
    groups = [{train.samples[i].patient_id for i in idx} for idx in parts.values() if idx]
    assert len(groups) == 2 and not set.intersection(*groups)  # person1's two images stay together


def test_unchanged_copy_from_an_extracted_folder(archive, tmp_path):
    src, data = archive
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(src) as zf:
        zf.extractall(folder)
    out = tmp_path / "orig"
    assert main(["prepare", "kermany", str(folder), "--out", str(out), "--splits", "test", "--no-progress"]) == 0
    rows = _manifest(out)
    assert {r["split"] for r in rows} == {"test"} and len(rows) == 2
    for r in rows:
        assert (out / r["path"]).read_bytes() == data[f"chest_xray/{r['path']}"]
        assert r["sha256"] == r["source_sha256"]
    assert json.loads((out / "prepare.json").read_text())["source_sha256"] is None


def test_nested_duplicate_tree_and_a_corrupt_image(tmp_path, capsys):
    """Re-uploads carry a nested copy of the tree; the larger tree wins. A corrupt JPEG is skipped, named."""
    path = tmp_path / "reupload.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i, (split, label, name) in enumerate(FILES):
            zf.writestr(f"chest_xray/{split}/{label}/{name}", _jpeg(i, 30, 30))
        zf.writestr("chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg", b"\xff\xd8 truncated")
        zf.writestr("chest_xray/chest_xray/test/NORMAL/IM-0001-0001.jpeg", _jpeg(0, 30, 30))
    out = tmp_path / "out"
    assert main(["prepare", "kermany", str(path), "--out", str(out), "--size", "16", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg" in captured.err
    info = json.loads((out / "prepare.json").read_text())
    assert info["root"] == "chest_xray" and info["ignored_trees"] == {"chest_xray/chest_xray": 1}
    assert info["images"] == len(FILES) and len(info["skipped"]) == 1


@pytest.mark.parametrize("case, message", [
    ("missing", "no such archive or folder"),
    ("not_zip", "not a readable zip archive"),
    ("wrong_layout", "no chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg images found"),
    ("outer_zip", "extract that file"),
    ("out_not_empty", "output folder exists and is not empty"),
])
def test_bad_input_is_one_line_error(archive, tmp_path, capsys, case, message):
    src, _ = archive
    out = tmp_path / "out"
    if case == "missing":
        src = tmp_path / "nope.zip"
    elif case == "not_zip":
        src = tmp_path / "x.zip"
        src.write_bytes(b"PK not really")
    elif case == "wrong_layout":
        src = tmp_path / "flat.zip"
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr("images/a.jpeg", _jpeg(0, 8, 8))
    elif case == "outer_zip":
        outer = tmp_path / "rscbjbr9sj-2.zip"
        with zipfile.ZipFile(outer, "w") as zf:
            zf.write(src, "ZhangLabData/ChestXRay2017.zip")
        src = outer
    elif case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert main(["prepare", "kermany", str(src), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
