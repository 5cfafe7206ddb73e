"""``medviewer models list|show|validate|import`` on real packages in isolated model folders."""

from __future__ import annotations

import json

import pytest
from onnx_models import make_package

from medviewer.cli import main
from medviewer.inference import registry


@pytest.fixture
def dirs(model_dirs):
    """Isolated model directories with a (test) default model built in."""
    make_package(model_dirs[0] / registry.DEFAULT_MODEL_NAME, name=registry.DEFAULT_MODEL_NAME)
    return model_dirs


def test_list_marks_default_and_reports_invalid(dirs, capsys):
    builtin, _ = dirs
    bad = make_package(builtin / "broken", name="broken")
    (bad / "model.json").write_text("{}")
    assert main(["models", "list"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"* {registry.DEFAULT_MODEL_NAME}") and "NORMAL, PNEUMONIA" in out
    assert "invalid model package" in err and "broken" in err
    assert main(["models", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in doc["models"]] == [registry.DEFAULT_MODEL_NAME] and doc["models"][0]["default"]
    assert doc["invalid"][0]["reason"].startswith("invalid model card")


def test_show_validate_import(dirs, tmp_path, capsys):
    assert main(["models", "show", registry.DEFAULT_MODEL_NAME]) == 0
    out = capsys.readouterr().out
    assert "intended use: tests only" in out and "PNEUMONIA: p >= 0.5000" in out and "sha256:" in out
    assert main(["models", "show", registry.DEFAULT_MODEL_NAME, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == registry.DEFAULT_MODEL_NAME
    src = make_package(tmp_path / "new", name="new-model")
    assert main(["models", "validate", str(src)]) == 0
    assert capsys.readouterr().out.startswith("OK new-model 0.0.1")
    assert main(["models", "import", str(src)]) == 0
    assert (dirs[1] / "new-model" / "model.onnx").is_file()
    capsys.readouterr()
    assert main(["models", "import", str(src)]) == 1
    assert "already installed" in capsys.readouterr().err
    assert main(["models", "import", str(src), "--force"]) == 0


def test_validate_failure_is_exit_1_one_line(tmp_path, capsys):
    src = make_package(tmp_path / "m", height=32)
    data = json.loads((src / "model.json").read_text())
    data["input"]["height"] = 48
    (src / "model.json").write_text(json.dumps(data))
    assert main(["models", "validate", str(src)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not match the card's height 48" in err


def test_show_unknown_name(dirs, capsys):
    assert main(["models", "show", "nope"]) == 1
    assert "no model named 'nope'" in capsys.readouterr().err


def test_import_refuses_a_symlink_and_copies_nothing(dirs, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any package")
    src = make_package(tmp_path / "linked", name="linked-model")
    (src / "README.md").symlink_to(secret)
    assert main(["models", "import", str(src)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "README.md" in err and "symbolic link" in err
    assert not (dirs[1] / "linked-model").exists()
    assert not dirs[1].exists() or not list(dirs[1].glob("*.importing"))


def test_import_refuses_a_fifo_without_blocking(dirs, tmp_path, capsys):
    import os
    import threading

    src = make_package(tmp_path / "fifo", name="fifo-model")
    (src / "plots").mkdir()
    (src / "plots" / "roc.png").write_bytes(b"\x89PNG not really")
    os.mkfifo(src / "plots" / "pipe.png")
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(main(["models", "import", str(src)])), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "models import blocked on a FIFO"
    assert result == [1]
    assert "pipe.png" in capsys.readouterr().err
    assert not (dirs[1] / "fifo-model").exists()


def test_import_copies_regular_files_of_plots(dirs, tmp_path):
    src = make_package(tmp_path / "plotted", name="plotted")
    (src / "plots" / "more").mkdir(parents=True)
    (src / "plots" / "roc.png").write_bytes(b"roc bytes")
    (src / "plots" / "more" / "pr.png").write_bytes(b"pr bytes")
    (src / "README.md").write_text("card")
    assert main(["models", "import", str(src)]) == 0
    dest = dirs[1] / "plotted"
    assert (dest / "plots" / "roc.png").read_bytes() == b"roc bytes"
    assert (dest / "plots" / "more" / "pr.png").read_bytes() == b"pr bytes"
    assert (dest / "README.md").read_text() == "card"
    assert (dest / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()


def test_import_of_a_very_long_name_is_one_line(dirs, tmp_path, capsys):
    name = "m" * 250
    src = make_package(tmp_path / "long", name=name)
    assert main(["models", "import", str(src)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "250 characters" in err and f"at most {registry.MAX_IMPORT_NAME}" in err
    ok = make_package(tmp_path / "ok", name="n" * registry.MAX_IMPORT_NAME)
    assert main(["models", "import", str(ok)]) == 0


def test_imported_default_model_is_the_default(model_dirs, tmp_path, capsys):
    """An install without the built-in model: importing a package of the default's name makes it the default
    for list, the registry and ``infer`` without --model."""
    from conftest import pydicom_test_file

    with pytest.raises(registry.ModelPackageError, match="default model .* is not installed"):
        registry.default_model()
    src = make_package(tmp_path / "pkg", name=registry.DEFAULT_MODEL_NAME)
    assert main(["models", "import", str(src)]) == 0
    assert registry.default_model().path == model_dirs[1] / registry.DEFAULT_MODEL_NAME
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().out.startswith(f"* {registry.DEFAULT_MODEL_NAME}")
    out = tmp_path / "out"
    assert main(["infer", str(pydicom_test_file("CT_small.dcm")), "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["path"] == str(model_dirs[1] / registry.DEFAULT_MODEL_NAME)
    assert len(doc["results"]) == 1 and not doc["results"][0].get("error")


def test_default_model_ignores_a_folder_of_that_name_in_the_working_directory(dirs, tmp_path, monkeypatch):
    decoy = make_package(tmp_path / registry.DEFAULT_MODEL_NAME, name="decoy")
    monkeypatch.chdir(tmp_path)
    assert decoy.is_dir()
    assert registry.default_model().path == dirs[0] / registry.DEFAULT_MODEL_NAME


def test_closed_pipe_is_quiet(tmp_path):
    """``medviewer models list --json | head -0``: the reader is gone before anything is written."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "medviewer", "models", "list", "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path)
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert proc.stderr == ""


def test_import_copies_every_file_a_schema_2_card_lists(dirs, tmp_path):
    import hashlib

    src = make_package(tmp_path / "v2", name="listed")
    (src / "extra").mkdir()
    (src / "extra" / "ood.npz").write_bytes(b"statistics")
    card = json.loads((src / "model.json").read_text())
    card["schema_version"] = 2
    card["files"] = {"model.onnx": card["sha256"],
                     "extra/ood.npz": hashlib.sha256(b"statistics").hexdigest()}
    (src / "model.json").write_text(json.dumps(card))
    assert main(["models", "validate", str(src)]) == 0
    assert main(["models", "import", str(src)]) == 0
    assert (dirs[1] / "listed" / "extra" / "ood.npz").read_bytes() == b"statistics"
    assert registry.resolve_model("listed").path == dirs[1] / "listed"
