"""Boxes from heatmaps (docs/reference.md section 5).

A box is (x0, y0, x1, y1), inclusive on both ends, in the pixel grid of the heatmap it came
from. A pixel is in when its value is >= the threshold. `boxes_of_maps` takes maps at the class
map's resolution and finds the boxes of their full-size resize tile by tile, so that a large
image never has its full-size float heatmaps in memory; `boxes_from_heatmaps` takes full-size
heatmaps that already exist.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from ..arrays import Array, array_namespace, to_numpy
from .resize import resize_tiles, tile_shape

BoxMode = Literal["union", "largest", "all"]
Box = tuple[int, int, int, int]
EMPTY_BOX: Box = (0, 0, 0, 0)  # what the authors' code reports when nothing passes
BAND_ELEMENTS = 1 << 22  # float32 values per band of full-size maps: 16 MB, whatever the image


def union_boxes(heatmaps: Array, threshold: float) -> Array:
    """(K, H, W) heatmaps -> (K, 4) int64: the box of all pixels >= threshold, (0, 0, 0, 0) if none.

    Same namespace as the input (numpy or cupy).
    """
    passing = heatmaps >= threshold
    return _projection_boxes(passing.any(axis=2), passing.any(axis=1))


def _projection_boxes(rows: Array, cols: Array) -> Array:
    """(K, H) and (K, W) "some pixel passes in this row / column" -> (K, 4) union boxes."""
    xp = array_namespace(rows)
    height, width = rows.shape[1], cols.shape[1]
    # argmax finds the first True; on the reversed axis, the last one.
    y0 = xp.argmax(rows, axis=1)
    y1 = height - 1 - xp.argmax(rows[:, ::-1], axis=1)
    x0 = xp.argmax(cols, axis=1)
    x1 = width - 1 - xp.argmax(cols[:, ::-1], axis=1)
    boxes = xp.stack([x0, y0, x1, y1], axis=1).astype(xp.int64)
    return xp.where(rows.any(axis=1)[:, None], boxes, 0)


def _mask_component_boxes(mask: np.ndarray, mode: Literal["largest", "all"]) -> list[Box]:
    # 16-bit labels halve the label image of a large mask; a heatmap resized from an h x w map
    # has O(h * w) components, far below 65,535.
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_16U)
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


def boxes_of_maps(maps: Array, size: tuple[int, int], threshold: float, mode: BoxMode = "union") -> list[list[Box]]:
    """(K, h, w) maps -> boxes per map of their resize to `size` = (H, W), as `boxes_from_heatmaps`
    gives on `resize.resize_maps(maps, size)`, without that (K, H, W) array.

    union: tiles for a few classes at a time, at most BAND_ELEMENTS floats, reduced to
    row and column projections. largest / all: one class at a time, its full-size mask as uint8.
    """
    if mode not in ("union", "largest", "all"):
        raise ValueError(f"unknown box mode {mode!r}")
    xp = array_namespace(maps)
    k = maps.shape[0]
    height, width = size
    if mode == "union":
        tile_rows, tile_cols = tile_shape(size)
        # Tiles and row / column projections both stay within BAND_ELEMENTS, however long a side is.
        per_chunk = max(1, BAND_ELEMENTS // max(tile_rows * tile_cols, height + width))
        boxes = []
        for first in range(0, k, per_chunk):
            chunk = maps[first : first + per_chunk]
            rows = xp.zeros((chunk.shape[0], height), dtype=bool)
            cols = xp.zeros((chunk.shape[0], width), dtype=bool)
            for tile_rows_at, tile_cols_at, tile in resize_tiles(chunk, size):
                passing = tile >= threshold
                rows[:, tile_rows_at] |= passing.any(axis=2)
                cols[:, tile_cols_at] |= passing.any(axis=1)
            boxes.extend(to_numpy(_projection_boxes(rows, cols)).tolist())
        return [[tuple(box)] for box in boxes]
    result = []
    for one in maps:
        mask = np.empty((height, width), dtype=np.uint8)
        for tile_rows_at, tile_cols_at, tile in resize_tiles(one, size):
            mask[tile_rows_at, tile_cols_at] = to_numpy(tile >= threshold)
        found = _mask_component_boxes(mask, mode)
        result.append(found if found or mode == "all" else [EMPTY_BOX])
    return result
