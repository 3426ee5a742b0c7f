"""Boxes from heatmaps (SPA_REFERENCE.md section 4).

A box is (x0, y0, x1, y1), inclusive on both ends, in the pixel grid of the heatmap it came
from (the caller passes heatmaps already resized to the original image). A pixel is in when
its value is >= the threshold.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from .arrays import array_namespace, to_numpy
from .resize import Array

BoxMode = Literal["union", "largest", "all"]
Box = tuple[int, int, int, int]
EMPTY_BOX: Box = (0, 0, 0, 0)  # what the authors' code reports when nothing passes


def union_boxes(heatmaps: Array, threshold: float) -> Array:
    """(K, H, W) heatmaps -> (K, 4) int64: the box of all pixels >= threshold, (0, 0, 0, 0) if none.

    Same namespace as the input (numpy or cupy).
    """
    xp = array_namespace(heatmaps)
    passing = heatmaps >= threshold
    rows = passing.any(axis=2)  # (K, H)
    cols = passing.any(axis=1)  # (K, W)
    height, width = rows.shape[1], cols.shape[1]
    # argmax finds the first True; on the reversed axis, the last one.
    y0 = xp.argmax(rows, axis=1)
    y1 = height - 1 - xp.argmax(rows[:, ::-1], axis=1)
    x0 = xp.argmax(cols, axis=1)
    x1 = width - 1 - xp.argmax(cols[:, ::-1], axis=1)
    boxes = xp.stack([x0, y0, x1, y1], axis=1).astype(xp.int64)
    return xp.where(rows.any(axis=1)[:, None], boxes, 0)


def component_boxes(heatmap: Array, threshold: float, mode: Literal["largest", "all"]) -> list[Box]:
    """Boxes of the 8-connected components of pixels >= threshold in one (H, W) heatmap (host side).

    largest: [the box of the component with the most pixels] (ties: cv2's lowest label, which
    follows its scan order). all: every component's box by pixel count, descending (ties by
    label). [] when no pixel passes.
    """
    mask = (to_numpy(heatmap) >= threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return []
    stats = stats[1:]  # label 0 is the background
    areas = stats[:, cv2.CC_STAT_AREA]
    if mode == "largest":
        order = [int(np.argmax(areas))]
    elif mode == "all":
        order = np.argsort(-areas, kind="stable").tolist()
    else:
        raise ValueError(f"unknown component box mode {mode!r}")
    return [_stat_box(stats[i]) for i in order]


def _stat_box(stat: np.ndarray) -> Box:
    x, y = int(stat[cv2.CC_STAT_LEFT]), int(stat[cv2.CC_STAT_TOP])
    return (x, y, x + int(stat[cv2.CC_STAT_WIDTH]) - 1, y + int(stat[cv2.CC_STAT_HEIGHT]) - 1)


def boxes_from_heatmaps(heatmaps: Array, threshold: float, mode: BoxMode = "union") -> list[list[Box]]:
    """(K, H, W) heatmaps -> boxes per map.

    union and largest: exactly one box per map, (0, 0, 0, 0) when nothing passes (as the
    authors' code does). all: one box per component, [] when nothing passes.
    """
    if mode == "union":
        return [[tuple(box)] for box in to_numpy(union_boxes(heatmaps, threshold)).tolist()]
    if mode not in ("largest", "all"):
        raise ValueError(f"unknown box mode {mode!r}")
    result = []
    for heatmap in to_numpy(heatmaps):
        boxes = component_boxes(heatmap, threshold, mode)
        result.append(boxes if boxes or mode == "all" else [EMPTY_BOX])
    return result
