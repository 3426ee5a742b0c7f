"""Metric functions against hand-computed cases (docs/reference.md, "Metrics"); the wsol protocol's own
conventions are in test_wsol_protocol.py."""

from __future__ import annotations

import numpy as np
import pytest
from box_oracles import full_size_boxes
from spa_service.offline.evaluation import metrics as m
from spa_service.offline.evaluation.datasets import MaskLevels
from spa_service.offline.evaluation.tally import MethodTally
from spa_service.pipeline.boxes import union_boxes


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


# --- MaxBoxAccV2, original protocol ---------------------------------------------------------------------

ORIGINAL = m.WsolProtocol(name="original")


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
        assert set(full_size_boxes(heat[None], 0.6, "all")[0]) <= contours


def test_max_box_acc_counts_any_component() -> None:
    heatmap = np.zeros((20, 20), dtype=np.float32)
    heatmap[5:10, 5:10] = 1.0  # the object
    heatmap[12:18, 12:18] = 0.5  # a distractor: the union box over both would fail
    hits = m.original_box_hits(heatmap, np.array([[5, 5, 9, 9]]), ORIGINAL.cam_thresholds())
    assert hits.shape == (100, 3)
    # t = 0 keeps the whole image (IoU 25 / 400); every other threshold has the object's own box.
    assert not hits[0].any()
    assert hits[1:].all()
    union = m.union_boxes_over_thresholds(heatmap, [0.3])
    assert m.box_iou(union, np.array([[5, 5, 9, 9]]))[0, 0] < 0.5
    # The largest contour alone is the distractor's until 0.5 drops it.
    single = m.original_box_hits(heatmap, np.array([[5, 5, 9, 9]]), np.array([0.3, 0.6]), multi_contour=False)
    np.testing.assert_array_equal(single, [[False] * 3, [True] * 3])


def test_max_box_acc_iou_thresholds() -> None:
    heatmap = np.zeros((10, 10), dtype=np.float32)
    heatmap[0:10, 0:6] = 1.0  # box (0, 0, 5, 9): IoU 0.6 with the ground truth (0, 0, 9, 9)
    hits = m.original_box_hits(heatmap, np.array([[0, 0, 9, 9]]), np.array([0.5]))
    np.testing.assert_array_equal(hits, [[True, True, False]])
    # IoU >= delta (Choe et al.): exactly 0.5 counts.
    heatmap[:, 5] = 0.0
    hits = m.original_box_hits(heatmap, np.array([[0, 0, 9, 9]]), np.array([0.5]))
    np.testing.assert_array_equal(hits, [[True, True, False]])


def test_maxboxacc_v2_over_images() -> None:
    tally = MethodTally(np.array([0.5]), protocol=ORIGINAL)
    good = np.zeros((20, 20), dtype=np.float32)
    good[5:10, 5:10] = 1.0
    tally.add(ranking=[0], label=0, heatmap=good, boxes=np.array([[5, 5, 9, 9]]))
    tally.add(ranking=[0], label=0, heatmap=np.zeros((20, 20), dtype=np.float32), boxes=np.array([[5, 5, 9, 9]]))
    summary = tally.summary()
    # One image of two hits every IoU threshold; the empty map never does.
    assert summary["maxboxacc_v2_acc"] == 50.0
    assert summary["maxboxacc_acc"]["0.7"] == {"acc": 50.0, "cam_threshold": 0.01}
    assert summary["empty_heatmaps"] == 1


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
    tally = MethodTally(np.array([0.5]), protocol=ORIGINAL)
    levels = MaskLevels(object=np.array([[255, 255, 0], [255, 0, 0]], dtype=np.uint8), ignore=None)
    for heat in ([[1.0, 0.5, 0.0], [0.8, 0.2, 0.0]], [[1.0, 1.0, 0.2], [1.0, 0.2, 0.2]]):
        tally.add(ranking=[0], label=0, heatmap=np.array(heat), boxes=np.zeros((0, 4)), mask=levels)
    summary = tally.summary()
    # Second image: IoU 0.5 for T <= 51, 1 above; mean peaks at 1.0 over T 52..127.
    assert summary["peak_iou"] == 100.0
    assert summary["peak_t"] == 52
    assert summary["top1_loc_acc"] is None and summary["box_images"] == 0


def test_peak_iou_counts_object_pixels_inside_the_ignore_region() -> None:
    # Ignore covers pixels 1 and 2; pixel 1 is object, so only pixel 2 is left out.
    obj = np.array([[255, 255, 0, 0]], dtype=np.uint8)
    ignore = np.array([[0, 255, 255, 0]], dtype=np.uint8)
    mask, counted = m.mask_regions(obj, ignore, m.MASK_LEVEL)
    assert counted.tolist() == [[True, True, False, True]]
    curve = m.mask_iou_curve(np.array([[1.0, 0.0, 1.0, 0.0]]), mask, counted)
    assert curve[200] == pytest.approx(1 / 2)  # pixel 0 of the object's two; pixel 2 does not count


# --- PxAP ----------------------------------------------------------------------------------------------

EDGES = m.WsolProtocol().pxap_edges()


def pxap(heatmap: list[float], obj: list[int], ignore: list[int] | None = None) -> float:
    """PxAP of a one-row image: object and ignore flags per pixel, as wsolevaluation reads grey levels."""
    levels = np.array([obj], dtype=np.uint8) * 255
    ignore_levels = None if ignore is None else np.array([ignore], dtype=np.uint8) * 255
    mask, counted = m.mask_regions(levels, ignore_levels, 1)
    return m.average_precision(*m.pixel_histograms(np.array([heatmap]), mask, counted, EDGES))


def test_pxap_hand_computed() -> None:
    heatmap = np.array([[0.9, 0.7, 0.4, 0.1]])
    mask = np.array([[True, False, True, False]])
    pos, neg = m.pixel_histograms(heatmap, mask, np.ones_like(mask), EDGES)
    # np.arange's edge 700 is 0.7000000000000001, above 0.7: the bins are the edges wsolevaluation builds.
    assert EDGES[700] > 0.7
    assert pos.sum() == 2 and neg.sum() == 2 and pos[900] == 1 and neg[699] == 1
    # Ranked +, -, +, -: precision 1 at recall 0.5, 2/3 at recall 1 -> (1 + 2/3) / 2.
    assert m.average_precision(pos, neg) == pytest.approx(5 / 6)


def test_pxap_ignores_only_the_ignore_region_outside_the_object() -> None:
    # The case: the ignore region [0 1 1 0] overlaps the object [1 1 0 0]. Only pixel 2 (0.5,
    # background) is left out; pixel 1 (0.2) is object and counts. Ranked 0.9 +, 0.6 -, 0.2 +:
    # precision 1 at recall 1/2, then 2/3 at recall 1 -> 1/2 + 1/3.
    assert pxap([0.9, 0.2, 0.5, 0.6], [1, 1, 0, 0], [0, 1, 1, 0]) == pytest.approx(5 / 6)
    # Leaving out the whole ignore region (object pixel 1 too) would leave 0.9 +, 0.6 -: 100%.
    assert pxap([0.9, 0.6], [1, 0]) == pytest.approx(1.0)


def test_pxap_gives_exactly_one_its_own_bin() -> None:
    # 1.0 falls in [1, 2), above 0.9995's bin [0.999, 1): ranked 1.0 +, 0.9995 -, 0.2 +, 0.1 -:
    # 1 * 1/2 + 2/3 * 1/2. (Sharing the top bin with 0.9995 would give 1/2 * 1/2 + 2/3 * 1/2 = 58.33%.)
    # The issue text has the two figures the other way round; this is what wsolevaluation's bins give.
    assert pxap([1.0, 0.9995, 0.2, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    pos, neg = m.pixel_histograms(np.array([[1.0, 0.9995]]), np.array([[True, False]]), np.ones((1, 2), bool), EDGES)
    assert len(pos) == 1002 and pos[1000] == 1 and neg[999] == 1


def test_pxap_extremes() -> None:
    assert pxap([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert pxap([0.5] * 4, [1, 1, 0, 0]) == pytest.approx(0.5)  # the object's share of the pixels
    assert m.average_precision(np.zeros(10, np.int64), np.ones(10, np.int64)) == 0.0


def test_pxap_against_a_loop_over_thresholds() -> None:
    """sum over edges e (descending) of precision(>= e) times the recall it adds, one edge at a time."""
    rng = np.random.default_rng(5)
    scores = np.round(rng.random(400), 3)  # many ties with the edges themselves
    scores[:7] = 1.0
    obj = rng.random(400) < 0.4
    expected, last_recall = 0.0, 0.0
    for e in EDGES[::-1]:
        picked = scores >= e
        if picked.any():
            recall = (picked & obj).sum() / obj.sum()
            expected += (picked & obj).sum() / picked.sum() * (recall - last_recall)
            last_recall = recall
    got = m.average_precision(*m.pixel_histograms(scores[None], obj[None], np.ones((1, 400), bool), EDGES))
    assert got == pytest.approx(expected, abs=1e-12)


def test_pxap_sums_over_images() -> None:
    tally = MethodTally(np.array([0.5]), protocol=ORIGINAL)
    for heat, obj in (([[0.9, 0.7]], [[255, 0]]), ([[0.4, 0.1]], [[255, 0]])):
        levels = MaskLevels(object=np.array(obj, dtype=np.uint8), ignore=None)
        tally.add(ranking=[0], label=0, heatmap=np.array(heat), boxes=np.zeros((0, 4)), mask=levels)
    assert tally.summary()["pxap"] == pytest.approx(100 * 5 / 6, abs=1e-3)


# --- the tally's accuracies ----------------------------------------------------------------------------


def _box_map(box: tuple[int, int, int, int], value: float = 1.0) -> np.ndarray:
    heat = np.zeros((20, 20), dtype=np.float32)
    x0, y0, x1, y1 = box
    heat[y0 : y1 + 1, x0 : x1 + 1] = value
    return heat


def test_tally_top1_top5_and_gt_known() -> None:
    gt = np.array([[2, 2, 11, 11]])
    tally = MethodTally(np.array([0.2, 0.6]), protocol=ORIGINAL)
    tally.add(ranking=[1, 0, 2], label=1, heatmap=_box_map((2, 2, 11, 11)), boxes=gt)  # all right
    tally.add(ranking=[0, 1, 2], label=1, heatmap=_box_map((2, 2, 11, 11)), boxes=gt)  # class in top 5 only
    tally.add(ranking=[1, 0, 2], label=1, heatmap=_box_map((2, 2, 5, 5), 0.5), boxes=gt)  # a part, below 0.6
    s = tally.summary()
    assert s["top1_cls_acc"] == pytest.approx(200 / 3, abs=1e-3) and s["top5_cls_acc"] == 100.0
    per = {p["threshold"]: p for p in s["per_threshold"]}
    assert per[0.2]["gt_known_loc_acc"] == pytest.approx(200 / 3, abs=1e-3)  # image 3's part box fails
    assert per[0.2]["top1_loc_acc"] == pytest.approx(100 / 3, abs=1e-3)
    assert per[0.2]["top5_loc_acc"] == pytest.approx(200 / 3, abs=1e-3)
    assert per[0.6]["gt_known_loc_acc"] == pytest.approx(200 / 3, abs=1e-3)  # image 3 has no box: (0,0,0,0)
    # Equal GT-known and Top-1 Loc: the lower threshold.
    assert s["best_threshold"] == 0.2
    assert s["errors"] == {"cls_err": pytest.approx(100 / 3, abs=1e-3), "mins_err": 0.0,
                           "part_err": pytest.approx(100 / 3, abs=1e-3), "more_err": 0.0, "ot_err": 0.0}
    assert sum(s["errors"].values()) == pytest.approx(100 - s["top1_loc_acc"], abs=1e-3)


def test_best_threshold_prefers_gt_known() -> None:
    gt = np.array([[2, 2, 11, 11]])
    tally = MethodTally(np.array([0.3, 0.7]), protocol=ORIGINAL)
    heat = _box_map((2, 2, 11, 11), 0.5)
    heat[2:12, 12:19] = 0.2  # a spill right of the box, below 0.3; 0.7 keeps nothing of this map
    tally.add(ranking=[0], label=0, heatmap=_box_map((2, 2, 11, 11), 0.8), boxes=gt)
    tally.add(ranking=[1], label=0, heatmap=heat, boxes=gt)
    s = tally.summary()
    # 0.3: both boxes right (the spill is below it); 0.7: only the first image's.
    assert s["best_threshold"] == 0.3 and s["gt_known_loc_acc"] == 100.0 and s["top1_loc_acc"] == 50.0
