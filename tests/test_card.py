"""The model card: a bad or missing file is one clear error naming the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cards import make_card
from spa_service.card import load_card, read_labels, sha256_of, write_card
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
    assert card.precision == "fp32" and card.variant is None


def test_public_is_the_whole_card_as_json(tmp_path: Path) -> None:
    card, onnx = load_card(make_model_dir(tmp_path))
    public = card.public()
    assert public == json.loads((tmp_path / "model.json").read_text())
    assert public["onnx_sha256"] == sha256_of(onnx) and public["onnx_file"] == "model.onnx"
    assert public["io"] == {"image": "image", "class_map": "class_map", "feat_a": "feat_a", "feat_b": "feat_b"}
    json.dumps(public)  # JSON types only (tuples became lists)


@pytest.mark.parametrize("name", ["/etc/passwd", "../model.onnx", "sub/../../model.onnx", "C:\\model.onnx",
                                  "..\\model.onnx", ""])
def test_onnx_file_must_stay_in_the_model_directory(tmp_path: Path, name: str) -> None:
    edit_card(make_model_dir(tmp_path), onnx_file=name)
    with pytest.raises(ModelLoadError, match=r"onnx_file: .*relative to the model directory"):
        load_card(tmp_path)


def test_onnx_file_in_a_subfolder_is_allowed(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path)
    (model_dir / "onnx").mkdir()
    (model_dir / "model.onnx").rename(model_dir / "onnx" / "model.onnx")
    edit_card(model_dir, onnx_file="onnx/model.onnx")
    assert load_card(model_dir)[1] == model_dir / "onnx" / "model.onnx"


def variant(calibration: dict | None) -> dict:
    agreement = dict(source="folder x", images=10, top1=1.0, top5_overlap=1.0, box_iou_mean=0.95,
                     box_iou_ge_0_9=0.9, box_iou_ge_0_5=1.0, heatmap_diff_mean=0.01, heatmap_diff_p99=0.05)
    return dict(reference_sha256="0" * 64, recipe={"format": "QDQ"}, calibration=calibration, agreement=agreement)


def test_int8_card_round_trip(tmp_path: Path) -> None:
    calibration = dict(source="folder x", images=8, method="MinMax", seed=0)
    edit_card(make_model_dir(tmp_path), precision="int8", variant=variant(calibration))
    card, _ = load_card(tmp_path)
    assert card.precision == "int8" and card.variant.calibration.images == 8
    assert card.public()["variant"]["agreement"]["top1"] == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precision": "int8"}, "needs a variant section exactly when it is not fp32"),
        ({"variant": variant(None)}, "needs a variant section exactly when it is not fp32"),
        ({"precision": "int8", "variant": variant(None)}, "must say how it was calibrated"),
        ({"precision": "int4"}, "precision: Input should be"),
    ],
)
def test_precision_and_variant_must_fit(tmp_path: Path, changes: dict, message: str) -> None:
    edit_card(make_model_dir(tmp_path), **changes)
    with pytest.raises(ModelLoadError, match=message):
        load_card(tmp_path)


def test_fp16_card_needs_no_calibration(tmp_path: Path) -> None:
    edit_card(make_model_dir(tmp_path), precision="fp16", variant=variant(None))
    assert load_card(tmp_path)[0].precision == "fp16"


def test_default_method_is_read_and_cards_without_it_serve_scg(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path)
    edit_card(model_dir, default_method="cam")
    assert load_card(model_dir)[0].public()["default_method"] == "cam"
    path = model_dir / "model.json"
    raw = json.loads(path.read_text())
    del raw["default_method"]
    path.write_text(json.dumps(raw))  # a card exported before the field existed
    assert load_card(model_dir)[0].default_method == "scg"
    edit_card(model_dir, default_method="gradcam")
    with pytest.raises(ModelLoadError, match="default_method: Input should be 'cam' or 'scg'"):
        load_card(model_dir)


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
