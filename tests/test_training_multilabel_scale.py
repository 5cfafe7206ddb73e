"""The scale-out data path: streaming images from disk trains exactly what the in-memory cache trains
(single-label and multi-label), and distributed multi-label training under torchrun (2 CPU processes)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA

pytest.importorskip("torch")

from training.cli import main  # noqa: E402

NIH = SHARED_DATA / "nih-cxr14-64" / "labels.csv"


def _log(run):
    return [(r["epoch"], r["train_loss"], r["val_loss"], r["val_auroc"]) for r in csv.DictReader(open(run / "log.csv"))]


def test_streamed_multilabel_run_equals_cached_run(tmp_path):
    if not NIH.is_file():
        pytest.skip(f"{NIH} not found (../shared/data is absent)")
    common = ["fit", "--task", "multilabel", "--data", str(NIH), "--input-size", "32", "--model", "compact-tiny",
              "--limit", "160", "--epochs", "2", "--bootstrap", "0", "--threads", "1", "--no-progress", "--workers", "1"]
    assert main([*common, "--loader", "memory", "--out", str(tmp_path / "mem")]) == 0
    assert main([*common, "--loader", "stream", "--out", str(tmp_path / "str")]) == 0
    assert _log(tmp_path / "mem") == _log(tmp_path / "str")
    m = json.loads((tmp_path / "str" / "metrics.json").read_text())
    assert m["loader"] == "streamed" and m["train_images_per_s"] > 0
    assert json.loads((tmp_path / "mem" / "metrics.json").read_text())["loader"] == "in-memory"


def test_streamed_single_label_run_equals_cached_run(kermany_dir, tmp_path):
    common = ["fit", "--data", str(kermany_dir), "--input-size", "32", "--model", "compact-tiny", "--limit", "120",
              "--epochs", "2", "--bootstrap", "0", "--threads", "1", "--no-progress"]
    assert main([*common, "--loader", "memory", "--out", str(tmp_path / "mem")]) == 0
    assert main([*common, "--loader", "stream", "--out", str(tmp_path / "str")]) == 0
    assert _log(tmp_path / "mem") == _log(tmp_path / "str")
    a = json.loads((tmp_path / "mem" / "metrics.json").read_text())["validation"]
    b = json.loads((tmp_path / "str" / "metrics.json").read_text())["validation"]
    assert a["auroc"] == b["auroc"] and a["confusion_matrix"] == b["confusion_matrix"]


def test_ddp_two_process_multilabel_with_plateau_schedule(tmp_path):
    if not NIH.is_file():
        pytest.skip(f"{NIH} not found (../shared/data is absent)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training",
           "fit", "--task", "multilabel", "--data", str(NIH), "--out", str(tmp_path / "run"), "--model",
           "compact-tiny", "--input-size", "32", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
           "--no-progress", "--bootstrap", "0", "--limit", "160", "--optimizer", "adam", "--schedule", "plateau",
           "--warmup-epochs", "0", "--loader", "stream"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "world 2, streamed loader" in (tmp_path / "run" / "train.log").read_text()
    assert len(_log(tmp_path / "run")) == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["task"] == "multilabel"
