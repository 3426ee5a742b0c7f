"""The model card: a bad or missing file is one clear error naming the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cards import make_card
from spa_service.card import load_card, read_labels, write_card
from spa_service.errors import ModelLoadError


def make_model_dir(tmp_path: Path) -> Path:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really onnx, the card check does not parse it")
    write_card(make_card(onnx, labels=["a", "b", "c"]), tmp_path)
    return tmp_path


def edit_card(model_dir: Path, **changes) -> None:
    path = model_dir / "model.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_round_trip(tmp_path: Path) -> None:
    card, onnx = load_card(make_model_dir(tmp_path))
    assert card.labels == ["a", "b", "c"] and onnx.name == "model.onnx"
    assert "onnx_sha256" not in card.public() and card.public()["num_classes"] == 3


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_card(tmp_path / "nowhere")


def test_missing_card(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.json.*no model card"):
        load_card(tmp_path)


def test_card_not_json(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not readable JSON"):
        load_card(tmp_path)


def test_unknown_schema_version(tmp_path: Path) -> None:
    edit_card(make_model_dir(tmp_path), schema_version=99)
    with pytest.raises(ModelLoadError, match="schema_version 99 is not supported"):
        load_card(tmp_path)


def test_labels_must_match_classes(tmp_path: Path) -> None:
    edit_card(make_model_dir(tmp_path), labels=["a"])
    with pytest.raises(ModelLoadError, match="1 labels for num_classes=3"):
        load_card(tmp_path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = make_model_dir(tmp_path) / "model.json"
    raw = json.loads(path.read_text())
    del raw["input_size"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="input_size: Field required"):
        load_card(tmp_path)


def test_missing_onnx(tmp_path: Path) -> None:
    (make_model_dir(tmp_path) / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match="ONNX file named by the card is missing"):
        load_card(tmp_path)


def test_sha256_mismatch(tmp_path: Path) -> None:
    (make_model_dir(tmp_path) / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelLoadError, match="does not match the card"):
        load_card(tmp_path)


def test_read_labels_accepts_cub_classes_txt(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n\n")
    assert read_labels(path) == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    path.write_text("cat\ndog house\n")
    assert read_labels(path) == ["cat", "dog house"]
