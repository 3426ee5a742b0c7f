"""OpenCV INTER_LINEAR resizing written as matrices: resize(X) = Ry @ X @ Rx^T.

Matrices batch over classes and images, run on numpy or cupy alike, and let SCG's step 9
(class map up to the image size and back down) collapse into one small n x n matrix per axis.
Nothing here grows with the image's long side beyond the output asked for: the weights are
built for the rows and columns of one tile at a time from cv2's two taps per output, and the
round trip is composed tap by tap, so a 39,000,000 x 1 image costs what its tiles cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from ..arrays import Array, array_namespace, float_dtype

TILE_ROWS = 64  # rows per tile of a full-size resize
TILE_COLS = 1 << 14  # columns per tile: the whole width of any image up to 16,384 px wide


def _cv2_taps(src: int, dst: int, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2's two source taps and their float32 weights for the output positions `outputs` of a
    length-`src` signal resized to length `dst`.

    Matches cv2.resize (INTER_LINEAR, float input) bit for bit: the source coordinate and its
    fraction are computed in double precision, the fraction is then rounded to float32 and the
    left weight is 1 - fraction in float32. Positions left of the first centre or right of the
    last clamp to the edge pixel with weight 1.
    """
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be positive, got src={src}, dst={dst}")
    coord = (outputs.astype(np.float64) + 0.5) * (src / dst) - 0.5
    left = np.floor(coord)
    frac = coord - left
    left = left.astype(np.int64)
    clamp = (left < 0) | (left >= src - 1)
    left = np.clip(left, 0, src - 1)
    frac[clamp] = 0.0
    w_right = frac.astype(np.float32)
    w_left = np.float32(1.0) - w_right
    right = np.minimum(left + 1, src - 1)
    return left, right, w_left, w_right


def linear_resize_matrix(
    src: int, dst: int, *, start: int = 0, stop: int | None = None, xp: ModuleType = np, dtype: Any = np.float32
) -> Array:
    """Rows `start` to `stop` (default: all `dst`) of the (dst, src) matrix R with R @ x == cv2.resize
    of a length-`src` signal to length `dst`.

    Half-pixel centres, sx = (dx + 0.5) * src / dst - 0.5, clamped at the borders as OpenCV does.
    Each row holds at most two non-zero weights summing to 1 (up to float32 rounding).
    """
    stop = dst if stop is None else stop
    left, right, w_left, w_right = (xp.asarray(a) for a in _cv2_taps(src, dst, np.arange(start, stop)))
    matrix = xp.zeros((stop - start, src), dtype=dtype)
    rows = xp.arange(stop - start)
    matrix[rows, left] = w_left
    matrix[rows, right] += w_right  # right == left only where w_right is 0
    return matrix


def roundtrip_matrix(n: int, via: int, *, xp: ModuleType = np, dtype: Any = np.float32) -> Array:
    """(n, n) matrix of "resize n -> via, then via -> n" along one axis (SCG step 9).

    Replaces two cv2.resize calls through an image-sized intermediate; the only difference
    is that the intermediate is not rounded to float32 (differences ~1e-7). Each output reads
    two positions of the intermediate, each of which reads two inputs: the product is composed
    from those 4 n taps (float64), never from the (via, n) matrices.
    """
    down_left, down_right, down_w_left, down_w_right = _cv2_taps(via, n, np.arange(n))
    up_left, up_right, up_w_left, up_w_right = _cv2_taps(n, via, np.concatenate([down_left, down_right]))
    rows = np.tile(np.arange(n), 2)
    weight = np.concatenate([down_w_left, down_w_right]).astype(np.float64)
    matrix = np.zeros((n, n), dtype=np.float64)
    np.add.at(matrix, (rows, up_left), weight * up_w_left)
    np.add.at(matrix, (rows, up_right), weight * up_w_right)
    return xp.asarray(matrix.astype(dtype))


def _rows_first(h: int, w: int, out_h: int, out_w: int) -> bool:
    """Whether (rows @ maps) @ cols^T is cheaper than rows @ (maps @ cols^T) for these sizes."""
    return h * out_w * (w + out_h) > out_h * w * (h + out_w)


def tile_shape(size: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of the largest tile `resize_tiles` yields for an output of `size` = (H, W)."""
    height, width = size
    return min(TILE_ROWS, height), min(TILE_COLS, width)


def resize_tiles(maps: Array, size: tuple[int, int]) -> Iterator[tuple[slice, slice, Array]]:
    """Resize float maps (..., h, w) to (..., H, W), yielding (rows, columns, tile (..., r, c)) with
    at most TILE_ROWS x TILE_COLS values per map, so that the full-size maps of a large image, and
    any matrix as long as its sides, need never exist.

    Each tile's values depend on nothing but its place, the output size and the one map they come
    from: the same whichever other maps are in `maps`, and the same as `resize_maps`. Same
    namespace as `maps`.
    """
    xp = array_namespace(maps)
    dtype = float_dtype(xp, maps)
    maps = xp.asarray(maps, dtype=dtype)
    h, w = maps.shape[-2:]
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"sizes must be positive, got {size}")
    tile_rows, tile_cols = tile_shape(size)
    rows_first = _rows_first(h, w, height, tile_cols)
    for left in range(0, width, tile_cols):
        right = min(left + tile_cols, width)
        cols = linear_resize_matrix(w, width, start=left, stop=right, xp=xp, dtype=dtype)
        resized_cols = None if rows_first else xp.matmul(maps, cols.T)  # (..., h, c), shared by the rows
        for top in range(0, height, tile_rows):
            bottom = min(top + tile_rows, height)
            rows = linear_resize_matrix(h, height, start=top, stop=bottom, xp=xp, dtype=dtype)
            tile = xp.matmul(xp.matmul(rows, maps), cols.T) if rows_first else xp.matmul(rows, resized_cols)
            yield slice(top, bottom), slice(left, right), tile


def resize_maps(maps: Array, size: tuple[int, int]) -> Array:
    """Resize float maps (..., h, w) to (..., H, W) as cv2.resize(INTER_LINEAR) does each map.

    `size` is (H, W) (note: cv2 takes (W, H)). Float32 out (float64 for float64 maps), same
    namespace as `maps`. Not clipped: like cv2, a map in [0, 1] may come back ~1e-7 outside it.
    Computed tile by tile (`resize_tiles`), so its values are the tiles' exactly.
    """
    xp = array_namespace(maps)
    out = xp.empty((*maps.shape[:-2], *size), dtype=float_dtype(xp, maps))
    for rows, cols, tile in resize_tiles(maps, size):
        out[..., rows, cols] = tile
    return out


def roundtrip_maps(maps: Array, via: tuple[int, int]) -> Array:
    """Maps (..., h, w) resized to `via` = (H, W) and back to (h, w), without the (H, W) image.

    This is SCG step 9 for one image (`via` is its original size); float32 out (float64 kept).
    """
    xp = array_namespace(maps)
    dtype = float_dtype(xp, maps)
    maps = xp.asarray(maps, dtype=dtype)
    h, w = maps.shape[-2:]
    rows = roundtrip_matrix(h, via[0], xp=xp, dtype=dtype)
    cols = roundtrip_matrix(w, via[1], xp=xp, dtype=dtype)
    return xp.matmul(rows, xp.matmul(maps, cols.T))  # square matrices: either order costs the same
