"""spa-export: an SPA network -> DIR/model.onnx + DIR/model.json (the runtime's model card), checked against
PyTorch with onnxruntime before the card is written."""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import get_args

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from spa_service.argtypes import positive_int
from spa_service.card import CARD_FILE, PRESETS, Method, ModelCard, OutputNames, read_labels, sha256_of, write_card

from .checkpoints import CheckpointError, load_checkpoint
from .console import EXIT_FAILURE, EXIT_USAGE, ArgumentParser, fail, select_device, setup_logging
from .nets import ARCHS, build_model, normalisation

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
# The TorchScript exporter (dynamo=False), deliberately: it writes opset 17 natively with IR version 8, which
# every onnxruntime the runtime allows (>= 1.17) loads. torch 2.13's default dynamo exporter writes IR version 10
# (onnxruntime < 1.18 refuses it), reaches opset 17 only through a version conversion, and takes 2-4x longer;
# both give the same single-file graph with a symbolic batch axis and identical outputs here.
OPSET = 17
TRACE_BATCH = 2  # not 1: a size-1 dimension may be specialised by the tracer
VERIFY_BATCHES = (3, 1)  # both differ from TRACE_BATCH, so passing them proves the batch axis is dynamic
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| / (max - min of torch), per output


class ParityError(Exception):
    """onnxruntime's outputs differ from PyTorch's by more than PARITY_TOLERANCE."""


def export_model(model: nn.Module, *, arch: str, out_dir: Path, labels: list[str] | None = None,
                 preset: str = "cub", input_size: tuple[int, int] | None = None, name: str | None = None,
                 default_method: Method = "scg", verify: bool = True) -> ModelCard:
    """Write `out_dir/model.onnx` and, once it matches PyTorch (when `verify`), `out_dir/model.json`.

    `model` is left as it was (the export works on a CPU copy; the parity reference runs where the model is).
    Raises ParityError if the outputs differ, ValueError for labels or a preset that do not fit.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    num_classes = model.num_classes
    labels = list(labels) if labels is not None else [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} classes")
    size = tuple(input_size or model.input_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    (out_dir / CARD_FILE).unlink(missing_ok=True)  # a failed export must not leave an older card beside it

    map_size = _write_onnx(model, onnx_path, size)
    parity = verify_parity(model, onnx_path, size) if verify else {}
    chosen = PRESETS[preset]
    mean, std = normalisation(model)
    card = ModelCard(
        name=name or f"{arch}-spa", arch=arch, num_classes=num_classes, labels=labels, input_size=size,
        mean=mean, std=std, map_size=map_size, preset=preset, scg=chosen.scg,
        box_threshold=chosen.box_threshold, default_method=default_method, onnx_file=ONNX_FILE, onnx_sha256=sha256_of(onnx_path), parity=parity,
        tool_version=version("spa-localizer"), created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_card(card, out_dir)
    log.info("wrote %s and %s (%s, %d classes, input %dx%d, maps %dx%d)", onnx_path, out_dir / CARD_FILE,
             card.name, num_classes, *size, *map_size)
    return card


def _write_onnx(model: nn.Module, path: Path, input_size: tuple[int, int]) -> tuple[int, int]:
    """Export a CPU copy of `model` in eval mode; returns the (h, w) of its maps."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    io = OutputNames()
    outputs = [io.class_map, io.feat_a, io.feat_b]
    example = torch.zeros(TRACE_BATCH, 3, *input_size)
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation on every call; the choice is made above (OPSET).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(cpu_model, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[io.image], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in [io.image, *outputs]})
    proto = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ValueError(f"{path}: the exporter wrote external data; the model must be one self-contained file")
    onnx.checker.check_model(proto)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return (dims[2].dim_value, dims[3].dim_value)


def verify_parity(model: nn.Module, onnx_path: Path, input_size: tuple[int, int],
                  batches: Sequence[int] = VERIFY_BATCHES, seed: int = 0) -> dict[str, float]:
    """Run PyTorch and onnxruntime (CPU) on the same random images; returns per output the largest
    max |onnx - torch| / (max - min of torch). Raises ParityError above PARITY_TOLERANCE."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    io = OutputNames()
    names = [io.class_map, io.feat_a, io.feat_b]
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    parity = dict.fromkeys(names, 0.0)
    try:
        for batch in batches:
            images = torch.randn(batch, 3, *input_size, generator=generator)
            with torch.no_grad(), _exact_fp32(device):
                expected = [t.float().cpu().numpy() for t in model(images.to(device))]
            got = session.run(names, {io.image: images.numpy()})
            for name, ref, out in zip(names, expected, got, strict=True):
                if out.shape != ref.shape:
                    raise ParityError(f"{onnx_path}: {name} has shape {out.shape} from onnxruntime, "
                                      f"{ref.shape} from PyTorch (batch {batch})")
                parity[name] = max(parity[name], _relative_error(ref, out))
    finally:
        model.train(was_training)
    worst = max(parity, key=parity.get)
    if parity[worst] > PARITY_TOLERANCE:
        raise ParityError(f"{onnx_path}: onnxruntime differs from PyTorch on {worst} by {parity[worst]:.2e} of "
                          f"its range (tolerance {PARITY_TOLERANCE:.0e}); no model card written")
    log.info("parity (max |onnx - torch| / range) over batches %s: %s", list(batches),
             ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
    return parity


def _relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    spread = float(reference.max() - reference.min())
    return float(np.abs(other - reference).max()) / (spread if spread > 0 else 1.0)


@contextlib.contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """Turn TF32 off on CUDA while computing the reference: its ~1e-3 rounding would swamp the comparison."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="spa-export", description=__doc__)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="authors' checkpoint or a bare state_dict")
    source.add_argument("--random-init", action="store_true", help="export a freshly initialised model (demos, tests)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --random-init")
    parser.add_argument("--num-classes", type=positive_int, required=True)
    parser.add_argument("--large-feature-map", action="store_true",
                        help="wsolevaluation CAM networks (*_cam) trained with large_feature_map: stride 8, not 16")
    parser.add_argument("--labels", type=Path, help="class names, one per line (CUB classes.txt accepted)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cub", help="SCG parameters and box thresholds")
    parser.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: the architecture's)")
    parser.add_argument("--name", help="model name in the card (default: <arch>-spa)")
    parser.add_argument("--default-method", choices=get_args(Method), default="scg",
                        help="the method the service uses when a request names none (default %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the PyTorch reference runs for the parity check")
    parser.add_argument("--out", type=Path, required=True, help="directory for model.onnx and model.json")
    return parser


def _card_name(args: argparse.Namespace) -> str:
    name = args.name or f"{args.arch}-spa"
    if args.random_init and "random-init" not in name:
        name += f"-random-init-seed{args.seed}"
    return name


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging()
    labels = None
    if args.labels is not None:
        try:
            labels = read_labels(args.labels)
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"spa-export: cannot read labels {args.labels} ({exc})", EXIT_USAGE)
        if len(labels) != args.num_classes:
            fail(f"spa-export: {args.labels} has {len(labels)} labels, --num-classes is {args.num_classes}", EXIT_USAGE)
    try:
        device = select_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if args.random_init:
        torch.manual_seed(args.seed)
    if args.large_feature_map and not getattr(ARCHS[args.arch], "has_large_feature_map", False):
        parser.error(f"--large-feature-map: {args.arch} has no such variant")
    model = build_model(args.arch, args.num_classes, **({"large_feature_map": True} if args.large_feature_map else {}))
    if args.checkpoint is not None:
        try:
            load_checkpoint(model, args.checkpoint)
        except CheckpointError as exc:
            fail(f"spa-export: {exc}", EXIT_USAGE)
    try:
        export_model(model.to(device), arch=args.arch, out_dir=args.out, labels=labels, preset=args.preset,
                     input_size=tuple(args.input_size) if args.input_size else None, name=_card_name(args),
                     default_method=args.default_method)
    except ParityError as exc:
        fail(f"spa-export: {exc}", EXIT_FAILURE)
    except ValueError as exc:  # an input size the architecture cannot take
        fail(f"spa-export: {exc}", EXIT_USAGE)
    except OSError as exc:
        fail(f"spa-export: cannot write {args.out} ({exc})", EXIT_FAILURE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
