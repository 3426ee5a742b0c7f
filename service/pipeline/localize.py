"""The pipeline: decoded images -> classes, heatmaps, boxes, in two halves.

`Localizer.run_backbone`: preprocess and one backbone call per batch (a `BackboneRun`).
`Localizer.postprocess`: for any options, SCG (or CAM) for the whole batch and all its classes at
once, then, per image (each has its own size), the boxes of the maps resized to that size, band by
band. Full-size heatmaps are never kept: a `Prediction` holds its map at the class map's resolution
and resizes it when asked. Evaluation runs the backbone once and post-processes once per method.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..arrays import Array, array_namespace, to_numpy
from ..card import Method, ModelCard, ScgParams, load_card
from ..errors import InvalidRequestError
from ..settings import Settings
from .boxes import Box, BoxMode, boxes_of_maps
from .engine import BackboneOutputs, Engine, warmup_batch_sizes
from .imaging import DecodedImage
from .preprocess import preprocess
from .resize import resize_maps, roundtrip_maps
from .scg import ScgMode, normalize_cam, scg_maps, structure_affinity


@dataclass(frozen=True)
class LocalizeOptions:
    """What one caller wants for one image."""

    topk: int = 1
    method: Method = "scg"
    threshold: float | None = None  # None: the card's box threshold for the method
    box_mode: BoxMode = "union"
    class_ids: tuple[int, ...] = ()  # localize these classes instead of the top-k


@dataclass
class Prediction:
    class_id: int
    label: str
    score: float
    map: Array  # (h, w) float32 in [0, 1] at the class map's resolution (numpy or cupy)
    size: tuple[int, int]  # (H, W) of the original image, the heatmap's size
    boxes: list[Box]  # inclusive original-image pixels

    def heatmap_at_image_size(self) -> np.ndarray:
        """(H, W) float32 in [0, 1]: the map resized to the original image (a full-size resize per call; the
        service itself renders PNGs band by band from `map`)."""
        return to_numpy(resize_maps(self.map, self.size))


@dataclass
class Localization:
    width: int
    height: int
    predictions: list[Prediction]
    timings_ms: dict[str, float]  # wall time of each stage this image went through
    batch_size: int  # images that shared the backbone call


@dataclass(frozen=True)
class BackboneRun:
    """One backbone call for a batch: all that post-processing needs, for any options."""

    sizes: list[tuple[int, int]]  # (H, W) of each original image
    outputs: BackboneOutputs
    scores: np.ndarray  # (N, C) class probabilities
    timings_ms: dict[str, float]  # preprocess, backbone


def class_scores(class_map: np.ndarray) -> np.ndarray:
    """(N, C, h, w) class map -> (N, C) softmax of its spatial average (the reference's GAP)."""
    logits = class_map.mean(axis=(2, 3), dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def chosen_classes(scores: np.ndarray, options: Sequence[LocalizeOptions]) -> np.ndarray:
    """(N, K) class ids per image, K the most any image asks for; shorter rows are padded with
    their own next-best classes, whose maps are computed and dropped (cheaper than ragged SCG)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    wanted = [list(o.class_ids) if o.class_ids else [] for o in options]
    k = max(len(w) if w else o.topk for w, o in zip(wanted, options))
    chosen = np.empty((len(options), k), dtype=np.int64)
    for i, (ids, opts) in enumerate(zip(wanted, options)):
        head = ids or order[i, : opts.topk].tolist()
        rest = [c for c in order[i].tolist() if c not in head]
        chosen[i] = (head + rest)[:k]
    return chosen


def localization_maps(
    outputs_class_map: Array,
    features: Sequence[Array],
    chosen: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    methods: Sequence[Method],
    params: ScgParams,
    scg_mode: ScgMode,
) -> Array:
    """(N, K, h, w) maps in [0, 1] at the class map's resolution, CAM or SCG per image.

    `sizes` are the original (height, width): the reference resizes each CAM to it and back
    (step 9) before SCG, done as two small matrices per image (`resize.roundtrip_maps`).
    """
    xp = array_namespace(outputs_class_map)
    index = xp.asarray(chosen)[:, :, None, None]
    cams = normalize_cam(xp.take_along_axis(outputs_class_map, index, axis=1))
    scg_rows = [i for i, m in enumerate(methods) if m == "scg"]
    if not scg_rows:
        return cams
    rows = xp.asarray(scg_rows)
    round_tripped = xp.stack([roundtrip_maps(cams[i], sizes[i]) for i in scg_rows])
    affinity = structure_affinity([f[rows] for f in features], params, mode=scg_mode)
    maps = cams.copy()
    maps[rows] = scg_maps(affinity, round_tripped, params, mode=scg_mode)
    return maps


class _Stopwatch:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


@dataclass
class Localizer:
    """Engine + post-process for one model; `localize` is the whole pipeline for a batch."""

    card: ModelCard
    engine: Engine
    max_batch_size: int = 8
    scg_mode: ScgMode = "reference"

    @classmethod
    def from_settings(cls, settings: Settings, model_dir: Path | None = None) -> Localizer:
        """The model in `model_dir` (default: `settings.model_dir`), run as the settings say."""
        card, onnx_path = load_card(model_dir or settings.model_dir)
        engine = Engine.from_settings(onnx_path, card, settings)
        return cls(card=card, engine=engine, max_batch_size=settings.max_batch_size, scg_mode=settings.scg_mode)

    def validate(self, options: LocalizeOptions) -> None:
        """Raise InvalidRequestError when options do not fit this model."""
        n = self.card.num_classes
        if not 1 <= options.topk <= n:
            raise InvalidRequestError(f"topk must be between 1 and {n} (the model's classes), got {options.topk}")
        bad = [c for c in options.class_ids if not 0 <= c < n]
        if bad:
            raise InvalidRequestError(f"class_id {bad} out of range: this model has classes 0..{n - 1}")
        if len(set(options.class_ids)) != len(options.class_ids):
            raise InvalidRequestError("class_id values must not repeat")
        if options.threshold is not None and not 0.0 <= options.threshold <= 1.0:
            raise InvalidRequestError(f"threshold must be in [0, 1], got {options.threshold}")

    def run_backbone(self, images: Sequence[DecodedImage]) -> BackboneRun:
        """Preprocess `images` and run the backbone on them as one batch."""
        card, clock = self.card, _Stopwatch()
        with clock.stage("preprocess"):
            batch = preprocess(images, input_size=card.input_size, mean=card.mean, std=card.std)
        with clock.stage("backbone"):
            outputs = self.engine.run(batch)
        scores = class_scores(to_numpy(outputs.class_map))
        return BackboneRun([(im.height, im.width) for im in images], outputs, scores, clock.ms)

    def postprocess(self, run: BackboneRun, options: Sequence[LocalizeOptions]) -> list[Localization]:
        """Classes, maps and boxes for each image of `run`, with that image's options."""
        if len(run.sizes) != len(options):
            raise ValueError("one LocalizeOptions per image")
        for opts in options:
            self.validate(opts)
        clock = _Stopwatch()
        with clock.stage("scg"):
            chosen = chosen_classes(run.scores, options)
            maps = localization_maps(
                run.outputs.class_map,
                (run.outputs.feat_a, run.outputs.feat_b),
                chosen,
                run.sizes,
                [o.method for o in options],
                self.card.scg,
                self.scg_mode,
            )
        shared = {**run.timings_ms, **clock.ms}
        return [
            self._finish(size, opts, maps[i], chosen[i], run.scores[i], shared, len(options))
            for i, (size, opts) in enumerate(zip(run.sizes, options))
        ]

    def localize(
        self, images: Sequence[DecodedImage], options: Sequence[LocalizeOptions]
    ) -> list[Localization]:
        """The whole pipeline for a batch: `postprocess(run_backbone(images), options)`."""
        if len(images) != len(options):
            raise ValueError("one LocalizeOptions per image")
        return self.postprocess(self.run_backbone(images), options)

    def _finish(
        self,
        size: tuple[int, int],
        opts: LocalizeOptions,
        maps: Array,
        chosen: np.ndarray,
        scores: np.ndarray,
        shared_ms: dict[str, float],
        batch_size: int,
    ) -> Localization:
        clock = _Stopwatch()
        k = len(opts.class_ids) or opts.topk
        threshold = self.card.box_threshold[opts.method] if opts.threshold is None else opts.threshold
        with clock.stage("boxes"):
            boxes = boxes_of_maps(maps[:k], size, threshold, opts.box_mode)
        predictions = [
            Prediction(
                class_id=int(c),
                label=self.card.labels[int(c)],
                score=float(scores[c]),
                map=maps[j],
                size=size,
                boxes=boxes[j],
            )
            for j, c in enumerate(chosen[:k])
        ]
        height, width = size
        return Localization(
            width=width,
            height=height,
            predictions=predictions,
            timings_ms={**shared_ms, **clock.ms},
            batch_size=batch_size,
        )

    def warmup(self) -> None:
        """Full passes on a synthetic image, so the first request pays no start-up costs: one image
        on CPU, every batch size the batcher can form on CUDA (`engine.warmup_batch_sizes`)."""
        h, w = self.card.input_size
        gradient = np.linspace(0, 255, h * w * 3, dtype=np.float32).reshape(h, w, 3).astype(np.uint8)
        image = DecodedImage(image=Image.fromarray(gradient, mode="RGB"), format="synthetic")
        for size in warmup_batch_sizes(self.max_batch_size, self.engine.on_gpu):
            self.localize([image] * size, [LocalizeOptions(topk=1, method="scg")] * size)
