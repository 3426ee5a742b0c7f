"""service/pipeline/resize.py against cv2.resize (INTER_LINEAR, float32)."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spa_service.pipeline.resize import (
    TILE_COLS,
    TILE_ROWS,
    linear_resize_matrix,
    resize_maps,
    resize_tiles,
    roundtrip_maps,
    roundtrip_matrix,
)

FAST = settings(max_examples=60, deadline=None)


def cv2_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.resize with size given as (H, W)."""
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def cv2_row_matrix(src: int, dst: int) -> np.ndarray:
    """cv2's (dst, src) weight matrix along rows, read off by resizing an identity."""
    return cv2_resize(np.eye(src, dtype=np.float32), (dst, src))


def cv2_col_matrix(src: int, dst: int) -> np.ndarray:
    return cv2_resize(np.eye(src, dtype=np.float32), (src, dst)).T


SIZE_PAIRS = [
    (14, 4000), (3000, 14), (14, 14), (1, 1), (1, 7), (7, 1), (14, 500), (14, 375),
    (500, 14), (375, 14), (28, 14), (14, 28), (224, 7), (13, 29), (29, 13), (2, 3), (3, 2),
]


@pytest.mark.parametrize(("src", "dst"), SIZE_PAIRS)
def test_matrix_is_cv2_weights_exactly(src: int, dst: int) -> None:
    ours = linear_resize_matrix(src, dst)
    assert ours.shape == (dst, src) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, cv2_row_matrix(src, dst))
    np.testing.assert_array_equal(ours, cv2_col_matrix(src, dst))


@given(src=st.integers(1, 300), dst=st.integers(1, 700))
@FAST
def test_matrix_matches_cv2_weights_for_any_sizes(src: int, dst: int) -> None:
    np.testing.assert_array_equal(linear_resize_matrix(src, dst), cv2_row_matrix(src, dst))


def test_equal_sizes_are_identity() -> None:
    np.testing.assert_array_equal(linear_resize_matrix(17, 17), np.eye(17, dtype=np.float32))
    np.testing.assert_allclose(roundtrip_matrix(17, 17), np.eye(17), atol=0)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((14, 14), (500, 375)), ((14, 14), (4000, 14)), ((3000, 14), (14, 4000)), ((14, 3000), (14, 14)),
     ((28, 28), (14, 14)), ((12, 20), (333, 77)), ((5, 7), (5, 7)), ((1, 1), (9, 4)), ((9, 4), (1, 1))],
)
def test_resize_maps_matches_cv2(shape: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape) + sum(size))
    image = rng.random(shape, dtype=np.float32)
    ours = resize_maps(image, size)
    assert ours.shape == size and ours.dtype == np.float32
    np.testing.assert_allclose(ours, cv2_resize(image, size), rtol=0, atol=1e-5)


def test_resize_maps_batches_over_leading_axes() -> None:
    rng = np.random.default_rng(3)
    maps = rng.random((2, 3, 14, 12), dtype=np.float32)
    ours = resize_maps(maps, (61, 45))
    assert ours.shape == (2, 3, 61, 45)
    for n in range(2):
        for k in range(3):
            np.testing.assert_allclose(ours[n, k], cv2_resize(maps[n, k], (61, 45)), atol=1e-5)


@given(
    h=st.integers(1, 40), w=st.integers(1, 40), big_h=st.integers(1, 600), big_w=st.integers(1, 600),
    seed=st.integers(0, 2**32 - 1),
)
@FAST
def test_resize_and_roundtrip_match_cv2_for_any_sizes(h: int, w: int, big_h: int, big_w: int, seed: int) -> None:
    image = np.random.default_rng(seed).random((h, w), dtype=np.float32)
    big = cv2_resize(image, (big_h, big_w))
    np.testing.assert_allclose(resize_maps(image, (big_h, big_w)), big, atol=1e-5)
    np.testing.assert_allclose(roundtrip_maps(image, (big_h, big_w)), cv2_resize(big, (h, w)), atol=1e-5)


@pytest.mark.parametrize(("n", "via"), [(14, 500), (14, 375), (28, 4000), (14, 3), (14, 14), (12, 1)])
def test_roundtrip_matrix_is_two_cv2_resizes(n: int, via: int) -> None:
    image = np.random.default_rng(n * via).random((n, 5), dtype=np.float32)
    twice = cv2_resize(cv2_resize(image, (via, 5)), (n, 5))
    np.testing.assert_allclose(roundtrip_matrix(n, via) @ image, twice, atol=1e-6)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError):
        linear_resize_matrix(0, 5)


@pytest.mark.parametrize(("n", "via"), [(7, 100_000), (14, 375), (28, 4000), (12, 1), (1, 9), (5, 5)])
def test_roundtrip_matrix_is_the_product_of_the_two_resize_matrices(n: int, via: int) -> None:
    dense = linear_resize_matrix(via, n, dtype=np.float64) @ linear_resize_matrix(n, via, dtype=np.float64)
    np.testing.assert_allclose(roundtrip_matrix(n, via, dtype=np.float64), dense, rtol=0, atol=1e-15)


def test_nothing_grows_with_the_long_side() -> None:
    """A 39,000,000 x 1 image's round trip and a 2 x 16,000,000 one's tiles, within a few MB: no
    matrix as long as a side (those took 4.4 GB and 1.6 GB)."""
    maps = np.random.default_rng(0).random((3, 7, 7), dtype=np.float32)
    tracemalloc.start()
    try:
        roundtrip_maps(maps, (1, 39_000_000))
        roundtrip_maps(maps, (39_000_000, 1))
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 1e6, f"round trips: {peak / 1e6:.1f} MB"
        tracemalloc.reset_peak()
        covered = 0
        for rows, cols, tile in resize_tiles(maps, (2, 16_000_000)):
            assert tile.shape[-2:] == (rows.stop - rows.start, cols.stop - cols.start)
            covered += tile.shape[-2] * tile.shape[-1]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert covered == 2 * 16_000_000
    assert peak < 3 * 4 * TILE_ROWS * TILE_COLS * 2, f"tiles: {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("size", [(3, 40_000), (TILE_ROWS * 2 + 5, TILE_COLS + 3), (1, 1)])
def test_tiles_cover_the_output_once_and_match_cv2(size: tuple[int, int]) -> None:
    maps = np.random.default_rng(size[1]).random((2, 9, 11), dtype=np.float32)
    seen = np.zeros(size, dtype=int)
    for rows, cols, tile in resize_tiles(maps, size):
        assert tile.shape[-2] <= TILE_ROWS and tile.shape[-1] <= TILE_COLS
        seen[rows, cols] += 1
    assert (seen == 1).all()
    for k in range(2):
        np.testing.assert_allclose(resize_maps(maps, size)[k], cv2_resize(maps[k], size), atol=1e-5)
