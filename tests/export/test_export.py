"""spa-export: the ONNX file, the model card, parity with PyTorch, and one-line CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from spa_export import to_onnx
from spa_export.nets import build_model
from spa_export.to_onnx import ParityError, export_model
from spa_service.card import PRESETS, load_card, read_labels

CUB_CLASSES = Path(__file__).resolve().parents[1] / "data" / "cub200_classes.txt"
OUTPUTS = ["class_map", "feat_a", "feat_b"]


def _run_onnx(model_dir: Path, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(OUTPUTS, {"image": images})


def _assert_parity(model: torch.nn.Module, model_dir: Path, batch: int) -> None:
    images = torch.randn(batch, 3, *model.input_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = [t.numpy() for t in model.eval()(images)]
    for ref, got in zip(expected, _run_onnx(model_dir, images.numpy()), strict=True):
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() / (ref.max() - ref.min()) < 1e-4


def test_vgg16_card(vgg16_model_dir):
    card, onnx_path = load_card(vgg16_model_dir)  # also checks the sha256
    assert sorted(p.name for p in vgg16_model_dir.iterdir()) == ["model.json", "model.onnx"]  # one self-contained file
    assert card.arch == "vgg16" and card.num_classes == 200
    assert "random-init" in card.name
    assert card.labels == read_labels(CUB_CLASSES) and card.labels[0] == "001.Black_footed_Albatross"
    assert card.input_size == (224, 224) and card.map_size == (14, 14)
    assert card.mean == (0.485, 0.456, 0.406) and card.std == (0.229, 0.224, 0.225)
    assert card.preset == "cub" and card.scg == PRESETS["cub"].scg
    assert card.box_threshold == PRESETS["cub"].box_threshold
    assert set(card.parity) == set(OUTPUTS) and max(card.parity.values()) < 1e-4
    assert card.tool_version == version("spa-localizer")
    assert datetime.fromisoformat(card.created).utcoffset().total_seconds() == 0
    assert onnx_path.stat().st_size > 100e6


def test_vgg16_onnx_graph(vgg16_model_dir):
    proto = onnx.load(str(vgg16_model_dir / "model.onnx"), load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == OUTPUTS
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_vgg16_onnx_matches_the_seeded_model(vgg16_model_dir):
    torch.manual_seed(0)
    _assert_parity(build_model("vgg16", 200), vgg16_model_dir, batch=2)


def test_tiny_card_and_parity(random_tiny_model_dir):
    card, _ = load_card(random_tiny_model_dir)
    assert card.arch == "tiny" and card.input_size == (112, 112) and card.map_size == (14, 14)
    assert card.labels == [f"class_{i}" for i in range(10)]
    assert max(card.parity.values()) < 1e-4
    torch.manual_seed(0)
    _assert_parity(build_model("tiny", 10), random_tiny_model_dir, batch=5)


def test_inceptionv3_export(tmp_path):
    torch.manual_seed(0)
    model = build_model("inceptionv3", 20)
    card = export_model(model, arch="inceptionv3", out_dir=tmp_path, preset="ilsvrc")
    assert card.map_size == (28, 28) and card.input_size == (224, 224)
    assert card.name == "inceptionv3-spa"
    assert card.scg == PRESETS["ilsvrc"].scg and card.box_threshold == PRESETS["ilsvrc"].box_threshold
    assert set(card.parity) == set(OUTPUTS) and max(card.parity.values()) < 1e-4
    shapes = [o.shape for o in _run_onnx(tmp_path, np.zeros((2, 3, 224, 224), np.float32))]
    assert shapes == [(2, 20, 28, 28), (2, 288, 28, 28), (2, 768, 28, 28)]


def test_input_size_override(tmp_path):
    model = build_model("tiny", 3)
    card = export_model(model, arch="tiny", out_dir=tmp_path, input_size=(128, 96))
    assert card.input_size == (128, 96) and card.map_size == (16, 12)
    assert model.training  # the caller's model is left as it was


def test_parity_failure_writes_no_card(tmp_path, monkeypatch):
    export_model(build_model("tiny", 3), arch="tiny", out_dir=tmp_path)
    monkeypatch.setattr(to_onnx, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ParityError, match="differs from PyTorch on"):
        export_model(build_model("tiny", 3), arch="tiny", out_dir=tmp_path)
    assert not (tmp_path / "model.json").exists()  # not even the one from the earlier, good export


def test_export_model_rejects_wrong_labels_and_preset(tmp_path):
    with pytest.raises(ValueError, match="2 labels for a model with 3 classes"):
        export_model(build_model("tiny", 3), arch="tiny", out_dir=tmp_path, labels=["a", "b"])
    with pytest.raises(ValueError, match="unknown preset"):
        export_model(build_model("tiny", 3), arch="tiny", out_dir=tmp_path, preset="voc")


def test_cli_random_init_is_marked_and_reproducible(tmp_path):
    for name in ("a", "b"):
        assert to_onnx.main(["--arch", "tiny", "--random-init", "--seed", "3", "--num-classes", "4",
                             "--out", str(tmp_path / name)]) == 0
    card_a, _ = load_card(tmp_path / "a")
    card_b, _ = load_card(tmp_path / "b")
    assert card_a.name == "tiny-spa-random-init-seed3"
    assert card_a.onnx_sha256 == card_b.onnx_sha256
    assert to_onnx.main(["--arch", "tiny", "--random-init", "--num-classes", "4", "--name", "demo",
                         "--default-method", "cam", "--out", str(tmp_path / "c")]) == 0
    assert load_card(tmp_path / "c")[0].name == "demo-random-init-seed0"
    assert json.loads((tmp_path / "c" / "model.json").read_text())["default_method"] == "cam"
    assert json.loads((tmp_path / "a" / "model.json").read_text())["default_method"] == "scg"  # written, not implied


def test_cli_exports_a_checkpoint_with_labels(tmp_path):
    torch.manual_seed(1)
    model = build_model("tiny", 3)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 1},
               tmp_path / "ckpt.pth")
    (tmp_path / "classes.txt").write_text("1 001.cat\n2 002.dog\n3 003.bird\n")
    assert to_onnx.main(["--arch", "tiny", "--checkpoint", str(tmp_path / "ckpt.pth"), "--num-classes", "3",
                         "--labels", str(tmp_path / "classes.txt"), "--name", "pets", "--out",
                         str(tmp_path / "out")]) == 0
    card, _ = load_card(tmp_path / "out")
    assert card.name == "pets" and card.labels == ["001.cat", "002.dog", "003.bird"]
    _assert_parity(model, tmp_path / "out", batch=2)


@pytest.fixture
def ten_class_checkpoint(tmp_path) -> Path:
    path = tmp_path / "ten.pth"
    torch.save({"state_dict": build_model("tiny", 10).state_dict(), "epoch": 5}, path)
    return path


def _main_error(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        to_onnx.main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return info.value.code, err


@pytest.mark.parametrize(("case", "expected"), [
    ("arch", "invalid choice: 'resnet50'"),
    ("classes", "checkpoint has 10 classes"),
    ("garbage", "not a readable PyTorch checkpoint"),
    ("missing", "no such checkpoint file"),
    ("labels", "has 2 labels, --num-classes is 10"),
    ("both", "not allowed with argument"),
    ("neither", "one of the arguments --checkpoint --random-init is required"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, ten_class_checkpoint, case, expected):
    (tmp_path / "garbage.pth").write_text("hello")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    out = ["--out", str(tmp_path / "out")]
    argv = {
        "arch": ["--arch", "resnet50", "--random-init", "--num-classes", "10", *out],
        "classes": ["--arch", "tiny", "--checkpoint", str(ten_class_checkpoint), "--num-classes", "5", *out],
        "garbage": ["--arch", "tiny", "--checkpoint", str(tmp_path / "garbage.pth"), "--num-classes", "10", *out],
        "missing": ["--arch", "tiny", "--checkpoint", str(tmp_path / "absent.pth"), "--num-classes", "10", *out],
        "labels": ["--arch", "tiny", "--random-init", "--num-classes", "10", "--labels",
                   str(tmp_path / "labels.txt"), *out],
        "both": ["--arch", "tiny", "--random-init", "--checkpoint", str(ten_class_checkpoint),
                 "--num-classes", "10", *out],
        "neither": ["--arch", "tiny", "--num-classes", "10", *out],
    }[case]
    code, err = _main_error(capsys, argv)
    assert code == 2 and expected in err and err.startswith("spa-export")
    assert not (tmp_path / "out" / "model.json").exists()


def test_cli_parity_failure_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(to_onnx, "PARITY_TOLERANCE", -1.0)
    code, err = _main_error(capsys, ["--arch", "tiny", "--random-init", "--num-classes", "3",
                                     "--out", str(tmp_path)])
    assert code == 1 and "no model card written" in err


def test_cli_error_through_a_real_process(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "spa_export.to_onnx", "--arch", "vgg16", "--checkpoint",
                             str(garbage), "--num-classes", "200", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a readable PyTorch checkpoint" in result.stderr
