"""spa-quantize on every SPA architecture (random weights, 64 x 64 input, so that the big networks export and
calibrate in seconds): the trunk runs in int8, what stays float is what the recipe says, and the card's share of
int8 multiply-adds is the one counted here from the PyTorch modules.

The oracles are the test's own: which Convs are the trunk comes from the architectures' module names (not from
walking the graph, which is how spa-quantize finds the head), the multiply-adds from PyTorch forward hooks, and
what runs in int8 from the DequantizeLinear nodes feeding each Conv and from the graph onnxruntime runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from spa_export.nets import build_model
from spa_export.nets.efficientnet_lite0 import FEATURE_BLOCKS
from spa_export.quantize import (
    Floors,
    QuantizeError,
    Source,
    folder_images,
    make_variant,
    recipe_for,
)
from spa_export.to_onnx import export_model
from spa_service.card import load_card

SIZE = (64, 64)
CLASSES = 5
REPORT_ONLY = Floors(min_top1=0.0, min_box_iou_ge_0_9=0.0, max_heatmap_diff_p99=1.0)  # random weights

# Each network's head (what computes class_map after the feature blocks) and its classifier (the Conv that
# writes class_map), from the architectures' definitions in spa_export.nets: as PyTorch module names and as the
# ONNX node names the exporter gives their Convs.
LITE0_HEAD = [f"_blocks.{i}" for i in range(max(FEATURE_BLOCKS) + 1, 16)] + ["_conv_head"]
HEAD_MODULES = {"vgg16": ("cls.",), "inceptionv3": ("cls_fc",), "tiny": ("cls.",),
                "efficientnet_lite0": tuple(f"{m}." for m in LITE0_HEAD[:-1]) + ("_conv_head", "_fc")}
HEAD_NODES = {"vgg16": ("/cls/",), "inceptionv3": ("/cls_fc",), "tiny": ("/cls/",),
              "efficientnet_lite0": tuple(f"/{m}/" for m in LITE0_HEAD)}
CLASSIFIER_MODULE = {"vgg16": "cls.4", "inceptionv3": "cls_fc8", "tiny": "cls.2", "efficientnet_lite0": "_fc"}
CLASSIFIER_NODE = {"vgg16": "/cls/cls.4/Conv", "inceptionv3": "/cls_fc8/Conv", "tiny": "/cls/cls.2/Conv",
                   "efficientnet_lite0": "/Conv"}


def conv_macs(model: torch.nn.Module) -> dict[str, int]:
    """Multiply-adds per image of each Conv2d module at SIZE, by module name; EfficientNet-Lite0's classifier `_fc`
    runs over the map with F.conv2d, as a 1 x 1 Conv: positions x classes x features."""
    macs: dict[str, int] = {}

    def hook(name: str):
        def record(conv: torch.nn.Conv2d, _inputs, output: torch.Tensor) -> None:
            macs[name] = output[0].numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        class_map, _, _ = model(torch.zeros(1, 3, *SIZE))
    for handle in handles:
        handle.remove()
    if hasattr(model, "_fc"):
        macs["_fc"] = class_map[0].numel() * model._fc.in_features
    return macs


def stays_float(arch: str, name: str, float_head: bool, *, node: bool) -> bool:
    """Whether the recipe keeps this Conv (a module name, or an ONNX node name when `node`) in float."""
    head, classifier = (HEAD_NODES, CLASSIFIER_NODE) if node else (HEAD_MODULES, CLASSIFIER_MODULE)
    return name == classifier[arch] or (float_head and name.startswith(head[arch]))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """Ten smooth random colour fields as JPEGs: enough to calibrate and to run the agreement."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(10):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((96, 80), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    return Source(f"folder {folder}", folder_images(folder))


def exported(arch: str, out: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, CLASSES).eval()
    export_model(model, arch=arch, out_dir=out, input_size=SIZE, name=f"{arch}-small")
    return model


@pytest.mark.parametrize("arch", ["vgg16", "inceptionv3", "efficientnet_lite0", "tiny"])
def test_the_trunk_runs_in_int8(arch: str, images: Source, tmp_path: Path) -> None:
    model = exported(arch, tmp_path / "fp32")
    card, _ = make_variant(tmp_path / "fp32", tmp_path / "int8", "int8", images, calibration_images=6,
                           held_out_images=4, floors=REPORT_ONLY)
    recipe = recipe_for(arch)
    assert card.precision == "int8" and card.variant.recipe["float_head"] is recipe.float_head
    float_head = recipe.float_head
    int8 = onnx.load(str(load_card(tmp_path / "int8")[1]))
    producer = {out: node for node in int8.graph.node for out in node.output}
    integer = {t.name for t in int8.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    convs = [node for node in int8.graph.node if node.op_type == "Conv"]
    floats = {n.name for n in convs if stays_float(arch, n.name, float_head, node=True)}
    trunk = {n.name for n in convs if not n.name.startswith(HEAD_NODES[arch]) and n.name != CLASSIFIER_NODE[arch]}
    assert len(trunk - floats) >= 5, "the trunk's Convs are there, most of them quantized"

    # QDQ: a quantized Conv reads its input through DequantizeLinear and its weight from an int8 initializer.
    for conv in convs:
        data, weight = producer.get(conv.input[0]), producer.get(conv.input[1])
        quantized = (data is not None and data.op_type == "DequantizeLinear" and weight is not None
                     and weight.op_type == "DequantizeLinear" and weight.input[0] in integer)
        assert quantized == (conv.name not in floats), conv.name

    # What onnxruntime runs: those Convs fused into integer QLinearConv nodes (which keep their names).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(tmp_path / "int8" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    fused = {n.name for n in onnx.load(options.optimized_model_filepath).graph.node if n.op_type == "QLinearConv"}
    assert fused == {n.name for n in convs} - floats

    macs = conv_macs(model)
    int8_macs = sum(count for name, count in macs.items()
                    if not stays_float(arch, name, float_head, node=False))
    assert card.variant.int8_macs == pytest.approx(int8_macs / sum(macs.values()), abs=1e-12)
    assert card.variant.int8_macs >= Floors().min_int8_macs


def test_a_mostly_float_model_is_refused_whatever_force_says(images: Source, tmp_path: Path) -> None:
    """InceptionV3-SPA's head (two 3 x 3 Convs to 1024 channels on the 28 x 28 map) is most of its work: with it in
    float, int8 would not pay, and the card must not call the model int8."""
    model = exported("inceptionv3", tmp_path / "fp32")
    macs = conv_macs(model)
    head = sum(count for name, count in macs.items() if name.startswith(HEAD_MODULES["inceptionv3"]))
    share = 1 - head / sum(macs.values())
    assert share < 0.5
    with pytest.raises(QuantizeError, match=rf"only {100 * share:.1f}% of the multiply-adds run in int8, "
                                            r"under the floor of 50% \(--min-int8-macs\)"):
        make_variant(tmp_path / "fp32", tmp_path / "int8", "int8", images, calibration_images=6, held_out_images=4,
                     recipe=replace(recipe_for("inceptionv3"), float_head=True), floors=REPORT_ONLY, force=True)
    assert not (tmp_path / "int8" / "model.json").exists()
