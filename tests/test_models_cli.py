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
