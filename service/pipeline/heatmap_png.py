"""Maps out as grayscale PNGs, value round(255 * map), at the image's size or a capped one."""

from __future__ import annotations

import cv2
import numpy as np

from ..arrays import Array, to_numpy
from .resize import resize_tiles


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) float map in [0, 1] to uint8, value round(255 * map)."""
    return np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def heatmap_png_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) of the PNG for a heatmap of `size` = (H, W): the same, or proportionally smaller so
    that its long side is at most `max_side`."""
    height, width = size
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def heatmap_png_max_side(map_shape: tuple[int, ...], max_side: int, cell_px: int) -> int:
    """The long side a map's PNG may have: `max_side`, and with `cell_px` > 0 at most `cell_px` pixels
    per cell of the (h, w) map along its long side. A bilinear upsample holds no detail the map lacks:
    at 32 pixels a cell, stretched back to the image, it is within a few grey levels of the full-size one."""
    return max_side if cell_px == 0 else min(max_side, cell_px * max(map_shape[-2:]))


def encode_heatmap_png(map_: Array, size: tuple[int, int], *, max_side: int) -> tuple[bytes, int, int]:
    """Grayscale 8-bit PNG, value round(255 * heatmap), of a (h, w) map resized to `size` = (H, W).

    When the long side of `size` exceeds `max_side`, the map is resized straight to the smaller
    size of `heatmap_png_size` (the full-size heatmap sampled at the PNG's pixel centres). Built
    tile by tile in uint8: no full-size float map. Returns (png bytes, width, height).
    """
    png_size = heatmap_png_size(size, max_side)
    pixels = np.empty(png_size, dtype=np.uint8)
    for rows, cols, tile in resize_tiles(map_, png_size):
        pixels[rows, cols] = heatmap_to_uint8(to_numpy(tile))
    # One filter for every row, Sub, instead of libpng choosing among five per row: a bilinearly
    # upsampled map is smooth along its rows, so Sub alone is faster and compresses as well or better.
    ok, png = cv2.imencode(
        ".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    )
    if not ok:  # pragma: no cover - OpenCV fails only on invalid shapes, excluded above
        raise RuntimeError("PNG encoding failed")
    return png.tobytes(), pixels.shape[1], pixels.shape[0]
