"""Model packages: validation (hash, graph vs card), discovery and import (medviewer.inference)."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx_models import cam_model, make_package

from medviewer.errors import ModelPackageError
from medviewer.inference import package as package_mod
from medviewer.inference import registry
from medviewer.inference.card import load_card, save_card, sha256_file
from medviewer.inference.package import ModelPackage


def test_valid_package_loads(tmp_path):
    d = make_package(tmp_path / "m", height=48, width=80)
    pkg = ModelPackage.load(d / "model.json")  # the card's path works too
    assert pkg.path == d.resolve() and pkg.onnx_path == d.resolve() / "model.onnx"
    assert pkg.card.input.height == 48 and pkg.feature_shape == (48, 80)
    assert pkg.sha256 == sha256_file(d / "model.onnx")


def test_wrong_hash_is_a_clear_error(tmp_path):
    d = make_package(tmp_path / "m")
    card = load_card(d)
    save_card(card.model_copy(update={"sha256": "ab" * 32}), d)
    with pytest.raises(ModelPackageError, match=r"model.onnx SHA-256 [0-9a-f]{12}\.\.\. does not match") as info:
        ModelPackage.load(d)
    assert "\n" not in str(info.value) and str(d.resolve()) in str(info.value)


def test_changed_weights_are_detected(tmp_path):
    d = make_package(tmp_path / "m")
    ModelPackage.load(d)
    onnx.save(cam_model(bias=[0.0, 3.0]), d / "model.onnx")  # same graph, other weights, card unchanged
    with pytest.raises(ModelPackageError, match="SHA-256"):
        ModelPackage.load(d)


def test_missing_field_is_a_clear_error(tmp_path):
    d = make_package(tmp_path / "m")
    data = json.loads((d / "model.json").read_text())
    del data["operating_points"][0]["threshold"]
    (d / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match=r"operating_points\.0\.threshold: Field required"):
        ModelPackage.load(d)


@pytest.mark.parametrize(("model_kw", "card_kw", "message"), [
    ({"input_name": "pixels"}, {}, r"graph inputs \['pixels'\] do not match the card's single input 'image'"),
    ({"height": 32}, {"height": 64}, r"does not match the card's height 64"),
    ({"channels": 3}, {"channels": 1}, r"does not match the card's channels 1"),
    ({"k": 3}, {}, r"graph output 'logits' has 3 classes but the card lists 2 labels"),
    ({"cam_name": "heatmap"}, {}, r"graph has no output 'cam'"),
    ({"logits_name": "scores"}, {}, r"graph has no output 'logits'"),
])
def test_graph_card_mismatch_is_a_clear_error(tmp_path, model_kw, card_kw, message):
    d = make_package(tmp_path / "m", model=cam_model(**model_kw), **card_kw)
    with pytest.raises(ModelPackageError, match=message) as info:
        ModelPackage.load(d)
    assert "\n" not in str(info.value)


def test_not_an_onnx_file(tmp_path):
    d = make_package(tmp_path / "m")
    (d / "model.onnx").write_bytes(b"this is not a protobuf")
    save_card(load_card(d).model_copy(update={"sha256": sha256_file(d / "model.onnx")}), d)
    with pytest.raises(ModelPackageError, match="model.onnx is not a loadable ONNX model"):
        ModelPackage.load(d)


def test_missing_onnx_and_missing_dir(tmp_path):
    d = make_package(tmp_path / "m")
    (d / "model.onnx").unlink()
    with pytest.raises(ModelPackageError, match="model.onnx not found"):
        ModelPackage.load(d)
    with pytest.raises(ModelPackageError, match="no such model package"):
        ModelPackage.load(tmp_path / "absent")


def test_load_is_cached_until_files_change(tmp_path, monkeypatch):
    d = make_package(tmp_path / "m")
    calls = []
    real = package_mod.check_graph
    monkeypatch.setattr(package_mod, "check_graph", lambda *a: calls.append(1) or real(*a))
    a = ModelPackage.load(d)
    b = ModelPackage.load(d)
    assert a is b and len(calls) == 1


def test_discovery_builtin_user_and_env(model_dirs, tmp_path, monkeypatch):
    builtin, user = model_dirs
    make_package(builtin / registry.DEFAULT_MODEL_NAME, name=registry.DEFAULT_MODEL_NAME)
    make_package(user / "mine", name="mine")
    make_package(tmp_path / "extra" / "other", name="other")
    broken = make_package(user / "broken", name="broken")
    (broken / "model.onnx").write_bytes(b"junk")
    monkeypatch.setenv(registry.MODEL_PATH_ENV, str(tmp_path / "extra"))
    found, bad = registry.scan_models()
    assert [(m.name, m.source) for m in found] == [
        (registry.DEFAULT_MODEL_NAME, "builtin"), ("mine", "user"), ("other", "env")]
    assert [(b.path.name, b.source) for b in bad] == [("broken", "user")] and "SHA-256" in bad[0].reason
    assert registry.default_model().name == registry.DEFAULT_MODEL_NAME
    assert registry.resolve_model(None).source == "builtin"
    assert registry.resolve_model("mine").path == (user / "mine").resolve()
    assert registry.resolve_model(str(user / "mine")).source == "path"
    with pytest.raises(ModelPackageError, match="SHA-256"):  # a broken package named explicitly says why
        registry.resolve_model("broken")
    odd = make_package(user / "folder-name", name="card-name")
    (odd / "model.onnx").write_bytes(b"junk")
    with pytest.raises(ModelPackageError, match="SHA-256"):  # found by its card's name, still says why
        registry.resolve_model("card-name")
    with pytest.raises(ModelPackageError, match=r"no model named 'nope' \(installed: mine, other, pneumonia-cxr\)"):
        registry.resolve_model("nope")


def test_default_model_missing_says_what_to_do(model_dirs):
    with pytest.raises(ModelPackageError, match="default model 'pneumonia-cxr' is not installed"):
        registry.default_model()


def test_import_copies_into_user_dir(model_dirs, tmp_path):
    builtin, user = model_dirs
    src = make_package(tmp_path / "src", name="imported")
    (src / "README.md").write_text("# card\n")
    (src / "plots").mkdir()
    (src / "plots" / "roc.png").write_bytes(b"\x89PNG")
    pkg = registry.import_model(src)
    assert pkg.source == "user" and pkg.path == (user / "imported").resolve()
    assert pkg.readme_path is not None and [p.name for p in pkg.plots] == ["roc.png"]
    assert registry.resolve_model("imported").path == pkg.path
    with pytest.raises(ModelPackageError, match="already installed"):
        registry.import_model(src)
    assert registry.import_model(src, overwrite=True).path == pkg.path
    make_package(builtin / "shadow", name="shadow")
    with pytest.raises(ModelPackageError, match="name of a built-in model"):
        registry.import_model(make_package(tmp_path / "shadow", name="shadow"))


def test_import_refuses_invalid_package(model_dirs, tmp_path):
    src = make_package(tmp_path / "src", name="bad")
    (src / "model.onnx").write_bytes(b"junk")
    with pytest.raises(ModelPackageError, match="SHA-256"):
        registry.import_model(src)
    assert not (model_dirs[1] / "bad").exists()
