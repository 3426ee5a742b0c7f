"""Boxes of full-size heatmaps computed the obvious way: the oracles for service/pipeline/boxes.py, which finds the
boxes of the maps' resize tile by tile without ever holding the full-size heatmaps. The loops go pixel
by pixel (for small cases); `full_size_boxes` uses numpy and cv2 directly on whole masks (for large ones)."""

from __future__ import annotations

import cv2
import numpy as np
from spa_service.arrays import Array, to_numpy

Box = tuple[int, int, int, int]
EMPTY_BOX: Box = (0, 0, 0, 0)  # what the authors' code reports when nothing passes


def loop_union_box(heatmap: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    height, width = heatmap.shape
    x0, y0, x1, y1 = width, height, -1, -1
    for y in range(height):
        for x in range(width):
            if heatmap[y, x] >= threshold:
                x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
    return EMPTY_BOX if x1 < 0 else (x0, y0, x1, y1)


def loop_components(heatmap: np.ndarray, threshold: float) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(pixel count, box) of each 8-connected component, found by flood fill in raster order."""
    height, width = heatmap.shape
    seen = [[False] * width for _ in range(height)]
    found = []
    for y in range(height):
        for x in range(width):
            if seen[y][x] or heatmap[y, x] < threshold:
                continue
            seen[y][x] = True
            stack, count, box = [(y, x)], 0, [x, y, x, y]
            while stack:
                cy, cx = stack.pop()
                count += 1
                box = [min(box[0], cx), min(box[1], cy), max(box[2], cx), max(box[3], cy)]
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < height and 0 <= nx < width and not seen[ny][nx] and heatmap[ny, nx] >= threshold:
                            seen[ny][nx] = True
                            stack.append((ny, nx))
            found.append((count, tuple(box)))
    return found


def full_size_boxes(heatmaps: Array, threshold: float, mode: str) -> list[list[Box]]:
    """(K, H, W) heatmaps (cupy ones are copied to the host) -> per map: [its union box], [the box of its
    largest 8-connected component], or every component's box by pixel count, descending, ties in cv2's
    label order; EMPTY_BOX (union, largest) or [] (all) when no pixel is >= threshold."""
    result = []
    for heatmap in to_numpy(heatmaps):
        mask = heatmap >= threshold
        if mode == "union":
            ys, xs = np.nonzero(mask)
            result.append([(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if xs.size else EMPTY_BOX])
            continue
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        ranked = sorted((-int(area), label, (int(x), int(y), int(x + w - 1), int(y + h - 1)))
                        for label, (x, y, w, h, area) in enumerate(stats[1:].tolist()))
        boxes = [box for _, _, box in ranked]
        result.append((boxes[:1] or [EMPTY_BOX]) if mode == "largest" else boxes)
    return result
