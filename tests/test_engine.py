"""The onnxruntime engine: providers, session options, and refusing models that do not fit the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.cards import make_card
from onnx import TensorProto, helper
from spa_service.card import ModelCard
from spa_service.engine import (
    Engine,
    available_cores,
    choose_providers,
    session_options,
)
from spa_service.errors import ModelLoadError


def pooled_graph(path: Path, num_classes: int, outputs: tuple[str, str, str]) -> Path:
    """A tiny real model: class map = 1x1 conv of a 4x average pool, features = pooled image."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])
    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [num_classes, 3, 1, 1], np.linspace(-1, 1, num_classes * 3).tolist()
    )
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["pooled", "w"], [outputs[0]]),
        helper.make_node("Relu", ["pooled"], [outputs[1]]),
        helper.make_node("Abs", ["pooled"], [outputs[2]]),
    ]
    outs = [
        helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["N", num_classes, 4, 4]),
        helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, ["N", 3, 4, 4]),
        helper.make_tensor_value_info(outputs[2], TensorProto.FLOAT, ["N", 3, 4, 4]),
    ]
    graph = helper.make_graph(nodes, "pooled", [image], outs, initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def card_for(path: Path, num_classes: int) -> ModelCard:
    return make_card(path, num_classes, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_runs_a_batch(tmp_path: Path) -> None:
    path = pooled_graph(tmp_path / "m.onnx", 5, ("class_map", "feat_a", "feat_b"))
    engine = Engine(path, card_for(path, 5), providers="cpu", intra_op_threads=1)
    batch = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = engine.run(batch)
    assert out.class_map.shape == (3, 5, 4, 4) and out.feat_a.shape == (3, 3, 4, 4)
    pooled = batch.reshape(3, 3, 4, 4, 4, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(out.feat_a, np.maximum(pooled, 0), atol=1e-6)
    assert engine.providers == ["CPUExecutionProvider"] and not engine.on_gpu


def test_output_names_must_match_card(tmp_path: Path) -> None:
    path = pooled_graph(tmp_path / "m.onnx", 5, ("logits", "feat_a", "feat_b"))
    with pytest.raises(ModelLoadError, match=r"outputs \['class_map'\] missing"):
        Engine(path, card_for(path, 5), providers="cpu")


def test_class_count_must_match_card(tmp_path: Path) -> None:
    path = pooled_graph(tmp_path / "m.onnx", 5, ("class_map", "feat_a", "feat_b"))
    card = card_for(path, 4)
    with pytest.raises(ModelLoadError, match="5 classes but the card says 4"):
        Engine(path, card, providers="cpu")


def test_garbage_onnx(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match=r"m\.onnx: onnxruntime cannot load it"):
        Engine(path, card_for(path, 5), providers="cpu")


def test_provider_choice_without_gpu() -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ModelLoadError, match="providers=cuda"):
            choose_providers("cuda")


def test_session_options_are_deliberate() -> None:
    options = session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert available_cores() >= 1
