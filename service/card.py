"""The model card (`model.json`): what a model directory holds and how to use it.

`spa-export` writes it; the runtime refuses a directory whose card or ONNX file does not check out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ModelLoadError

CARD_FILE = "model.json"
CARD_SCHEMA_VERSION = 1

Method = Literal["cam", "scg"]
Precision = Literal["fp32", "fp16", "int8"]


class ScgParams(BaseModel):
    """SCG parameters (docs/reference.md section 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fo_th: float = Field(ge=0.0, le=1.0)
    so_th: float = Field(ge=0.0)
    so_weight: float = Field(gt=0.0)
    order: int = Field(ge=1, le=8)
    fg_th: float = Field(ge=0.0, le=1.0)
    bg_th: float = Field(ge=0.0, le=1.0)


class Preset(BaseModel):
    """The authors' settings for one data set: SCG parameters and box thresholds."""

    model_config = ConfigDict(frozen=True)

    scg: ScgParams
    box_threshold: dict[Method, float]
    thresholds_tried: tuple[float, ...]


PRESETS: dict[str, Preset] = {
    "cub": Preset(
        scg=ScgParams(fo_th=0.1, so_th=0.5, so_weight=2.0, order=2, fg_th=0.1, bg_th=0.05),
        box_threshold={"cam": 0.2, "scg": 0.25},
        thresholds_tried=(0.1, 0.25, 0.3, 0.35),
    ),
    "ilsvrc": Preset(
        scg=ScgParams(fo_th=0.2, so_th=0.2, so_weight=1.0, order=2, fg_th=0.1, bg_th=0.05),
        box_threshold={"cam": 0.2, "scg": 0.2},
        thresholds_tried=(0.2, 0.5),
    ),
}


class OutputNames(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = "image"
    class_map: str = "class_map"
    feat_a: str = "feat_a"
    feat_b: str = "feat_b"


class Calibration(BaseModel):
    """The images an int8 model's activation ranges were measured on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="where the images came from: a folder, or a data set and its split")
    images: int = Field(ge=1)
    method: Literal["MinMax", "Entropy", "Percentile"]
    seed: int = Field(description="seed of the shuffle that split the source into calibration and held-out images")


class Agreement(BaseModel):
    """A reduced-precision model's answers against its fp32 reference, on images not used for calibration.

    Both models run the service's pipeline (top-5, SCG, the card's box threshold, union boxes); boxes and
    heatmaps are those of each model's own top-1 prediction, as a client would get them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    images: int = Field(ge=1)
    top1: float = Field(ge=0.0, le=1.0, description="fraction of images with the same top-1 class")
    top5_overlap: float = Field(ge=0.0, le=1.0, description="mean |top-5 in common| / 5")
    box_iou_mean: float = Field(ge=0.0, le=1.0, description="mean IoU of the top-1 boxes")
    box_iou_ge_0_9: float = Field(ge=0.0, le=1.0, description="fraction of images whose top-1 boxes have IoU >= 0.9")
    box_iou_ge_0_5: float = Field(ge=0.0, le=1.0, description="fraction of images whose top-1 boxes have IoU >= 0.5")
    heatmap_diff_mean: float = Field(ge=0.0, description="mean |difference| of the top-1 heatmaps, over all pixels")
    heatmap_diff_p99: float = Field(ge=0.0, description="99th percentile of that |difference|")


class Variant(BaseModel):
    """How a reduced-precision model was made from its fp32 export, and how closely it agrees with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the fp32 model.onnx it came from")
    recipe: dict[str, str | bool | list[str]] = Field(description="the conversion's settings")
    calibration: Calibration | None = None  # int8 only
    int8_macs: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="int8 only: fraction of the network's multiply-adds (at its input size) that onnxruntime runs "
        "with integer kernels",
    )
    agreement: Agreement


class ModelCard(BaseModel):
    """Everything the runtime needs to know about an exported model."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = CARD_SCHEMA_VERSION
    name: str = Field(min_length=1)
    arch: str = Field(min_length=1)
    num_classes: int = Field(ge=1)
    labels: list[str]
    input_size: tuple[int, int] = Field(description="(height, width) the image is resized to")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    io: OutputNames = OutputNames()
    map_size: tuple[int, int] = Field(description="(h, w) of the class map and both feature blocks")
    preset: str
    scg: ScgParams
    box_threshold: dict[Method, float]
    # Cards written before this field existed read as "scg", what the service then served for every model.
    default_method: Method = Field(
        "scg", description="the method served when a request names none: the one measured best for this model"
    )
    onnx_file: str = "model.onnx"
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parity: dict[str, float] = Field(default_factory=dict, description="max |onnx - torch| / range per output")
    precision: Precision = "fp32"
    variant: Variant | None = Field(default=None, description="for fp16 and int8: how it was made from fp32")
    tool_version: str
    created: str

    @field_validator("onnx_file")
    @classmethod
    def _inside_model_dir(cls, value: str) -> str:
        # The runtime joins it to the model directory: it must name a file in there, not anywhere else.
        posix, windows = PurePosixPath(value), PureWindowsPath(value)
        if not value or posix.is_absolute() or windows.anchor or ".." in posix.parts or ".." in windows.parts:
            raise ValueError(f"{value!r} must be a file name relative to the model directory, without '..'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for num_classes={self.num_classes}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        for method in ("cam", "scg"):
            if method not in self.box_threshold:
                raise ValueError(f"box_threshold has no entry for {method!r}")
        if (self.precision == "fp32") != (self.variant is None):
            raise ValueError(f"precision {self.precision!r} needs a variant section exactly when it is not fp32")
        if self.precision == "int8" and self.variant is not None and self.variant.calibration is None:
            raise ValueError("an int8 card must say how it was calibrated (variant.calibration)")
        return self

    def public(self) -> dict:
        """The whole card as JSON types, what GET /v1/models returns. Nothing is left out: the ONNX file's
        name (relative to the model directory) and sha256 let a client tell exactly which model answers,
        and the I/O names are what the file itself declares."""
        return self.model_dump(mode="json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_labels(path: Path) -> list[str]:
    """One label per line; CUB `classes.txt` lines (`1 001.Black_footed_Albatross`) are accepted."""
    labels = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        first, _, rest = line.partition(" ")
        labels.append(rest.strip() if first.isdigit() and rest.strip() else line)
    return labels


def write_card(card: ModelCard, model_dir: Path) -> Path:
    path = Path(model_dir) / CARD_FILE
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path


def load_card(model_dir: Path, *, verify_sha256: bool = True) -> tuple[ModelCard, Path]:
    """Read and check `model.json` and the ONNX file it names; returns (card, onnx path).

    Raises ModelLoadError naming the file and the problem.
    """
    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    if not card_path.is_file():
        raise ModelLoadError(f"{card_path}: no model card (expected {CARD_FILE} written by spa-export)")
    try:
        raw = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{card_path}: not readable JSON ({exc})") from None
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, CARD_SCHEMA_VERSION):
        raise ModelLoadError(
            f"{card_path}: schema_version {raw.get('schema_version')!r} is not supported "
            f"(this runtime reads version {CARD_SCHEMA_VERSION})"
        )
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in exc.errors())
        raise ModelLoadError(f"{card_path}: invalid model card ({problems})") from None
    onnx_path = model_dir / card.onnx_file
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: ONNX file named by the card is missing")
    if verify_sha256:
        actual = sha256_of(onnx_path)
        if actual != card.onnx_sha256:
            raise ModelLoadError(
                f"{onnx_path}: sha256 {actual[:12]}... does not match the card's {card.onnx_sha256[:12]}... "
                "(file changed after export?)"
            )
    return card, onnx_path
