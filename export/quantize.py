"""spa-quantize: an fp32 model directory -> an int8 or fp16 one, whose card says how it was made and how closely
it agrees with the fp32 model on images not used to make it.

int8 is onnxruntime's static quantization, calibrated on the user's images; fp16 is onnxruntime's float16
conversion with float32 input and outputs. Both models then run the service's own pipeline (decode_image,
preprocess, Localizer: top-5, SCG, the card's box threshold, union boxes) on held-out images, and the card is
written only if the agreement clears the floors (FLOORS) or --force says to write it anyway. docs/precision.md
has the recipe measurements behind the defaults.
"""

from __future__ import annotations

import logging
import tempfile
from argparse import ArgumentTypeError
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16
from PIL import Image

from spa_service.argtypes import positive_int
from spa_service.pipeline.boxes import Box
from spa_service.card import (
    CARD_FILE, Agreement, Calibration, ModelCard, OutputNames, Precision, Variant, load_card, sha256_of, write_card,
)
from spa_service.pipeline.engine import Engine
from spa_service.errors import ImageError, ModelLoadError
from spa_service.offline.evaluation.datasets import DatasetError, open_dataset
from spa_service.pipeline.imaging import DecodedImage, decode_image
from spa_service.pipeline.preprocess import preprocess
from spa_service.pipeline.localize import Localization, Localizer, LocalizeOptions
from spa_service.settings import Settings

from .console import EXIT_USAGE, ArgumentParser, fail, setup_logging
from .onnx_graph import classifier_node, head_nodes, int8_mac_share

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
TOPK = 5
BATCH = 8
HISTOGRAM_BINS = 100_000  # |heatmap difference| lies in [0, 1]: the 99th percentile to 1e-5

CalibrationName = Literal["MinMax", "Entropy", "Percentile"]
_METHODS = {
    "MinMax": CalibrationMethod.MinMax,
    "Entropy": CalibrationMethod.Entropy,
    "Percentile": CalibrationMethod.Percentile,
}


class QuantizeError(Exception):
    """An input the command cannot use: a bad image source, an output directory that would overwrite fp32."""


@dataclass(frozen=True)
class Int8Recipe:
    """onnxruntime static quantization settings (docs/precision.md has the measurements behind them).

    `float_head`: the head (the nodes that feed `class_map` and neither feature output) stays float; without it
    the head is int8 except its classifier, the Conv that writes `class_map`, which always stays float (its
    8-bit output flips the top-1 class). Only nodes whose output is not quantized stay float: onnxruntime
    quantizes the weights of a float Conv between quantized tensors itself when it loads the model.
    """

    format: Literal["QDQ", "QOperator"] = "QDQ"
    per_channel: bool = True
    reduce_range: bool = True
    activations: Literal["uint8", "int8"] = "uint8"
    weights: Literal["int8", "uint8"] = "int8"
    method: CalibrationName = "MinMax"
    float_head: bool = True

    def card(self) -> dict[str, str | bool | list[str]]:
        return {"format": self.format, "per_channel": self.per_channel, "reduce_range": self.reduce_range,
                "activations": self.activations, "weights": self.weights, "float_head": self.float_head,
                "tool": f"onnxruntime.quantization {version('onnxruntime')}"}

    def float_nodes(self, model: onnx.ModelProto, io: OutputNames) -> list[str]:
        """The nodes of `model` this recipe leaves in float."""
        return head_nodes(model, io) if self.float_head else [classifier_node(model, io)]


# The recipe per architecture (card.arch), from the measurements in docs/precision.md. VGG16-SPA and
# InceptionV3-SPA: their heads are 15% and 63% of the multiply-adds, so only the classifier stays float. The
# demo network and EfficientNet-Lite0: 8-bit weights (uint8: onnxruntime's AVX2 kernels saturate u8 x s8 sums
# that reduce_range avoids by dropping a bit) agree best; Lite0's head quantizes at no cost in agreement.
RECIPES: dict[str, Int8Recipe] = {
    "vgg16": Int8Recipe(float_head=False),
    "inceptionv3": Int8Recipe(float_head=False),
    "tiny": Int8Recipe(reduce_range=False, weights="uint8"),
    "efficientnet_lite0": Int8Recipe(reduce_range=False, weights="uint8", float_head=False),
}


def recipe_for(arch: str) -> Int8Recipe:
    """The int8 recipe for an architecture: its entry in RECIPES, else Int8Recipe()."""
    return RECIPES.get(arch, Int8Recipe())


@dataclass(frozen=True)
class Floors:
    """The least agreement a variant needs for its card to be written, and the least share of its multiply-adds
    an int8 variant must run in int8 (docs/precision.md)."""

    min_top1: float = 0.99
    min_box_iou_ge_0_9: float = 0.97
    max_heatmap_diff_p99: float = 0.25
    # Below half the multiply-adds in int8 the float rest dominates the time (Amdahl): int8 does not pay,
    # and a card saying int8 would misdescribe the model.
    min_int8_macs: float = 0.5

    def shortfall(self, agreement: Agreement) -> str | None:
        """The first figure that misses its floor, in words; None when all clear."""
        if agreement.top1 < self.min_top1:
            return f"top-1 agreement {agreement.top1:.4f} < {self.min_top1} (--min-top1)"
        if agreement.box_iou_ge_0_9 < self.min_box_iou_ge_0_9:
            return (f"fraction of top-1 boxes with IoU >= 0.9 {agreement.box_iou_ge_0_9:.4f} < "
                    f"{self.min_box_iou_ge_0_9} (--min-box-iou90)")
        if agreement.heatmap_diff_p99 > self.max_heatmap_diff_p99:
            return (f"heatmap |difference| 99th percentile {agreement.heatmap_diff_p99:.4f} > "
                    f"{self.max_heatmap_diff_p99} (--max-heatmap-diff-p99)")
        return None


# --- images --------------------------------------------------------------------------------------------------


def folder_images(folder: Path) -> list[Path]:
    """Files under `folder` (recursively, sorted) whose extension Pillow can decode."""
    if not folder.is_dir():
        raise QuantizeError(f"{folder}: no such folder of images")
    known = set(Image.registered_extensions())
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in known
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise QuantizeError(f"{folder}: no image files in it (extensions Pillow decodes: .jpg, .png, ...)")
    return paths


def dataset_images(root: Path, split: str) -> list[Path]:
    """The images of a data set in a layout spa-eval reads (CUB-200-2011, wsolevaluation; spa-synth's)."""
    try:
        dataset = open_dataset(root, split=split)
    except DatasetError as exc:
        raise QuantizeError(str(exc)) from None
    if not dataset.samples:
        raise QuantizeError(f"{root}: the {split} split has no images")
    return [sample.image_path for sample in dataset.samples]


def split_images(paths: Sequence[Path], calibration: int, held_out: int, seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded shuffle of `paths`: the first `calibration` for calibrating, the next (up to) `held_out` for
    the agreement. Raises QuantizeError when no image is left over for the agreement."""
    if len(paths) <= calibration:
        raise QuantizeError(f"{len(paths)} images: need more than the {calibration} used for calibration, "
                            "so that some are left to measure the agreement on")
    order = np.random.default_rng(seed).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    return shuffled[:calibration], shuffled[calibration:calibration + held_out]


def decode_files(paths: Sequence[Path], max_pixels: int) -> list[DecodedImage]:
    """Decoded as the service decodes uploads; raises QuantizeError naming the first file that does not."""
    images = []
    for path in paths:
        try:
            images.append(decode_image(path.read_bytes(), max_pixels=max_pixels))
        except (OSError, ImageError) as exc:
            raise QuantizeError(f"{path}: cannot use it as an image ({exc})") from None
    return images


def batches(paths: Sequence[Path], max_pixels: int, size: int = BATCH) -> Iterator[list[DecodedImage]]:
    for start in range(0, len(paths), size):
        yield decode_files(paths[start:start + size], max_pixels)


class _Reader(CalibrationDataReader):
    """Calibration batches, preprocessed exactly as the service preprocesses requests."""

    def __init__(self, paths: Sequence[Path], card: ModelCard, max_pixels: int) -> None:
        self._batches = (
            {card.io.image: preprocess(images, input_size=card.input_size, mean=card.mean, std=card.std)}
            for images in batches(paths, max_pixels)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# --- conversion ----------------------------------------------------------------------------------------------


def quantize_int8(fp32_onnx: Path, out_onnx: Path, card: ModelCard, calibration: Sequence[Path],
                  recipe: Int8Recipe, max_pixels: int) -> float:
    """Static int8 quantization of `fp32_onnx` into `out_onnx`, activation ranges from `calibration`; returns the
    share of the multiply-adds onnxruntime runs in int8."""
    with tempfile.TemporaryDirectory(prefix="spa-quantize-") as tmp:
        # onnxruntime's recommended pre-pass: shape inference and graph optimisation (BatchNorm folding).
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared))
        model = onnx.load(str(prepared))
        activation = QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8
        quantize_static(
            str(prepared), str(out_onnx), _Reader(calibration, card, max_pixels),
            quant_format=QuantFormat.QDQ if recipe.format == "QDQ" else QuantFormat.QOperator,
            per_channel=recipe.per_channel, reduce_range=recipe.reduce_range, activation_type=activation,
            weight_type=QuantType.QInt8 if recipe.weights == "int8" else QuantType.QUInt8,
            nodes_to_exclude=recipe.float_nodes(model, card.io), calibrate_method=_METHODS[recipe.method],
            calibration_providers=["CPUExecutionProvider"],
        )
        return int8_mac_share(model, out_onnx)


def convert_fp16(fp32_onnx: Path, out_onnx: Path) -> dict[str, str | bool | list[str]]:
    """float16 weights and arithmetic, float32 input and outputs (casts at the edges); returns the recipe."""
    model = convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True)
    onnx.save(model, str(out_onnx))
    return {"keep_io_types": True, "tool": f"onnxruntime.transformers.float16 {version('onnxruntime')}"}


# --- agreement -----------------------------------------------------------------------------------------------


def box_iou(a: Box | None, b: Box | None) -> float:
    """IoU of two inclusive pixel boxes (x0, y0, x1, y1); no box on either side: 1 if both, else 0."""
    if a is None or b is None:
        return float(a is None and b is None)
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(width, 0) * max(height, 0)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@dataclass
class _Tally:
    """Running sums of the agreement figures over images."""

    images: int = 0
    top1: int = 0
    top5: float = 0.0
    ious: list[float] = field(default_factory=list)
    diff_sum: float = 0.0
    pixels: int = 0
    histogram: np.ndarray | None = None

    def add(self, ref: Localization, other: Localization) -> None:
        ref_ids = [p.class_id for p in ref.predictions]
        other_ids = [p.class_id for p in other.predictions]
        self.images += 1
        self.top1 += ref_ids[0] == other_ids[0]
        self.top5 += len(set(ref_ids) & set(other_ids)) / len(ref_ids)
        top_ref, top_other = ref.predictions[0], other.predictions[0]
        self.ious.append(box_iou(_first(top_ref.boxes), _first(top_other.boxes)))
        diff = np.abs(top_ref.heatmap_at_image_size().astype(np.float64) - top_other.heatmap_at_image_size())
        self.diff_sum += float(diff.sum())
        self.pixels += diff.size
        counts, _ = np.histogram(diff, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
        self.histogram = counts if self.histogram is None else self.histogram + counts

    def agreement(self, source: str) -> Agreement:
        ious = np.asarray(self.ious)
        # The smallest bin edge with at least 99% of the pixels at or below it.
        edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
        p99 = float(edges[1:][np.searchsorted(np.cumsum(self.histogram), 0.99 * self.pixels)])
        return Agreement(
            source=source, images=self.images, top1=self.top1 / self.images, top5_overlap=self.top5 / self.images,
            box_iou_mean=float(ious.mean()), box_iou_ge_0_9=float((ious >= 0.9).mean()),
            box_iou_ge_0_5=float((ious >= 0.5).mean()), heatmap_diff_mean=self.diff_sum / self.pixels,
            heatmap_diff_p99=p99,
        )


def _first(boxes: list[Box]) -> Box | None:
    return boxes[0] if boxes else None


def measure_agreement(reference: Localizer, variant: Localizer, paths: Sequence[Path], source: str,
                      max_pixels: int) -> Agreement:
    """Both Localizers on the same images, top-5 with SCG, the card's threshold, union boxes."""
    options = LocalizeOptions(topk=min(TOPK, reference.card.num_classes), method="scg", box_mode="union")
    tally = _Tally()
    for images in batches(paths, max_pixels):
        wanted = [options] * len(images)
        for ref, other in zip(reference.localize(images, wanted), variant.localize(images, wanted), strict=True):
            tally.add(ref, other)
    return tally.agreement(source)


def cpu_localizer(onnx_path: Path, card: ModelCard) -> Localizer:
    return Localizer(card=card, engine=Engine(onnx_path, card, providers="cpu"), max_batch_size=BATCH)


# --- the command ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the images come from, as the card names it, and the images themselves."""

    name: str
    paths: list[Path]


def make_variant(model_dir: Path, out_dir: Path, precision: Precision, source: Source, *,
                 calibration_images: int = 64, held_out_images: int = 400, seed: int = 0,
                 recipe: Int8Recipe | None = None, floors: Floors = Floors(), force: bool = False,
                 max_pixels: int | None = None) -> tuple[ModelCard, str | None]:
    """Write `out_dir/model.onnx` (the variant) and, unless its agreement misses a floor and not `force`,
    `out_dir/model.json`. `recipe`: int8's, by default the architecture's (RECIPES). Returns (the card, the floor
    it missed or None); the card is not written when a floor is missed without `force`. Raises QuantizeError
    for unusable inputs and for an int8 model with less than `floors.min_int8_macs` of its multiply-adds in
    int8 (whatever `force` says), ModelLoadError for the model."""
    card, fp32_onnx = load_card(model_dir)
    if card.precision != "fp32":
        raise QuantizeError(f"{model_dir}: is already {card.precision}; start from the fp32 export")
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(model_dir).resolve():
        raise QuantizeError(f"--out {out_dir} is the fp32 model's own directory; choose a new one")
    max_pixels = max_pixels or Settings().max_image_pixels
    calibration_count = calibration_images if precision == "int8" else 0
    calibration, held_out = split_images(source.paths, calibration_count, held_out_images, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CARD_FILE).unlink(missing_ok=True)  # a refused variant must not leave an older card beside it
    out_onnx = out_dir / ONNX_FILE
    int8_macs = None
    if precision == "int8":
        recipe = recipe or recipe_for(card.arch)
        log.info("quantizing %s to int8 on %d calibration images (%s)", fp32_onnx, len(calibration), recipe)
        int8_macs = quantize_int8(fp32_onnx, out_onnx, card, calibration, recipe, max_pixels)
        log.info("%.1f%% of the multiply-adds run in int8", 100 * int8_macs)
        if int8_macs < floors.min_int8_macs:
            raise QuantizeError(f"only {int8_macs:.1%} of the multiply-adds run in int8, under the floor of "
                                f"{floors.min_int8_macs:.0%} (--min-int8-macs): this is not an int8 model; "
                                "no card written")
        settings: dict[str, str | bool | list[str]] = recipe.card()
        calibrated = Calibration(source=source.name, images=len(calibration), method=recipe.method, seed=seed)
    else:
        log.info("converting %s to fp16", fp32_onnx)
        settings, calibrated = convert_fp16(fp32_onnx, out_onnx), None
    log.info("measuring agreement with fp32 on %d held-out images", len(held_out))
    agreement = measure_agreement(cpu_localizer(fp32_onnx, card), cpu_localizer(out_onnx, card), held_out,
                                  f"{source.name}, held out (seed {seed})", max_pixels)
    log.info("agreement: %s", agreement.model_dump())
    variant_card = card.model_copy(update=dict(
        name=f"{card.name}-{precision}", onnx_file=ONNX_FILE, onnx_sha256=sha256_of(out_onnx), parity={},
        precision=precision, tool_version=version("spa-localizer"),
        variant=Variant(reference_sha256=card.onnx_sha256, recipe=settings, calibration=calibrated,
                        int8_macs=int8_macs, agreement=agreement),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    ))
    variant_card = ModelCard.model_validate(variant_card.model_dump())  # the whole card checked, as load_card will
    missed = floors.shortfall(agreement)
    if missed is None or force:
        write_card(variant_card, out_dir)
        log.info("wrote %s and %s", out_onnx, out_dir / CARD_FILE)
    return variant_card, missed


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="spa-quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="an fp32 model directory written by spa-export")
    parser.add_argument("--precision", choices=("int8", "fp16"), required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--calibration", type=Path, metavar="DIR",
                        help="a folder of images (any format the service decodes, searched recursively)")
    source.add_argument("--calibration-data", type=Path, metavar="DATASET",
                        help="a data set in a layout spa-eval reads (CUB-200-2011, wsolevaluation, spa-synth's)")
    parser.add_argument("--split", choices=("train", "test", "all"), default="all", help="of --calibration-data")
    parser.add_argument("--calibration-images", type=positive_int, default=64,
                        help="images to calibrate int8 on (default 64); fp16 needs none")
    parser.add_argument("--held-out-images", type=positive_int, default=400,
                        help="at most this many of the other images measure the agreement (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="of the shuffle that splits the images (default 0)")
    parser.add_argument("--method", choices=sorted(_METHODS),
                        help="int8 calibration method (default: the architecture's recipe's, docs/precision.md)")
    head = parser.add_mutually_exclusive_group()
    head.add_argument("--quantize-head", dest="float_head", action="store_false", default=None,
                      help="int8 for the head too, but for the classifier Conv that writes class_map "
                      "(default: the architecture's recipe)")
    head.add_argument("--float-head", dest="float_head", action="store_true", default=None,
                      help="the whole head in float (default: the architecture's recipe)")
    defaults = Floors()
    parser.add_argument("--min-top1", type=float, default=defaults.min_top1,
                        help=f"floor: top-1 class agreement (default {defaults.min_top1})")
    parser.add_argument("--min-box-iou90", type=float, default=defaults.min_box_iou_ge_0_9,
                        help=f"floor: fraction of top-1 boxes with IoU >= 0.9 (default {defaults.min_box_iou_ge_0_9})")
    parser.add_argument("--max-heatmap-diff-p99", type=float, default=defaults.max_heatmap_diff_p99,
                        help="ceiling: 99th percentile of |heatmap difference| "
                        f"(default {defaults.max_heatmap_diff_p99})")
    parser.add_argument("--min-int8-macs", type=_fraction, default=defaults.min_int8_macs,
                        help="floor: share of the multiply-adds an int8 model runs in int8; --force does not "
                        f"override it (default {defaults.min_int8_macs})")
    parser.add_argument("--force", action="store_true", help="write the card even if an agreement floor is missed")
    parser.add_argument("--out", type=Path, required=True, help="new directory for model.onnx and model.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        if args.calibration is not None:
            source = Source(f"folder {args.calibration}", folder_images(args.calibration))
        else:
            paths = dataset_images(args.calibration_data, args.split)
            source = Source(f"data set {args.calibration_data} ({args.split} split)", paths)
        changes = {key: value for key in ("method", "float_head") if (value := getattr(args, key)) is not None}
        _, missed = make_variant(
            args.model_dir, args.out, args.precision, source, calibration_images=args.calibration_images,
            held_out_images=args.held_out_images, seed=args.seed,
            recipe=replace(recipe_for(load_card(args.model_dir)[0].arch), **changes),
            floors=Floors(args.min_top1, args.min_box_iou90, args.max_heatmap_diff_p99, args.min_int8_macs),
            force=args.force,
        )
    except (QuantizeError, ModelLoadError) as exc:
        fail(f"spa-quantize: {exc}", EXIT_USAGE)
    if missed is not None and not args.force:
        fail(f"spa-quantize: agreement below the floor: {missed}; no card written (--force writes it)", EXIT_USAGE)
    if missed is not None:
        log.warning("agreement below the floor (%s); card written because of --force", missed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
