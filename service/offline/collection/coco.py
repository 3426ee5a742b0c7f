"""Rows -> a COCO detection file (images, categories, annotations with scores), to train a detector
on the pseudo-boxes.

Categories are the model's labels, `id` = class id + 1 (COCO ids start at 1). Images are the rows
without an error, sorted by path, `id` = 1.. in that order, so the file does not depend on the
order batches finished in. A box [x0, y0, x1, y1] (inclusive pixels) becomes COCO's
[x, y, width, height] = [x0, y0, x1 - x0 + 1, y1 - y0 + 1]; each annotation carries its class's score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .rows import Row


def category_id(class_id: int) -> int:
    return class_id + 1


def coco_bbox(box: Sequence[int]) -> list[int]:
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def coco_detections(rows: Iterable[Row], labels: Sequence[str], *, model: str) -> dict[str, Any]:
    good = sorted((r for r in rows if r["error_code"] is None), key=lambda r: r["path"])
    images, annotations = [], []
    for image_id, row in enumerate(good, start=1):
        images.append({"id": image_id, "file_name": row["path"], "width": row["width"], "height": row["height"]})
        for class_id, score, boxes in zip(row["class_ids"], row["scores"], row["boxes"]):
            for box in boxes:
                bbox = coco_bbox(box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id(class_id),
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": 0,
                        "score": score,
                    }
                )
    return {
        "info": {"description": f"SPA pseudo-boxes from {model} (spa-batch)"},
        "images": images,
        "categories": [{"id": category_id(c), "name": name} for c, name in enumerate(labels)],
        "annotations": annotations,
    }
