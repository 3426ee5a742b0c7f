"""Localization metrics, SPA_REFERENCE.md section 5, as pure functions of one image's arrays.

Boxes are int arrays of (x0, y0, x1, y1) rows, inclusive on both ends (a box's width is x1 - x0 + 1).
Heatmaps are (H, W) floats in [0, 1] at the original image size; masks are (H, W) bool.
Each function returns what a data set needs to be summed over (per-threshold flags, histograms), so a
data set is streamed image by image (see `tally.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from ..boxes import union_boxes

# The error breakdown of a top-1 prediction, in the order it is decided (first match wins).
ERROR_KINDS: tuple[str, ...] = ("cls", "correct", "mins", "part", "more", "ot")
CLS, CORRECT, MINS, PART, MORE, OT = range(len(ERROR_KINDS))

LOC_IOU = 0.5  # a box is correct when its IoU with a ground-truth box is > 0.5 (strictly)
MINS_IOG = 0.3
PART_IOP = 0.5
MORE_IOG = 0.7

MAXBOXACC_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)
# wsolevaluation's threshold sweeps: CAM thresholds every 0.01 for boxes, every 0.001 for PxAP.
MAXBOXACC_THRESHOLDS = np.arange(100) / 100.0
PXAP_BINS = 1000
PEAK_LEVELS = 256  # Peak-IoU thresholds T = 0..255 on heatmap * 255


def as_boxes(boxes: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Any sequence of (x0, y0, x1, y1) -> (N, 4) int64 array (N may be 0)."""
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) inclusive boxes -> (N,) areas in pixels."""
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


class Overlaps(NamedTuple):
    """Each (N, M): predicted box n against ground-truth box m."""

    iou: np.ndarray  # intersection / union
    iog: np.ndarray  # intersection / ground-truth area
    iop: np.ndarray  # intersection / predicted area


def box_overlaps(pred: np.ndarray, gt: np.ndarray) -> Overlaps:
    """(N, 4) predicted and (M, 4) ground-truth inclusive boxes -> IoU, IoG, IoP, each (N, M)."""
    pred, gt = as_boxes(pred), as_boxes(gt)
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = (np.clip(iw, 0, None) * np.clip(ih, 0, None)).astype(np.float64)
    pred_area = box_area(pred)[:, None].astype(np.float64)
    gt_area = box_area(gt)[None, :].astype(np.float64)
    return Overlaps(iou=inter / (pred_area + gt_area - inter), iog=inter / gt_area, iop=inter / pred_area)


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, 4) against (M, 4) inclusive boxes -> (N, M) IoU."""
    return box_overlaps(pred, gt).iou


def error_kinds(class_correct: bool, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The error breakdown (the supplementary's Algorithm 1, as the reference states it) of one top-1
    prediction, for each of N candidate boxes (one per box threshold).

    pred: (N, 4) boxes of the top-1 class; gt: (M, 4), M >= 1. Returns (N,) indices into ERROR_KINDS:
    cls if the class is wrong; correct if the best IoU > 0.5; mins if more than one ground-truth box has
    IoG > 0.3; part if IoP > 0.5 with the best-IoU ground-truth box; more if IoG >= 0.7 with that box; ot.
    """
    pred = as_boxes(pred)
    if not class_correct:
        return np.full(len(pred), CLS, dtype=np.int64)
    ov = box_overlaps(pred, gt)
    best = np.argmax(ov.iou, axis=1)  # the first of equal IoUs
    rows = np.arange(len(pred))
    return np.select(
        [
            ov.iou[rows, best] > LOC_IOU,
            np.count_nonzero(ov.iog > MINS_IOG, axis=1) > 1,
            ov.iop[rows, best] > PART_IOP,
            ov.iog[rows, best] >= MORE_IOG,
        ],
        [CORRECT, MINS, PART, MORE],
        default=OT,
    )


def union_boxes_over_thresholds(heatmap: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """The service's `union` box (SPA_REFERENCE.md section 4) at each threshold: heatmap (H, W),
    thresholds (T,) -> (T, 4) int64, the box of all pixels >= t, (0, 0, 0, 0) if none."""
    maps = heatmap[None]
    return np.concatenate([union_boxes(maps, float(t)) for t in thresholds]).reshape(-1, 4).astype(np.int64)


def contour_boxes(binary: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (K, 4) inclusive boxes of all its contours, outer borders and hole borders alike
    (the set wsolevaluation boxes; it also holds every 8-connected component's box). K may be 0."""
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 4), dtype=np.int64)
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)  # (x, y, w, h)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] - 1], axis=1)


def max_box_acc_hits(
    heatmap: np.ndarray,
    gt: np.ndarray,
    *,
    thresholds: np.ndarray = MAXBOXACC_THRESHOLDS,
    ious: Sequence[float] = MAXBOXACC_IOUS,
) -> np.ndarray:
    """MaxBoxAccV2's per-image term: (T, len(ious)) bool, whether the box of any contour of
    (heatmap >= t) reaches IoU >= delta with any ground-truth box (Choe et al.'s criterion is >=,
    where the paper's Loc metrics use > 0.5).

    heatmap (H, W); gt (M, 4); thresholds (T,) ascending.
    """
    peak = heatmap.max()
    found: list[np.ndarray] = []
    owner: list[np.ndarray] = []  # the threshold index of each box in `found`
    for i, t in enumerate(thresholds):
        # Compared in the heatmap's precision, as the service's boxes compare.
        level = heatmap.dtype.type(t)
        if level > peak:  # nothing is left above this threshold, nor above the larger ones
            break
        boxes = contour_boxes(heatmap >= level)
        found.append(boxes)
        owner.append(np.full(len(boxes), i))
    best = np.zeros(len(thresholds), dtype=np.float64)
    if found:
        # One IoU computation for the boxes of every threshold, then the best per threshold.
        np.maximum.at(best, np.concatenate(owner), box_iou(np.concatenate(found), gt).max(axis=1))
    return best[:, None] >= np.asarray(ious)[None, :]


def _levels(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) -> int64 levels 0..255 with heatmap * 255 >= T iff level >= T (floor, for integer T)."""
    return np.clip(np.floor(heatmap.astype(np.float64) * 255.0), 0, PEAK_LEVELS - 1).astype(np.int64)


def mask_iou_curve(heatmap: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(256,) float64: IoU of (heatmap * 255 >= T) with the mask for T = 0..255 (SEM / LID Peak-IoU).

    heatmap (H, W) in [0, 1], mask (H, W) bool; `valid` (H, W) bool excludes pixels (ignore regions).
    Where prediction and mask are both empty the IoU is 1 (they agree).
    """
    levels, mask = _levels(heatmap), mask.astype(bool)
    if valid is not None:
        levels, mask = levels[valid], mask[valid]
    inside = np.bincount(levels[mask], minlength=PEAK_LEVELS)
    outside = np.bincount(levels[~mask], minlength=PEAK_LEVELS)
    # Pixels at or above T: a cumulative sum from the top level down.
    inter = np.cumsum(inside[::-1])[::-1].astype(np.float64)
    predicted = inter + np.cumsum(outside[::-1])[::-1]
    union = predicted + inside.sum() - inter
    return np.divide(inter, union, out=np.ones(PEAK_LEVELS), where=union > 0)


def peak(curve: np.ndarray) -> tuple[float, int]:
    """(value, T) at the maximum of a (256,) IoU curve; the lowest T among equal maxima."""
    t = int(np.argmax(curve))
    return float(curve[t]), t


def pixel_histograms(
    heatmap: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None, bins: int = PXAP_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """(bins,) int64 counts of object and of background pixels per heatmap bin [k / bins, (k+1) / bins)
    (the last bin holds 1.0): what PxAP sums over a data set."""
    index = np.clip(np.floor(heatmap.astype(np.float64) * bins), 0, bins - 1).astype(np.int64)
    mask = mask.astype(bool)
    if valid is not None:
        index, mask = index[valid], mask[valid]
    return np.bincount(index[mask], minlength=bins), np.bincount(index[~mask], minlength=bins)


def average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """PxAP (Choe et al., CVPR 2020) from summed `pixel_histograms`: the area under the pixel
    precision-recall curve swept over thresholds k / bins, as sum_k (R_k - R_k+1) * P_k.

    At threshold k the predicted pixels are those in bins >= k. Returns a fraction in [0, 1]; 0 when
    there are no object pixels.
    """
    tp = np.cumsum(positives[::-1])[::-1].astype(np.float64)
    fp = np.cumsum(negatives[::-1])[::-1].astype(np.float64)
    total = tp[0] if len(tp) else 0.0
    if total <= 0:
        return 0.0
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    recall = tp / total
    gain = recall - np.append(recall[1:], 0.0)
    return float(np.sum(gain * precision))
