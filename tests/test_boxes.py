"""service/boxes.py against an explicit-loop implementation and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_service.boxes import EMPTY_BOX, boxes_from_heatmaps, boxes_of_maps, component_boxes, union_boxes
from spa_service.resize import resize_maps

FAST = settings(max_examples=80, deadline=None)


# --- loop implementation: pixel by pixel, no numpy search helpers -----------------------------


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


# --- hand-made cases ---------------------------------------------------------------------------


def two_blobs() -> np.ndarray:
    heatmap = np.zeros((20, 30), dtype=np.float32)
    heatmap[2:10, 3:13] = 0.9  # 8 x 10 = 80 pixels
    heatmap[15:18, 24:27] = 0.6  # 3 x 3 = 9 pixels
    return heatmap


def test_two_blobs() -> None:
    heatmap = two_blobs()
    assert boxes_from_heatmaps(heatmap[None], 0.5, "all") == [[(3, 2, 12, 9), (24, 15, 26, 17)]]
    assert boxes_from_heatmaps(heatmap[None], 0.5, "largest") == [[(3, 2, 12, 9)]]
    assert boxes_from_heatmaps(heatmap[None], 0.5, "union") == [[(3, 2, 26, 17)]]
    # Above 0.6 only the big blob is left.
    assert boxes_from_heatmaps(heatmap[None], 0.7, "all") == [[(3, 2, 12, 9)]]


def test_all_sorts_by_area_not_position() -> None:
    heatmap = np.zeros((12, 12), dtype=np.float32)
    heatmap[0, 0] = 1.0  # first in raster order, smallest
    heatmap[5:8, 5:10] = 1.0
    heatmap[10:12, 0:2] = 1.0
    assert component_boxes(heatmap, 0.5, "all") == [(5, 5, 9, 7), (0, 10, 1, 11), (0, 0, 0, 0)]
    assert component_boxes(heatmap, 0.5, "largest") == [(5, 5, 9, 7)]


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_nothing_above_threshold(mode: str) -> None:
    heatmaps = np.full((2, 7, 9), 0.3, dtype=np.float32)
    expected = [[]] * 2 if mode == "all" else [[EMPTY_BOX]] * 2
    assert boxes_from_heatmaps(heatmaps, 0.31, mode) == expected


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_full_image(mode: str) -> None:
    assert boxes_from_heatmaps(np.ones((1, 7, 9), dtype=np.float32), 0.5, mode) == [[(0, 0, 8, 6)]]


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_single_pixel(mode: str) -> None:
    heatmap = np.zeros((1, 10, 8), dtype=np.float32)
    heatmap[0, 3, 5] = 0.4
    assert boxes_from_heatmaps(heatmap, 0.4, mode) == [[(5, 3, 5, 3)]]


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_threshold_equal_to_a_value_counts(mode: str) -> None:
    heatmap = np.zeros((1, 6, 6), dtype=np.float32)
    heatmap[0, 1:3, 2:5] = np.float32(0.25)
    assert boxes_from_heatmaps(heatmap, 0.25, mode) == [[(2, 1, 4, 2)]]
    assert boxes_from_heatmaps(heatmap, np.nextafter(np.float32(0.25), np.float32(1)), mode) == [
        [] if mode == "all" else [EMPTY_BOX]
    ]


def test_diagonal_neighbours_are_one_component() -> None:
    heatmap = np.eye(5, dtype=np.float32)
    assert component_boxes(heatmap, 0.5, "all") == [(0, 0, 4, 4)]


def test_union_boxes_batched_with_an_empty_map() -> None:
    heatmaps = np.zeros((3, 20, 30), dtype=np.float32)
    heatmaps[0] = two_blobs()
    heatmaps[2, 19, 29] = 1.0
    boxes = union_boxes(heatmaps, 0.5)
    assert boxes.dtype == np.int64 and boxes.shape == (3, 4)
    assert boxes.tolist() == [[3, 2, 26, 17], [0, 0, 0, 0], [29, 19, 29, 19]]


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError):
        boxes_from_heatmaps(np.zeros((1, 3, 3), dtype=np.float32), 0.5, "biggest")  # type: ignore[arg-type]


# --- properties --------------------------------------------------------------------------------

LEVELS = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)  # exact ties with thresholds


@st.composite
def heatmap_stacks(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    k, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.02, 0.2, 0.5, 0.9]))
    # Sparse blobs of a few levels: many components, some touching only diagonally.
    levels = LEVELS[rng.integers(0, len(LEVELS), (k, height, width))]
    heatmaps = np.where(rng.random((k, height, width)) < density, levels, 0).astype(np.float32)
    return heatmaps, float(draw(st.sampled_from(LEVELS[1:].tolist())))


@given(heatmap_stacks())
@FAST
def test_union_matches_loops_and_is_tight(case: tuple[np.ndarray, float]) -> None:
    heatmaps, threshold = case
    k, height, width = heatmaps.shape
    boxes = union_boxes(heatmaps, threshold)
    for heatmap, (x0, y0, x1, y1) in zip(heatmaps, boxes.tolist(), strict=True):
        assert (x0, y0, x1, y1) == loop_union_box(heatmap, threshold)
        passing = heatmap >= threshold
        if not passing.any():
            assert (x0, y0, x1, y1) == EMPTY_BOX
            continue
        assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height
        inside = np.zeros_like(passing)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        assert not (passing & ~inside).any()  # every passing pixel is in the box
        # ... and the box is tight: each of its edges touches a passing pixel.
        assert passing[y0, x0 : x1 + 1].any() and passing[y1, x0 : x1 + 1].any()
        assert passing[y0 : y1 + 1, x0].any() and passing[y0 : y1 + 1, x1].any()


@given(heatmap_stacks())
@FAST
def test_components_match_loops_and_lie_inside_the_union(case: tuple[np.ndarray, float]) -> None:
    heatmaps, threshold = case
    unions = boxes_from_heatmaps(heatmaps, threshold, "union")
    every = boxes_from_heatmaps(heatmaps, threshold, "all")
    largest = boxes_from_heatmaps(heatmaps, threshold, "largest")
    for heatmap, [union], boxes, [biggest] in zip(heatmaps, unions, every, largest, strict=True):
        expected = loop_components(heatmap, threshold)
        areas = {box: count for count, box in expected}
        assert sorted(boxes) == sorted(box for _, box in expected)
        assert [areas[b] for b in boxes] == sorted((areas[b] for b in boxes), reverse=True)
        if not boxes:
            assert biggest == EMPTY_BOX
            continue
        assert areas[biggest] == max(areas.values()) and biggest == boxes[0]
        for x0, y0, x1, y1 in boxes:
            assert union[0] <= x0 <= x1 <= union[2] and union[1] <= y0 <= y1 <= union[3]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    map_size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    threshold=st.floats(0.0, 1.0),
    mode=st.sampled_from(["union", "largest", "all"]),
)
def test_boxes_of_maps_equal_boxes_of_the_full_size_heatmaps(seed, map_size, size, threshold, mode) -> None:
    maps = np.random.default_rng(seed).random((3, *map_size), dtype=np.float32) ** 2
    assert boxes_of_maps(maps, size, threshold, mode) == boxes_from_heatmaps(resize_maps(maps, size), threshold, mode)


def test_boxes_of_maps_band_by_band_on_a_large_image() -> None:
    """Over a band and a class chunk (BAND_ELEMENTS) apart: the same boxes as from the whole heatmaps."""
    maps = np.zeros((2, 7, 7), dtype=np.float32)
    maps[0, 1, 5] = maps[0, 6, 0] = 1.0  # two far corners: the union spans many bands
    maps[1, 3, 3] = 1.0
    size = (3000, 2500)
    full = resize_maps(maps, size)
    for mode in ("union", "largest", "all"):
        assert boxes_of_maps(maps, size, 0.5, mode) == boxes_from_heatmaps(full, 0.5, mode)
