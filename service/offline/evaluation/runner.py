"""Runs a data set through the service's `Localizer`, batch by batch, into one `MethodTally` per method.

Per batch: one backbone run (`Localizer.run_backbone`), whose class scores give every image's top-5
classes; then per method one `Localizer.postprocess` of that run for each image's ground-truth class,
whose heatmap (at the original size) and map (at the class map's resolution, for the wsol protocol's
224 x 224 grid) are what the localization metrics score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from spa_service.arrays import to_numpy
from spa_service.card import Method
from spa_service.errors import ImageError
from spa_service.pipeline.imaging import DecodedImage, decode_image
from spa_service.pipeline.localize import LocalizeOptions, Localizer

from .datasets import DatasetError, Sample, load_mask
from .metrics import WsolProtocol, as_boxes
from .tally import MethodTally

log = logging.getLogger(__name__)

TOPK = 5


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
    """The sample's image on its stored pixel grid: wsolevaluation and the SPA code ignore EXIF
    orientation, and the data set's boxes and masks are drawn on that grid."""
    try:
        data = sample.image_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{sample.image_path}: cannot read the image ({exc})") from None
    try:
        return decode_image(data, max_pixels=max_pixels, exif_transpose=False)
    except ImageError as exc:  # say which file it was
        raise DatasetError(f"{sample.image_path}: {exc}") from None


def _batch_maps(
    localizer: Localizer, images: Sequence[DecodedImage], labels: Sequence[int], methods: Sequence[Method], topk: int
) -> tuple[list[list[int]], dict[Method, list[tuple[np.ndarray, np.ndarray]]]]:
    """Each image's top classes (best first) and, per method, the ground-truth class's (H, W) heatmap
    and (h, w) map per image, from one backbone run."""
    run = localizer.run_backbone(images)
    rankings = np.argsort(-run.scores, axis=1, kind="stable")[:, :topk].tolist()
    heatmaps: dict[Method, list[tuple[np.ndarray, np.ndarray]]] = {}
    for m in methods:
        results = localizer.postprocess(run, [LocalizeOptions(class_ids=(label,), method=m) for label in labels])
        heatmaps[m] = [(r.predictions[0].heatmap_at_image_size(), to_numpy(r.predictions[0].map)) for r in results]
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
    protocol: WsolProtocol = WsolProtocol(),
    on_batch: Callable[[int], None] | None = None,
) -> Evaluation:
    """Stream `samples` through `localizer` and tally every method; `on_batch(n)` after each batch of n."""
    num_classes = localizer.card.num_classes
    bad = next((s for s in samples if not 0 <= s.class_id < num_classes), None)
    if bad is not None:
        raise DatasetError(
            f"{bad.image_path}: class id {bad.class_id} but the model has classes 0..{num_classes - 1}"
        )
    calls = 0
    topk = min(TOPK, num_classes)
    tallies = {method: MethodTally(np.asarray(thresholds, dtype=np.float64), protocol) for method in methods}
    keep = example_indices(len(samples), examples)
    kept: list[Example] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = [_read_image(s, max_pixels) for s in batch]
        labels = [s.class_id for s in batch]
        masks = [load_mask(s, (im.width, im.height)) for s, im in zip(batch, images)]
        rankings, heatmaps = _batch_maps(localizer, images, labels, methods, topk)
        calls += 1
        for method in methods:
            for i, sample in enumerate(batch):
                heatmap, coarse = heatmaps[method][i]
                tallies[method].add(
                    ranking=rankings[i],
                    label=sample.class_id,
                    heatmap=heatmap,
                    coarse_map=coarse,
                    boxes=as_boxes(sample.boxes),
                    mask=masks[i],
                )
        kept.extend(
            Example(
                pixels=np.asarray(images[i].image),
                boxes=as_boxes(batch[i].boxes),
                label=labels[i],
                predicted=rankings[i][0],
                heatmaps={m: heatmaps[m][i][0] for m in methods},
            )
            for i in range(len(batch))
            if start + i in keep
        )
        if on_batch is not None:
            on_batch(len(batch))
    log.info("evaluated %d images with %d backbone calls", len(samples), calls)
    return Evaluation(tallies=tallies, examples=kept, backbone_calls=calls)
