"""OpenCV INTER_LINEAR resizing written as matrices: resize(X) = Ry @ X @ Rx^T.

Matrices batch over classes and images, run on numpy or cupy alike, and let SCG's step 9
(class map up to the image size and back down) collapse into one small n x n matrix per axis.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from .arrays import Array, array_namespace, float_dtype


@lru_cache(maxsize=256)
def _cv2_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2's two source taps and their float32 weights for each of the `dst` outputs.

    Matches cv2.resize (INTER_LINEAR, float input) bit for bit: the source coordinate and its
    fraction are computed in double precision, the fraction is then rounded to float32 and the
    left weight is 1 - fraction in float32. Positions left of the first centre or right of the
    last clamp to the edge pixel with weight 1.
    """
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be positive, got src={src}, dst={dst}")
    coord = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    left = np.floor(coord)
    frac = coord - left
    left = left.astype(np.int64)
    clamp = (left < 0) | (left >= src - 1)
    left = np.clip(left, 0, src - 1)
    frac[clamp] = 0.0
    w_right = frac.astype(np.float32)
    w_left = np.float32(1.0) - w_right
    right = np.minimum(left + 1, src - 1)
    for a in (left, right, w_left, w_right):
        a.flags.writeable = False  # cached and shared between calls
    return left, right, w_left, w_right


def linear_resize_matrix(src: int, dst: int, *, xp: ModuleType = np, dtype: Any = np.float32) -> Array:
    """(dst, src) matrix R with R @ x == cv2.resize of a length-`src` signal to length `dst`.

    Half-pixel centres, sx = (dx + 0.5) * src / dst - 0.5, clamped at the borders as OpenCV does.
    Each row holds at most two non-zero weights summing to 1 (up to float32 rounding).
    """
    left, right, w_left, w_right = (xp.asarray(a) for a in _cv2_taps(src, dst))
    matrix = xp.zeros((dst, src), dtype=dtype)
    rows = xp.arange(dst)
    matrix[rows, left] = w_left
    matrix[rows, right] += w_right  # right == left only where w_right is 0
    return matrix


def roundtrip_matrix(n: int, via: int, *, xp: ModuleType = np, dtype: Any = np.float32) -> Array:
    """(n, n) matrix of "resize n -> via, then via -> n" along one axis (SCG step 9).

    Replaces two cv2.resize calls through an image-sized intermediate; the only difference
    is that the intermediate is not rounded to float32 (differences ~1e-7).
    """
    up = linear_resize_matrix(n, via, xp=xp, dtype=np.float64)
    down = linear_resize_matrix(via, n, xp=xp, dtype=np.float64)
    return (down @ up).astype(dtype)


def _rows_first(h: int, w: int, out_h: int, out_w: int) -> bool:
    """Whether (rows @ maps) @ cols^T is cheaper than rows @ (maps @ cols^T) for these sizes."""
    return h * out_w * (w + out_h) > out_h * w * (h + out_w)


def _apply(maps: Array, rows: Array, cols: Array) -> Array:
    """rows @ maps @ cols^T over the last two axes, in the cheaper association order."""
    xp = array_namespace(maps)
    h, w = maps.shape[-2:]
    if _rows_first(h, w, rows.shape[0], cols.shape[0]):
        return xp.matmul(xp.matmul(rows, maps), cols.T)
    return xp.matmul(rows, xp.matmul(maps, cols.T))


BAND_ROWS = 64  # rows per band of a full-size resize; fixed, so the values never depend on batching


def resize_bands(maps: Array, size: tuple[int, int]) -> Iterator[tuple[int, Array]]:
    """Resize float maps (..., h, w) to (..., H, W), yielding (first row, band (..., r, W)) of at
    most BAND_ROWS rows, so that the full-size maps of a large image need never exist at once.

    Each band's values depend on nothing but its rows and the one map they come from: the same
    whichever other maps are in `maps`, and the same as `resize_maps`. Same namespace as `maps`.
    """
    xp = array_namespace(maps)
    dtype = float_dtype(xp, maps)
    maps = xp.asarray(maps, dtype=dtype)
    h, w = maps.shape[-2:]
    height, width = size
    rows = linear_resize_matrix(h, height, xp=xp, dtype=dtype)
    cols = linear_resize_matrix(w, width, xp=xp, dtype=dtype)
    rows_first = _rows_first(h, w, height, width)
    right = None if rows_first else xp.matmul(maps, cols.T)
    for start in range(0, height, BAND_ROWS):
        band = rows[start : start + BAND_ROWS]
        if rows_first:
            yield start, xp.matmul(xp.matmul(band, maps), cols.T)
        else:
            yield start, xp.matmul(band, right)


def resize_maps(maps: Array, size: tuple[int, int]) -> Array:
    """Resize float maps (..., h, w) to (..., H, W) as cv2.resize(INTER_LINEAR) does each map.

    `size` is (H, W) (note: cv2 takes (W, H)). Float32 out (float64 for float64 maps), same
    namespace as `maps`. Not clipped: like cv2, a map in [0, 1] may come back ~1e-7 outside it.
    Computed band by band (`resize_bands`), so its values are the bands' exactly.
    """
    xp = array_namespace(maps)
    out = xp.empty((*maps.shape[:-2], *size), dtype=float_dtype(xp, maps))
    for start, band in resize_bands(maps, size):
        out[..., start : start + band.shape[-2], :] = band
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
    return _apply(maps, rows, roundtrip_matrix(w, via[1], xp=xp, dtype=dtype))
