"""The `--examples` grid: per image, the photo with its ground-truth boxes, then each method's heatmap
over it with the box at that method's threshold (ground truth red, prediction green)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from spa_service.pipeline.heatmap_png import heatmap_to_uint8

from .metrics import box_iou, union_boxes_over_thresholds
from .runner import Example

TILE_HEIGHT = 160  # the picture's height; its caption band sits above it
CAPTION_LINES = 2
LINE_HEIGHT = 14
CAPTION_HEIGHT = CAPTION_LINES * LINE_HEIGHT + 4
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.42
TILE_GAP = 3  # white columns between panels
MIN_FONT_SCALE = 0.3  # smaller is unreadable: the text is cut (with "..") instead
RED = (230, 30, 30)
GREEN = (40, 230, 60)


def _draw_boxes(tile: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int], scale: float) -> None:
    for x0, y0, x1, y1 in boxes:
        p0 = (int(round(x0 * scale)), int(round(y0 * scale)))
        p1 = (int(round((x1 + 1) * scale)) - 1, int(round((y1 + 1) * scale)) - 1)
        cv2.rectangle(tile, p0, p1, colour, 2)


def text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def fit_caption(text: str, width: int) -> tuple[str, float]:
    """The text and font scale that fit `width` pixels less a margin: the scale shrinks down to
    MIN_FONT_SCALE, then the text is cut."""
    room = width - 6
    scale = max(MIN_FONT_SCALE, min(FONT_SCALE, FONT_SCALE * room / max(text_width(text, FONT_SCALE), 1)))
    while text_width(text, scale) > room and len(text) > 1:
        text = text[:-3].rstrip() + ".." if len(text) > 3 else text[:-1]
    return text, scale


def captioned(picture: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """(h, w, 3) picture -> (CAPTION_HEIGHT + h, w, 3): a white band above it with up to CAPTION_LINES
    lines of black text, each fitted to the width (so no caption runs into the next panel)."""
    band = np.full((CAPTION_HEIGHT, picture.shape[1], 3), 255, dtype=np.uint8)
    for row, line in enumerate(lines[:CAPTION_LINES]):
        text, scale = fit_caption(line, picture.shape[1])
        cv2.putText(band, text, (3, LINE_HEIGHT * (row + 1) - 2), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, picture], axis=0)


def example_row(example: Example, thresholds: Mapping[str, float], labels: Sequence[str]) -> np.ndarray:
    """(CAPTION_HEIGHT + TILE_HEIGHT, W, 3) uint8 RGB: the photo, then one heatmap tile per method in
    `example.heatmaps`, each with its caption above it."""
    h, w = example.pixels.shape[:2]
    scale = TILE_HEIGHT / h
    size = (max(1, round(w * scale)), TILE_HEIGHT)
    photo = cv2.resize(example.pixels, size, interpolation=cv2.INTER_AREA)
    first = photo.copy()
    _draw_boxes(first, example.boxes, RED, scale)
    verdict = "right" if example.predicted == example.label else f"wrong: {labels[example.predicted]}"
    tiles = [captioned(first, [labels[example.label], f"top-1 {verdict}"])]
    for method, heatmap in example.heatmaps.items():
        colour = cv2.applyColorMap(heatmap_to_uint8(heatmap), cv2.COLORMAP_JET)[..., ::-1]
        tile = cv2.addWeighted(photo, 0.45, cv2.resize(colour, size, interpolation=cv2.INTER_AREA), 0.55, 0)
        box = union_boxes_over_thresholds(heatmap, np.array([thresholds[method]]))
        _draw_boxes(tile, example.boxes, RED, scale)
        _draw_boxes(tile, box, GREEN, scale)
        iou = box_iou(box, example.boxes).max() if len(example.boxes) else 0.0
        tiles.append(captioned(tile, [f"{method.upper()} t={thresholds[method]:.2f}", f"IoU {iou:.2f}"]))
    gap = np.full((tiles[0].shape[0], TILE_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


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
