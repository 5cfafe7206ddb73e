"""Model card schema v1: what training writes and the app accepts (medviewer.inference.card)."""

from __future__ import annotations

import json

import pytest
from onnx_models import card_for

from medviewer.errors import ModelPackageError
from medviewer.inference.card import ModelCard, Task, load_card, save_card, sha256_file

SHA = "0" * 64


def _write(tmp_path, data) -> object:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_card_round_trips_through_json(tmp_path):
    card = card_for(SHA)
    save_card(card, tmp_path)
    back = load_card(tmp_path)  # a package directory works as well as the file
    assert back == card
    assert back.positive_labels == ["PNEUMONIA"]
    assert back.operating_point("PNEUMONIA").threshold == 0.5
    assert back.operating_point("NORMAL") is None


def test_missing_field_names_the_field(tmp_path):
    data = json.loads(card_for(SHA).model_dump_json())
    del data["labels"]
    with pytest.raises(ModelPackageError, match=r"invalid model card: labels: Field required"):
        load_card(_write(tmp_path, data))


def test_nested_error_names_the_path(tmp_path):
    data = json.loads(card_for(SHA).model_dump_json())
    data["input"]["height"] = 0
    with pytest.raises(ModelPackageError, match=r"input\.height"):
        load_card(_write(tmp_path, data))


def test_unknown_field_is_rejected(tmp_path):
    data = json.loads(card_for(SHA).model_dump_json())
    data["labelz"] = ["x"]
    with pytest.raises(ModelPackageError, match="labelz"):
        load_card(_write(tmp_path, data))


def test_bad_json_and_missing_file_are_one_line(tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelPackageError, match="not valid JSON") as info:
        load_card(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelPackageError, match="model.json not found"):
        load_card(tmp_path / "nowhere")


def test_future_schema_version_is_refused(tmp_path):
    data = json.loads(card_for(SHA).model_dump_json())
    data["schema_version"] = 4
    with pytest.raises(ModelPackageError, match="schema_version 4 is not supported"):
        load_card(_write(tmp_path, data))


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": ["A", "A"]}, "labels must be unique"),
    ({"negative_label": "OTHER"}, "negative_label 'OTHER' is not one of labels"),
    ({"thresholds": {"EFFUSION": 0.3}}, "operating point for unknown label 'EFFUSION'"),
    ({"sha256": "XYZ"}, "sha256"),
    ({"name": "has space"}, "name"),
])
def test_inconsistent_cards_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        card_for(change.pop("sha256", SHA), **change)


def test_multilabel_task_and_json_schema():
    card = card_for(SHA, task=Task.MULTILABEL, negative_label=None, labels=("A", "B", "C"), thresholds={"B": 0.2})
    assert card.positive_labels == ["A", "B", "C"]
    schema = ModelCard.json_schema()
    assert "sha256" in schema["required"] and "labels" in schema["required"]


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "blob"
    p.write_bytes(b"x" * (3 << 20) + b"tail")
    assert sha256_file(p, chunk=1 << 16) == hashlib.sha256(p.read_bytes()).hexdigest()
