"""Where an exported SPA graph does its work: the trunk and the head, multiply-adds per node, and which nodes
onnxruntime runs with integer kernels. spa-quantize uses these to choose what stays float and to say, in the
card, how much of the network an int8 variant really runs in int8."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference

from spa_service.card import OutputNames

# Fused QDQ groups as onnxruntime's CPU provider runs them (they keep the name of the node they replace).
INTEGER_OPS = frozenset({"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm"})


def ancestors(model: onnx.ModelProto, tensors: Iterable[str]) -> set[str]:
    """Names of the nodes that any of `tensors` is computed from (the walk stops at inputs and initializers)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    seen: set[str] = set()
    pending = list(tensors)
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        pending += [name for name in node.input if name]
    return seen


def head_nodes(model: onnx.ModelProto, io: OutputNames) -> list[str]:
    """The head: nodes that feed `class_map` and neither feature output, in graph order.

    What also feeds a feature output is the trunk. Walking back from `class_map` alone and stopping at the
    feature outputs is not enough: EfficientNet-Lite0's features are average-pooled side branches, so that
    walk runs past them through the whole trunk."""
    trunk = ancestors(model, [io.feat_a, io.feat_b])
    head = ancestors(model, [io.class_map]) - trunk
    return [node.name for node in model.graph.node if node.name in head]


def classifier_node(model: onnx.ModelProto, io: OutputNames) -> str:
    """The node that writes `class_map` (the 1 x 1 classifier Conv in every network here)."""
    (node,) = [node for node in model.graph.node if io.class_map in node.output]
    return node.name


def conv_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-adds per image of every Conv node, at the input size the graph declares.

    Every network spa-export writes does its multiply-adds in Conv nodes (a fully connected classifier runs as
    a 1 x 1 Conv over the map), so these are the network's multiply-adds."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
              for info in [*inferred.graph.value_info, *inferred.graph.output]}
    shapes |= {t.name: list(t.dims) for t in inferred.graph.initializer}
    macs = {}
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            out, weight = shapes[node.output[0]], shapes[node.input[1]]
            if not all(out[1:]) or not all(weight):
                raise ValueError(f"{node.name}: shape not known at export size (output {out}, weight {weight})")
            # output channels x positions, each a dot product over (input channels / group) x kernel
            macs[node.name] = int(np.prod(out[1:], dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    return macs


def integer_nodes(onnx_path: Path) -> set[str]:
    """Names of the nodes onnxruntime's CPU provider runs with integer kernels, read from the graph it runs
    after fusing each DequantizeLinear -> op -> QuantizeLinear group (a group it cannot fuse runs in float)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory(prefix="spa-quantize-fused-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        fused = onnx.load(options.optimized_model_filepath)
    return {node.name for node in fused.graph.node if node.op_type in INTEGER_OPS}


def int8_mac_share(fp32_model: onnx.ModelProto, int8_path: Path) -> float:
    """The fraction of `fp32_model`'s multiply-adds that its quantized version at `int8_path` runs in int8."""
    macs = conv_macs(fp32_model)
    integer = integer_nodes(int8_path)
    return sum(count for name, count in macs.items() if name in integer) / sum(macs.values())
