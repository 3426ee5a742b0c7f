"""The onnxruntime engine: providers, session options, and refusing models that do not fit the card."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.cards import make_card
from onnx import TensorProto, helper
from spa_service.card import ModelCard
from spa_service.errors import ModelLoadError
from spa_service.pipeline import engine as engine_module
from spa_service.pipeline.engine import (
    CudaOptions,
    Engine,
    available_cores,
    choose_providers,
    execution_providers,
    session_options,
    warmup_batch_sizes,
)
from spa_service.settings import Settings

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


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
    assert engine.providers == [CPU] and engine.provider == CPU and not engine.on_gpu
    assert not engine.cuda_fallback


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
    assert choose_providers("cpu") == [(CPU, {})]
    assert choose_providers("auto")[-1] == (CPU, {})
    if CUDA not in ort.get_available_providers():
        assert choose_providers("auto") == [(CPU, {})]
        with pytest.raises(ModelLoadError, match="providers=cuda"):
            choose_providers("cuda")


def test_cuda_provider_options_by_default() -> None:
    providers = execution_providers("auto", [CUDA, CPU], CudaOptions())
    assert providers == [
        (
            CUDA,
            {
                "device_id": "0",
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "use_tf32": "0",
                "arena_extend_strategy": "kSameAsRequested",
            },
        ),
        (CPU, {}),
    ]
    assert execution_providers("cuda", [CUDA, CPU], CudaOptions()) == providers


def test_cuda_provider_options_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SPA_CUDA_DEVICE_ID": "2",
        "SPA_CUDNN_CONV_ALGO_SEARCH": "heuristic",
        "SPA_USE_TF32": "true",
        "SPA_GPU_MEM_LIMIT_MB": "1536",
        "SPA_GPU_ARENA_EXTEND_STRATEGY": "next_power_of_two",
    }.items():
        monkeypatch.setenv(name, value)
    ((name, options), cpu) = execution_providers("auto", [CUDA, CPU], CudaOptions.from_settings(Settings()))
    assert name == CUDA and cpu == (CPU, {})
    assert options == {
        "device_id": "2",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "1",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "gpu_mem_limit": str(1536 * 2**20),
    }


def test_cpu_choice_ignores_cuda_and_cuda_needs_the_provider() -> None:
    assert execution_providers("cpu", [CUDA, CPU], CudaOptions(use_tf32=True)) == [(CPU, {})]
    assert execution_providers("auto", [CPU], CudaOptions()) == [(CPU, {})]
    with pytest.raises(ModelLoadError, match=r"providers=cuda but onnxruntime offers only \['CPUExecutionProvider'\]"):
        execution_providers("cuda", [CPU], CudaOptions())


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_cuda_that_cannot_start_falls_back_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # onnxruntime is told CUDA is there; the session then cannot start it (no GPU here) and runs on CPU.
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider that may really start")
    preloaded = []
    monkeypatch.setattr(engine_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(engine_module, "_preload_cuda_libraries", lambda: preloaded.append(True))
    path = pooled_graph(tmp_path / "m.onnx", 5, ("class_map", "feat_a", "feat_b"))
    with caplog.at_level(logging.WARNING, logger="spa_service.pipeline.engine"):
        engine = Engine(path, card_for(path, 5), providers="auto", intra_op_threads=1)
    assert preloaded == [True]
    assert engine.cuda_fallback and engine.provider == CPU and not engine.outputs_on_gpu
    assert any("CUDA provider could not start" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert engine.run(np.zeros((1, 3, 16, 16), np.float32)).class_map.shape == (1, 5, 4, 4)
    # Asked for CUDA outright, the same failure refuses to start instead.
    with pytest.raises(ModelLoadError, match="providers=cuda but the CUDA provider could not start"):
        Engine(path, card_for(path, 5), providers="cuda", intra_op_threads=1)


def test_engine_from_settings(tmp_path: Path) -> None:
    path = pooled_graph(tmp_path / "m.onnx", 5, ("class_map", "feat_a", "feat_b"))
    engine = Engine.from_settings(path, card_for(path, 5), Settings(providers="cpu", intra_op_threads=1))
    assert engine.provider == CPU and engine.session.get_session_options().intra_op_num_threads == 1


def test_warmup_batch_sizes() -> None:
    assert warmup_batch_sizes(4, on_gpu=True) == [4, 3, 2, 1]
    assert warmup_batch_sizes(1, on_gpu=True) == [1]
    assert warmup_batch_sizes(32, on_gpu=False) == [1]


def test_session_options_are_deliberate() -> None:
    options = session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    within = session_options(1, spinning="within-calls")
    assert within.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert within.get_session_config_entry("session.force_spinning_stop") == "1"
    always = session_options(1, spinning="always")
    assert always.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(RuntimeError, match="does not have"):
        always.get_session_config_entry("session.force_spinning_stop")


def test_spinning_follows_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = pooled_graph(tmp_path / "m.onnx", 5, ("class_map", "feat_a", "feat_b"))
    for value, entry in (("always", "1"), ("never", "0")):
        monkeypatch.setenv("SPA_ORT_SPINNING", value)
        engine = Engine.from_settings(path, card_for(path, 5), Settings(providers="cpu", intra_op_threads=1))
        assert engine.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == entry


@pytest.mark.parametrize(
    ("cpu_max", "cap"), [("150000 100000", 2), ("50000 100000", 1), ("400000 100000", 4), ("max 100000", None)]
)
def test_available_cores_follow_the_affinity_capped_by_the_cgroup_quota(tmp_path, cpu_max: str, cap) -> None:
    affinity = len(os.sched_getaffinity(0))
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n")
    assert available_cores(path) == (affinity if cap is None else min(affinity, cap))
    assert available_cores(tmp_path / "missing") == affinity  # no cgroup v2 file: the affinity alone
    path.write_text("garbage")
    assert available_cores(path) == affinity
