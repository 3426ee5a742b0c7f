"""Runs a data set through the service's `Localizer`, batch by batch, into one `MethodTally` per method.

Per batch and method, one `Localizer.localize` call asks for the top 5 classes (top-1 / top-5
classification and, when the ground-truth class is among them, its heatmap); images whose
ground-truth class is not in their top 5 get a second call for that class alone. The methods share
one backbone run per batch (and one for the second calls) through `SharedBackbone`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..card import Method
from ..engine import BackboneOutputs, Engine
from ..errors import ImageError
from ..imaging import DecodedImage, decode_image
from ..localize import Localizer, LocalizeOptions
from .datasets import DatasetError, Sample, load_mask
from .metrics import as_boxes
from .tally import MethodTally

log = logging.getLogger(__name__)

TOPK = 5


class SharedBackbone:
    """Wraps an `Engine` so that the same preprocessed batch asked for again (the next method's call)
    reuses the last backbone outputs: they depend on the batch alone. Everything else is the engine's."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._batch: np.ndarray | None = None
        self._outputs: BackboneOutputs | None = None
        self.backbone_calls = 0

    def run(self, batch: np.ndarray) -> BackboneOutputs:
        if self._outputs is not None and self._batch is not None and self._batch.shape == batch.shape:
            if np.array_equal(self._batch, batch):
                return self._outputs
        self._outputs = self._engine.run(batch)
        self._batch = batch
        self.backbone_calls += 1
        return self._outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def share_backbone(localizer: Localizer) -> SharedBackbone:
    """Give `localizer` a SharedBackbone around its engine (once); returns it."""
    if not isinstance(localizer.engine, SharedBackbone):
        # Duck-typed: the Localizer only calls engine.run(batch).
        localizer.engine = cast(Engine, SharedBackbone(localizer.engine))
    return cast(SharedBackbone, localizer.engine)


@dataclass
class Example:
    """One image kept for the examples grid: (H, W, 3) uint8 pixels, (M, 4) boxes, heatmaps by method."""

    pixels: np.ndarray
    boxes: np.ndarray
    label: int
    predicted: int  # the top-1 class
    heatmaps: dict[str, np.ndarray]  # the ground-truth class's, (H, W) each


@dataclass
class Evaluation:
    tallies: dict[str, MethodTally]
    examples: list[Example]
    backbone_calls: int


def example_indices(total: int, count: int) -> set[int]:
    """`count` indices spread evenly over `total` samples (CUB lists images class by class)."""
    count = min(count, total)
    return {i * total // count for i in range(count)} if count else set()


def _read_image(sample: Sample, max_pixels: int) -> DecodedImage:
    try:
        data = sample.image_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{sample.image_path}: cannot read the image ({exc})") from None
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:  # say which file it was
        raise DatasetError(f"{sample.image_path}: {exc}") from None


def _batch_maps(
    localizer: Localizer, images: Sequence[DecodedImage], labels: Sequence[int], methods: Sequence[Method], topk: int
) -> tuple[list[list[int]], dict[Method, list[np.ndarray]]]:
    """Each image's top classes (best first; the same for every method) and, per method, the
    ground-truth class's (H, W) heatmap per image.

    The calls go method after method for the whole batch first, then for the images that need their
    ground-truth class asked for by name, so SharedBackbone sees each batch twice in a row.
    """
    first = {m: localizer.localize(images, [LocalizeOptions(topk=topk, method=m)] * len(images)) for m in methods}
    rankings = [[p.class_id for p in r.predictions] for r in first[methods[0]]]
    missing = [i for i, (ranking, label) in enumerate(zip(rankings, labels)) if label not in ranking]
    heatmaps: dict[Method, list[np.ndarray]] = {}
    for m in methods:
        maps: dict[int, np.ndarray] = {
            i: next(p.heatmap for p in r.predictions if p.class_id == labels[i])
            for i, r in enumerate(first[m])
            if labels[i] in rankings[i]
        }
        if missing:
            extra = localizer.localize(
                [images[i] for i in missing],
                [LocalizeOptions(class_ids=(labels[i],), method=m) for i in missing],
            )
            maps.update((i, r.predictions[0].heatmap) for i, r in zip(missing, extra))
        heatmaps[m] = [maps[i] for i in range(len(images))]
    return rankings, heatmaps


def evaluate(
    localizer: Localizer,
    samples: Sequence[Sample],
    *,
    methods: Sequence[Method],
    thresholds: Sequence[float],
    batch_size: int,
    max_pixels: int,
    examples: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> Evaluation:
    """Stream `samples` through `localizer` and tally every method; `on_batch(n)` after each batch of n."""
    num_classes = localizer.card.num_classes
    bad = next((s for s in samples if not 0 <= s.class_id < num_classes), None)
    if bad is not None:
        raise DatasetError(
            f"{bad.image_path}: class id {bad.class_id} but the model has classes 0..{num_classes - 1}"
        )
    shared = share_backbone(localizer)
    calls_before = shared.backbone_calls
    topk = min(TOPK, num_classes)
    tallies = {method: MethodTally(np.asarray(thresholds, dtype=np.float64)) for method in methods}
    keep = example_indices(len(samples), examples)
    kept: list[Example] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = [_read_image(s, max_pixels) for s in batch]
        labels = [s.class_id for s in batch]
        masks = [load_mask(s, (im.width, im.height)) for s, im in zip(batch, images)]
        rankings, heatmaps = _batch_maps(localizer, images, labels, methods, topk)
        for method in methods:
            for i, sample in enumerate(batch):
                mask, valid = masks[i] if masks[i] is not None else (None, None)
                tallies[method].add(
                    ranking=rankings[i],
                    label=sample.class_id,
                    heatmap=heatmaps[method][i],
                    boxes=as_boxes(sample.boxes),
                    mask=mask,
                    valid=valid,
                )
        kept.extend(
            Example(
                pixels=np.asarray(images[i].image),
                boxes=as_boxes(batch[i].boxes),
                label=labels[i],
                predicted=rankings[i][0],
                heatmaps={m: heatmaps[m][i] for m in methods},
            )
            for i in range(len(batch))
            if start + i in keep
        )
        if on_batch is not None:
            on_batch(len(batch))
    calls = shared.backbone_calls - calls_before
    log.info("evaluated %d images with %d backbone calls", len(samples), calls)
    return Evaluation(tallies=tallies, examples=kept, backbone_calls=calls)
