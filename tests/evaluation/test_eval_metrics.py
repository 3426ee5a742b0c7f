"""Metric functions against hand-computed cases (SPA_REFERENCE.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from spa_service.boxes import component_boxes, union_boxes
from spa_service.evaluation import metrics as m
from spa_service.evaluation.tally import MethodTally


def kinds(class_correct: bool, pred: list, gt: list) -> list[str]:
    return [m.ERROR_KINDS[k] for k in m.error_kinds(class_correct, np.array(pred), np.array(gt))]


# --- boxes -------------------------------------------------------------------------------------------


def test_iou_is_inclusive_one_to_many() -> None:
    # 10 x 10 boxes overlapping on 5 x 5 pixels: 25 / (100 + 100 - 25).
    iou = m.box_iou(np.array([[0, 0, 9, 9]]), np.array([[5, 5, 14, 14], [0, 0, 9, 9], [10, 0, 19, 9]]))
    assert iou.shape == (1, 3)
    np.testing.assert_allclose(iou[0], [25 / 175, 1.0, 0.0])


def test_single_pixel_box_has_area_one() -> None:
    assert m.box_iou(np.array([[3, 3, 3, 3]]), np.array([[3, 3, 3, 3]]))[0, 0] == 1.0
    # Touching edges share no pixel.
    assert m.box_iou(np.array([[0, 0, 4, 4]]), np.array([[5, 0, 9, 4]]))[0, 0] == 0.0
    # Sharing one column of 5 pixels: 5 / (25 + 25 - 5).
    assert m.box_iou(np.array([[0, 0, 4, 4]]), np.array([[4, 0, 8, 4]]))[0, 0] == pytest.approx(5 / 45)


def test_iog_and_iop() -> None:
    ov = m.box_overlaps(np.array([[0, 0, 9, 9]]), np.array([[0, 0, 19, 19], [5, 0, 9, 9]]))
    np.testing.assert_allclose(ov.iou[0], [100 / 400, 50 / 100])
    np.testing.assert_allclose(ov.iog[0], [100 / 400, 1.0])
    np.testing.assert_allclose(ov.iop[0], [1.0, 0.5])


# --- error breakdown ---------------------------------------------------------------------------------

GT = [[0, 0, 9, 9]]


@pytest.mark.parametrize(
    ("class_correct", "pred", "gt", "expected"),
    [
        (False, [0, 0, 9, 9], GT, "cls"),  # a perfect box with the wrong class
        (True, [0, 0, 9, 9], GT, "correct"),
        (True, [0, 0, 29, 9], [[0, 0, 9, 9], [20, 0, 29, 9]], "mins"),  # IoG 1 with both instances
        (True, [0, 0, 4, 4], [[0, 0, 19, 19]], "part"),  # inside the object
        (True, [0, 0, 19, 19], GT, "more"),  # around it
        (True, [50, 50, 59, 59], GT, "ot"),
        # IoU exactly 0.5 is not correct (> 0.5); IoP exactly 0.5 is not part; IoG 1 makes it more.
        (True, [0, 0, 9, 19], GT, "more"),
        # IoG exactly 0.7 is more (>= 0.7): 70 of the 100 gt pixels, box of 280.
        (True, [3, 0, 30, 9], GT, "more"),
        # IoG 0.63 with the best box (and 0.28 with the other) is other.
        (True, [3, 0, 30, 9], [[0, 0, 99, 0], [0, 1, 9, 10]], "ot"),
    ],
)
def test_error_kind(class_correct: bool, pred: list, gt: list, expected: str) -> None:
    assert kinds(class_correct, [pred], gt) == [expected]


def test_error_order_first_match_wins() -> None:
    # M-Ins before Part: IoG 0.6 and 1.0 with two instances, and IoP 0.6 with the best-IoU one.
    assert kinds(True, [[4, 0, 13, 9]], [[0, 0, 9, 9], [10, 0, 13, 9]]) == ["mins"]
    # Part before More: IoP 70/130 > 0.5 and IoG 0.7 >= 0.7, IoU 70/160.
    assert kinds(True, [[3, 0, 15, 9]], GT) == ["part"]
    # Correct before M-Ins: IoU 100/120 with the first box, IoG 0.5 with the second.
    assert kinds(True, [[0, 0, 11, 9]], [[0, 0, 9, 9], [10, 0, 13, 9]]) == ["correct"]


def test_part_and_more_use_the_best_iou_box() -> None:
    # Best IoU is the big box (0.0196; IoP 0.5, IoG 0.02): other. The small box lies wholly inside the
    # prediction (IoG 1): with the maximum IoG over all boxes, as the paper's pseudo-code reads, it would
    # be More; the reference takes the best-IoU box.
    gt = [[0, 0, 99, 99], [100, 0, 101, 1]]
    assert kinds(True, [[90, 0, 109, 19]], gt) == ["ot"]


def test_error_kinds_vectorized_over_boxes() -> None:
    pred = [[0, 0, 9, 9], [0, 0, 4, 4], [0, 0, 19, 19], [50, 50, 59, 59]]
    assert kinds(True, pred, GT) == ["correct", "part", "more", "ot"]
    assert kinds(False, pred, GT) == ["cls"] * 4


# --- union boxes over a sweep --------------------------------------------------------------------------


def test_union_boxes_over_thresholds() -> None:
    heatmap = np.zeros((6, 8), dtype=np.float32)
    heatmap[1, 2] = 0.9
    heatmap[4, 6] = 0.5
    boxes = m.union_boxes_over_thresholds(heatmap, [0.0, 0.3, 0.6, 0.95])
    np.testing.assert_array_equal(boxes, [[0, 0, 7, 5], [2, 1, 6, 4], [2, 1, 2, 1], [0, 0, 0, 0]])
    rng = np.random.default_rng(0)
    maps = rng.random((5, 12, 9)).astype(np.float32)
    for heat in maps:
        for t in (0.1, 0.5, 0.97):
            np.testing.assert_array_equal(m.union_boxes_over_thresholds(heat, [t])[0], union_boxes(heat[None], t)[0])


# --- MaxBoxAccV2 ---------------------------------------------------------------------------------------


def test_contour_boxes_hold_components_and_holes() -> None:
    ring = np.zeros((9, 9), dtype=bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False
    ring[4, 4] = True  # an island in the hole
    boxes = {tuple(b) for b in m.contour_boxes(ring).tolist()}
    assert boxes == {(1, 1, 7, 7), (2, 2, 6, 6), (4, 4, 4, 4)}  # outer border, hole border, island
    assert m.contour_boxes(np.zeros((4, 4), dtype=bool)).shape == (0, 4)


def test_contour_boxes_include_every_component_box() -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        heat = rng.random((15, 17)).astype(np.float32)
        contours = {tuple(b) for b in m.contour_boxes(heat >= 0.6).tolist()}
        assert set(component_boxes(heat, 0.6, "all")) <= contours


def test_max_box_acc_counts_any_component() -> None:
    heatmap = np.zeros((20, 20), dtype=np.float32)
    heatmap[5:10, 5:10] = 1.0  # the object
    heatmap[12:18, 12:18] = 0.5  # a distractor: the union box over both would fail
    hits = m.max_box_acc_hits(heatmap, np.array([[5, 5, 9, 9]]))
    assert hits.shape == (100, 3)
    # t = 0 keeps the whole image (IoU 25 / 400); every other threshold has the object's own box.
    assert not hits[0].any()
    assert hits[1:].all()
    union = m.union_boxes_over_thresholds(heatmap, [0.3])
    assert m.box_iou(union, np.array([[5, 5, 9, 9]]))[0, 0] < 0.5


def test_max_box_acc_iou_thresholds() -> None:
    heatmap = np.zeros((10, 10), dtype=np.float32)
    heatmap[0:10, 0:6] = 1.0  # box (0, 0, 5, 9): IoU 0.6 with the ground truth (0, 0, 9, 9)
    hits = m.max_box_acc_hits(heatmap, np.array([[0, 0, 9, 9]]), thresholds=np.array([0.5]))
    np.testing.assert_array_equal(hits, [[True, True, False]])
    # IoU >= delta (Choe et al.): exactly 0.5 counts.
    heatmap[:, 5] = 0.0
    hits = m.max_box_acc_hits(heatmap, np.array([[0, 0, 9, 9]]), thresholds=np.array([0.5]))
    np.testing.assert_array_equal(hits, [[True, True, False]])


def test_maxboxacc_v2_over_images() -> None:
    tally = MethodTally(np.array([0.5]))
    good = np.zeros((20, 20), dtype=np.float32)
    good[5:10, 5:10] = 1.0
    tally.add(ranking=[0], label=0, heatmap=good, boxes=np.array([[5, 5, 9, 9]]))
    tally.add(ranking=[0], label=0, heatmap=np.zeros((20, 20), dtype=np.float32), boxes=np.array([[5, 5, 9, 9]]))
    summary = tally.summary()
    # One image of two hits every IoU threshold; the empty map never does.
    assert summary["maxboxacc_v2"] == 50.0
    assert summary["maxboxacc"]["0.7"] == {"acc": 50.0, "threshold": 0.01}


# --- Peak-IoU ------------------------------------------------------------------------------------------


def test_mask_iou_curve_hand_computed() -> None:
    heatmap = np.array([[1.0, 0.5, 0.0], [0.8, 0.2, 0.0]])  # x 255: 255, 127.5, 0 / 204, 51, 0
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    curve = m.mask_iou_curve(heatmap, mask)
    assert curve.shape == (256,)
    assert curve[0] == pytest.approx(3 / 6)  # everything predicted
    assert curve[1] == curve[51] == pytest.approx(3 / 4)  # 255, 127.5, 204, 51
    assert curve[52] == curve[127] == 1.0  # 255, 127.5, 204: exactly the mask
    assert curve[128] == curve[204] == pytest.approx(2 / 3)  # 127.5 < 128
    assert curve[205] == curve[255] == pytest.approx(1 / 3)
    assert m.peak(curve) == (1.0, 52)


def test_mask_iou_curve_ignores_pixels() -> None:
    heatmap = np.array([[1.0, 1.0, 0.0]])
    mask = np.array([[True, False, False]])
    assert m.mask_iou_curve(heatmap, mask)[200] == pytest.approx(0.5)
    valid = np.array([[True, False, True]])
    assert m.mask_iou_curve(heatmap, mask, valid)[200] == 1.0


def test_peak_iou_is_the_peak_of_the_mean_curve() -> None:
    tally = MethodTally(np.array([0.5]))
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    tally.add(ranking=[0], label=0, heatmap=np.array([[1.0, 0.5, 0.0], [0.8, 0.2, 0.0]]), boxes=np.zeros((0, 4)), mask=mask)
    tally.add(ranking=[0], label=0, heatmap=np.array([[1.0, 1.0, 0.2], [1.0, 0.2, 0.2]]), boxes=np.zeros((0, 4)), mask=mask)
    summary = tally.summary()
    # Second image: IoU 0.5 for T <= 51, 1 above; mean peaks at 1.0 over T 52..127.
    assert summary["peak_iou"] == 100.0
    assert summary["peak_t"] == 52
    assert summary["top1_loc"] is None and summary["box_images"] == 0


# --- PxAP ----------------------------------------------------------------------------------------------


def test_pxap_hand_computed() -> None:
    heatmap = np.array([[0.9, 0.7, 0.4, 0.1]])
    mask = np.array([[True, False, True, False]])
    pos, neg = m.pixel_histograms(heatmap, mask)
    assert pos.sum() == 2 and neg.sum() == 2 and pos[900] == 1 and neg[700] == 1
    # Ranked +, -, +, -: precision 1 at recall 0.5, 2/3 at recall 1 -> (1 + 2/3) / 2.
    assert m.average_precision(pos, neg) == pytest.approx(5 / 6)


def test_pxap_extremes() -> None:
    mask = np.array([[True, True, False, False]])
    perfect = m.pixel_histograms(np.array([[0.9, 0.8, 0.2, 0.1]]), mask)
    assert m.average_precision(*perfect) == pytest.approx(1.0)
    flat = m.pixel_histograms(np.full((1, 4), 0.5), mask)
    assert m.average_precision(*flat) == pytest.approx(0.5)  # the object's share of the pixels
    assert m.average_precision(np.zeros(10, np.int64), np.ones(10, np.int64)) == 0.0


def test_pxap_sums_over_images() -> None:
    tally = MethodTally(np.array([0.5]))
    tally.add(ranking=[0], label=0, heatmap=np.array([[0.9, 0.7]]), boxes=np.zeros((0, 4)), mask=np.array([[True, False]]))
    tally.add(ranking=[0], label=0, heatmap=np.array([[0.4, 0.1]]), boxes=np.zeros((0, 4)), mask=np.array([[True, False]]))
    assert tally.summary()["pxap"] == pytest.approx(100 * 5 / 6, abs=1e-3)


# --- the tally's accuracies ----------------------------------------------------------------------------


def _box_map(box: tuple[int, int, int, int], value: float = 1.0) -> np.ndarray:
    heat = np.zeros((20, 20), dtype=np.float32)
    x0, y0, x1, y1 = box
    heat[y0 : y1 + 1, x0 : x1 + 1] = value
    return heat


def test_tally_top1_top5_and_gt_known() -> None:
    gt = np.array([[2, 2, 11, 11]])
    tally = MethodTally(np.array([0.2, 0.6]))
    tally.add(ranking=[1, 0, 2], label=1, heatmap=_box_map((2, 2, 11, 11)), boxes=gt)  # all right
    tally.add(ranking=[0, 1, 2], label=1, heatmap=_box_map((2, 2, 11, 11)), boxes=gt)  # class in top 5 only
    tally.add(ranking=[1, 0, 2], label=1, heatmap=_box_map((2, 2, 5, 5), 0.5), boxes=gt)  # a part, below 0.6
    s = tally.summary()
    assert s["top1_cls"] == pytest.approx(200 / 3, abs=1e-3) and s["top5_cls"] == 100.0
    per = {p["threshold"]: p for p in s["per_threshold"]}
    assert per[0.2]["gt_known_loc"] == pytest.approx(200 / 3, abs=1e-3)  # image 3's part box fails
    assert per[0.2]["top1_loc"] == pytest.approx(100 / 3, abs=1e-3)
    assert per[0.2]["top5_loc"] == pytest.approx(200 / 3, abs=1e-3)
    assert per[0.6]["gt_known_loc"] == pytest.approx(200 / 3, abs=1e-3)  # image 3 has no box: (0,0,0,0)
    # Equal GT-known and Top-1 Loc: the lower threshold.
    assert s["best_threshold"] == 0.2
    assert s["errors"] == {"cls": pytest.approx(100 / 3, abs=1e-3), "mins": 0.0,
                           "part": pytest.approx(100 / 3, abs=1e-3), "more": 0.0, "ot": 0.0}
    assert sum(s["errors"].values()) == pytest.approx(100 - s["top1_loc"], abs=1e-3)


def test_best_threshold_prefers_gt_known() -> None:
    gt = np.array([[2, 2, 11, 11]])
    tally = MethodTally(np.array([0.3, 0.7]))
    heat = _box_map((2, 2, 11, 11), 0.5)
    heat[2:12, 12:19] = 0.2  # a spill right of the box, below 0.3; 0.7 keeps nothing of this map
    tally.add(ranking=[0], label=0, heatmap=_box_map((2, 2, 11, 11), 0.8), boxes=gt)
    tally.add(ranking=[1], label=0, heatmap=heat, boxes=gt)
    s = tally.summary()
    # 0.3: both boxes right (the spill is below it); 0.7: only the first image's.
    assert s["best_threshold"] == 0.3 and s["gt_known_loc"] == 100.0 and s["top1_loc"] == 50.0
