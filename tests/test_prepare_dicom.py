"""``medviewer-train prepare dicom``: de-identified PNG training images from real DICOM files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import pydicom
import pytest
from conftest import pydicom_test_file

pytest.importorskip("torch")

from training.cli import main  # noqa: E402
from training.data import discover, split_by_patient  # noqa: E402

PHI = ("Doe^Jane", "Doe", "JANE", "PID-4411", "19790203", "ACC-77812", "Roe^Richard", "PID-9002")


def _write(src: Path, name: str, label: str, *, patient: tuple[str, str], burned: bool = False,
           sop: str | None = None) -> Path:
    ds = pydicom.dcmread(pydicom_test_file(name))
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate, ds.AccessionNumber = "19790203", "ACC-77812"
    ds.SOPInstanceUID = sop or pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if burned:
        ds.BurnedInAnnotation = "YES"
    out = src / label / f"{ds.PatientID}-{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_prepare_dicom_writes_deidentified_images_and_a_patient_level_manifest(tmp_path, monkeypatch, capsys):
    from medviewer import audit

    monkeypatch.setenv("MEDVIEWER_AUDIT_DIR", str(tmp_path / "audit"))
    src = tmp_path / "src"
    jane, richard = ("Doe^Jane", "PID-4411"), ("Roe^Richard", "PID-9002")
    _write(src, "RG1_UNCR.dcm", "chest", patient=jane)
    _write(src, "CT_small.dcm", "other", patient=jane)
    _write(src, "MR_small.dcm", "other", patient=richard)
    _write(src, "RG3_UNCR.dcm", "other", patient=richard, burned=True)
    (src / "other" / "notes.txt").write_text("not an image")
    key = tmp_path / "site.key"
    key.write_bytes(b"a-site-key-of-enough-bytes")
    out = tmp_path / "out"
    assert main(["prepare", "dicom", str(src), "--out", str(out), "--size", "128", "--pseudonym-key", str(key),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Burned In Annotation is YES" in err and "notes.txt" in err
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert sorted(r["label"] for r in rows) == ["chest", "other", "other"]
    for r in rows:
        img = cv2.imread(str(out / r["path"]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (128, 128) and img.dtype.name == "uint8" and img.std() > 5  # real pixels
    # the same patient gets the same pseudonym in both label folders, another patient another one
    by_label = {(r["label"], r["path"].split("/")[1].split("_")[0]) for r in rows}
    pids = {r["patient_id"] for r in rows}
    assert len(pids) == 2 and all(p.startswith("P") and len(p) == 16 for p in pids)
    assert {p for _, p in by_label} == pids
    # nothing identifying anywhere in what was written (file names, manifest, prepare.json, PNG bytes)
    for f in out.rglob("*"):
        assert not any(s.lower() in f.name.lower() for s in PHI)
        if f.is_file():
            data = f.read_bytes()
            assert not any(s.encode() in data for s in PHI), f
    info = json.loads((out / "prepare.json").read_text())
    assert info["images"] == 3 and info["patients"] == 2 and len(info["skipped"]) == 2
    # usable for training: a patient-level split keeps Jane's two images together
    index = discover(out / "manifest.csv")
    parts = split_by_patient(index, 0.5, 0.0, 0)
    groups = [{index.samples[i].patient_id for i in parts[k]} for k in ("train", "val")]
    assert not groups[0] & groups[1]
    # a keyed run is reproducible
    again = tmp_path / "again"
    assert main(["prepare", "dicom", str(src), "--out", str(again), "--size", "128", "--pseudonym-key", str(key),
                 "--no-progress"]) == 0
    assert sorted(r["path"] for r in csv.DictReader((again / "manifest.csv").open())) == sorted(r["path"] for r in rows)
    rec = [r for r in audit.read() if r["action"] == "de-identified"][-1]
    assert rec["detail"]["purpose"] == "training data" and rec["detail"]["instances"] == 3
    # refused: a non-empty output folder, a source without label folders
    capsys.readouterr()
    assert main(["prepare", "dicom", str(src), "--out", str(out), "--no-progress"]) != 0
    assert "not empty" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", "dicom", str(empty), "--out", str(tmp_path / "o2"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "no readable DICOM image" in err and err.count("\n") == 1 and "Traceback" not in err
