"""service/pipeline/boxes.py against explicit loops, full-size boxes (tests/box_oracles.py) and hand-made cases.
`service_boxes` is the service's own, on maps at their own size (where the resize is the identity)."""

from __future__ import annotations

import numpy as np
import pytest
from box_oracles import full_size_boxes, loop_components, loop_union_box
from hypothesis import given, settings
from hypothesis import strategies as st
from spa_service.pipeline.boxes import EMPTY_BOX, boxes_of_maps, union_boxes
from spa_service.pipeline.resize import resize_maps

FAST = settings(max_examples=80, deadline=None)


def service_boxes(heatmaps: np.ndarray, threshold: float, mode: str) -> list[list[tuple[int, int, int, int]]]:
    return boxes_of_maps(heatmaps, heatmaps.shape[-2:], threshold, mode)


# --- hand-made cases ---------------------------------------------------------------------------


def two_blobs() -> np.ndarray:
    heatmap = np.zeros((20, 30), dtype=np.float32)
    heatmap[2:10, 3:13] = 0.9  # 8 x 10 = 80 pixels
    heatmap[15:18, 24:27] = 0.6  # 3 x 3 = 9 pixels
    return heatmap


def test_two_blobs() -> None:
    heatmap = two_blobs()
    assert service_boxes(heatmap[None], 0.5, "all") == [[(3, 2, 12, 9), (24, 15, 26, 17)]]
    assert service_boxes(heatmap[None], 0.5, "largest") == [[(3, 2, 12, 9)]]
    assert service_boxes(heatmap[None], 0.5, "union") == [[(3, 2, 26, 17)]]
    # Above 0.6 only the big blob is left.
    assert service_boxes(heatmap[None], 0.7, "all") == [[(3, 2, 12, 9)]]


def test_all_sorts_by_area_not_position() -> None:
    heatmap = np.zeros((12, 12), dtype=np.float32)
    heatmap[0, 0] = 1.0  # first in raster order, smallest
    heatmap[5:8, 5:10] = 1.0
    heatmap[10:12, 0:2] = 1.0
    assert service_boxes(heatmap[None], 0.5, "all")[0] == [(5, 5, 9, 7), (0, 10, 1, 11), (0, 0, 0, 0)]
    assert service_boxes(heatmap[None], 0.5, "largest")[0] == [(5, 5, 9, 7)]


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_nothing_above_threshold(mode: str) -> None:
    heatmaps = np.full((2, 7, 9), 0.3, dtype=np.float32)
    expected = [[]] * 2 if mode == "all" else [[EMPTY_BOX]] * 2
    assert service_boxes(heatmaps, 0.31, mode) == expected


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_full_image(mode: str) -> None:
    assert service_boxes(np.ones((1, 7, 9), dtype=np.float32), 0.5, mode) == [[(0, 0, 8, 6)]]


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_single_pixel(mode: str) -> None:
    heatmap = np.zeros((1, 10, 8), dtype=np.float32)
    heatmap[0, 3, 5] = 0.4
    assert service_boxes(heatmap, 0.4, mode) == [[(5, 3, 5, 3)]]


@pytest.mark.parametrize("mode", ["union", "largest", "all"])
def test_threshold_equal_to_a_value_counts(mode: str) -> None:
    heatmap = np.zeros((1, 6, 6), dtype=np.float32)
    heatmap[0, 1:3, 2:5] = np.float32(0.25)
    assert service_boxes(heatmap, 0.25, mode) == [[(2, 1, 4, 2)]]
    assert service_boxes(heatmap, np.nextafter(np.float32(0.25), np.float32(1)), mode) == [
        [] if mode == "all" else [EMPTY_BOX]
    ]


def test_diagonal_neighbours_are_one_component() -> None:
    heatmap = np.eye(5, dtype=np.float32)
    assert service_boxes(heatmap[None], 0.5, "all")[0] == [(0, 0, 4, 4)]


def test_union_boxes_batched_with_an_empty_map() -> None:
    heatmaps = np.zeros((3, 20, 30), dtype=np.float32)
    heatmaps[0] = two_blobs()
    heatmaps[2, 19, 29] = 1.0
    boxes = union_boxes(heatmaps, 0.5)
    assert boxes.dtype == np.int64 and boxes.shape == (3, 4)
    assert boxes.tolist() == [[3, 2, 26, 17], [0, 0, 0, 0], [29, 19, 29, 19]]


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError):
        service_boxes(np.zeros((1, 3, 3), dtype=np.float32), 0.5, "biggest")  # type: ignore[arg-type]


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
    unions = service_boxes(heatmaps, threshold, "union")
    every = service_boxes(heatmaps, threshold, "all")
    largest = service_boxes(heatmaps, threshold, "largest")
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
    assert boxes_of_maps(maps, size, threshold, mode) == full_size_boxes(resize_maps(maps, size), threshold, mode)


def test_boxes_of_maps_band_by_band_on_a_large_image() -> None:
    """Over a band and a class chunk (BAND_ELEMENTS) apart: the same boxes as from the whole heatmaps."""
    maps = np.zeros((2, 7, 7), dtype=np.float32)
    maps[0, 1, 5] = maps[0, 6, 0] = 1.0  # two far corners: the union spans many bands
    maps[1, 3, 3] = 1.0
    size = (3000, 2500)
    full = resize_maps(maps, size)
    for mode in ("union", "largest", "all"):
        assert boxes_of_maps(maps, size, 0.5, mode) == full_size_boxes(full, 0.5, mode)
