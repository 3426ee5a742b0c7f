"""The `--examples` grid: per image, the photo with its ground-truth boxes, then each method's heatmap
over it with the box at that method's threshold (ground truth red, prediction green)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..imaging import heatmap_to_uint8
from .metrics import box_iou, union_boxes_over_thresholds
from .runner import Example

TILE_HEIGHT = 160
RED = (230, 30, 30)
GREEN = (40, 230, 60)


def _draw_boxes(tile: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int], scale: float) -> None:
    for x0, y0, x1, y1 in boxes:
        p0 = (int(round(x0 * scale)), int(round(y0 * scale)))
        p1 = (int(round((x1 + 1) * scale)) - 1, int(round((y1 + 1) * scale)) - 1)
        cv2.rectangle(tile, p0, p1, colour, 2)


def _caption(tile: np.ndarray, text: str) -> None:
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)


def example_row(example: Example, thresholds: Mapping[str, float], labels: Sequence[str]) -> np.ndarray:
    """(TILE_HEIGHT, W, 3) uint8 RGB: the photo, then one heatmap tile per method in `example.heatmaps`."""
    h, w = example.pixels.shape[:2]
    scale = TILE_HEIGHT / h
    size = (max(1, round(w * scale)), TILE_HEIGHT)
    photo = cv2.resize(example.pixels, size, interpolation=cv2.INTER_AREA)
    first = photo.copy()
    _draw_boxes(first, example.boxes, RED, scale)
    _caption(first, f"{labels[example.label]} (top-1 {'ok' if example.predicted == example.label else 'wrong'})")
    tiles = [first]
    for method, heatmap in example.heatmaps.items():
        colour = cv2.applyColorMap(heatmap_to_uint8(heatmap), cv2.COLORMAP_JET)[..., ::-1]
        tile = cv2.addWeighted(photo, 0.45, cv2.resize(colour, size, interpolation=cv2.INTER_AREA), 0.55, 0)
        box = union_boxes_over_thresholds(heatmap, np.array([thresholds[method]]))
        _draw_boxes(tile, example.boxes, RED, scale)
        _draw_boxes(tile, box, GREEN, scale)
        iou = box_iou(box, example.boxes).max() if len(example.boxes) else 0.0
        _caption(tile, f"{method.upper()} t={thresholds[method]:.2f} IoU {iou:.2f}")
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def write_grid(
    examples: Sequence[Example], thresholds: Mapping[str, float], labels: Sequence[str], path: Path
) -> None:
    """Stack the examples' rows (padded to the widest) into one PNG at `path`."""
    rows = [example_row(e, thresholds, labels) for e in examples]
    if not rows:
        raise ValueError("no examples to draw")
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(padded, axis=0)).save(path)
