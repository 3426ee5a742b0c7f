"""Localization metrics (docs/reference.md, "Metrics"), as pure functions of one image's arrays.

Boxes are int arrays of (x0, y0, x1, y1) rows, inclusive on both ends (a box's width is x1 - x0 + 1).
Each function returns what a data set needs to be summed over (per-threshold flags, histograms), so a
data set is streamed image by image (see `tally.py`).

Two protocols score the wsolevaluation figures (MaxBoxAccV2 and PxAP; docs/evaluation.md):
  wsol      what Choe et al.'s wsolevaluation code computes by default: the method's map at the class
            map's resolution resized (bicubic) to a 224 x 224 grid and min-max normalised, ground-truth
            boxes rescaled to that grid and masks resized to it (nearest); a pixel is in at threshold t
            when uint8(255 s) > int(t * its map's uint8 maximum); a contour's box ends at x + w (capped
            at the last pixel); CAM thresholds np.arange(0, 1, 0.001).
  original  the project's convention: the service's heatmap at the original image size and the
            ground truth as given; a pixel is in when s >= t; a contour's box is its exact inclusive
            extent; CAM thresholds every 0.01 (PxAP bins every 0.001, as wsol's).
Both share the IoU >= delta rule, the PxAP bins (the value 1.0 has its own) and the ignore semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import cv2
import numpy as np
from spa_service.pipeline.boxes import union_boxes

# The error breakdown of a top-1 prediction, in the order it is decided (first match wins).
ERROR_KINDS: tuple[str, ...] = ("cls", "correct", "mins", "part", "more", "ot")
CLS, CORRECT, MINS, PART, MORE, OT = range(len(ERROR_KINDS))

LOC_IOU = 0.5  # a box is correct when its IoU with a ground-truth box is > 0.5 (strictly)
MINS_IOG = 0.3
PART_IOP = 0.5
MORE_IOG = 0.7

MAXBOXACC_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)
PEAK_LEVELS = 256  # Peak-IoU thresholds T = 0..255 on heatmap * 255
WSOL_GRID = 224  # wsolevaluation scores every image on a 224 x 224 grid
MASK_LEVEL = 128  # original protocol: mask grey levels >= this are object (CUB's masks average annotators)
PXAP_STEP = 0.001  # PxAP's bin width in both protocols (wsolevaluation's default CAM step)

ProtocolName = Literal["wsol", "original"]


@dataclass(frozen=True)
class WsolProtocol:
    """How MaxBoxAccV2 and PxAP are scored (see the module docstring)."""

    name: ProtocolName = "wsol"
    multi_contour: bool = True  # every contour's box (MaxBoxAccV2); False: the largest contour's only

    @property
    def cam_step(self) -> float:
        return 0.001 if self.name == "wsol" else 0.01

    @property
    def mask_level(self) -> int:
        # wsolevaluation counts any non-zero mask pixel as object (its `mask > 0.5` on 0..255 grey levels).
        return 1 if self.name == "wsol" else MASK_LEVEL

    def cam_thresholds(self) -> np.ndarray:
        """(T,) float64 CAM thresholds, computed as wsolevaluation computes its list (np.arange)."""
        return np.arange(0, 1, self.cam_step)

    def pxap_edges(self) -> np.ndarray:
        """(1003,) PxAP bin edges, np.arange(0, 1, PXAP_STEP) then 1, 2, 3 (under the wsol protocol, its CAM
        thresholds): a map value of exactly 1.0 falls in [1, 2), a bin of its own above [0.999, 1)."""
        return np.append(np.arange(0, 1, PXAP_STEP), [1.0, 2.0, 3.0])

    def describe(self) -> str:
        contours = "every contour" if self.multi_contour else "the largest contour"
        if self.name == "wsol":
            return (
                f"wsolevaluation: {WSOL_GRID}x{WSOL_GRID} grid (map resized bicubic and min-max normalised, "
                f"boxes rescaled, masks resized nearest, mask pixels > 0 are object), "
                f"uint8(255 s) > int(255 t), box ends at x+w, {contours}, CAM thresholds every {self.cam_step:g}"
            )
        return (
            f"original size: the service's heatmap and the ground truth as given (mask levels >= {MASK_LEVEL} "
            f"are object), s >= t, inclusive contour boxes, {contours}, CAM thresholds every {self.cam_step:g}, "
            f"PxAP bins every {PXAP_STEP:g}"
        )


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
    # A zero-width line of localization.txt gives a ground-truth box of no pixel: nothing of it is covered.
    iog = np.divide(inter, gt_area, out=np.zeros_like(inter), where=gt_area > 0)
    return Overlaps(iou=inter / (pred_area + gt_area - inter), iog=iog, iop=inter / pred_area)


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, 4) against (M, 4) inclusive boxes -> (N, M) IoU."""
    return box_overlaps(pred, gt).iou


def error_kinds(class_correct: bool, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The error breakdown (the supplementary's Algorithm 1, as the authors' code reads it) of one
    top-1 prediction, for each of N candidate boxes (one per box threshold).

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
    """The service's `union` box at each threshold: heatmap (H, W), thresholds (T,) -> (T, 4) int64,
    the box of all pixels >= t, (0, 0, 0, 0) if none."""
    maps = heatmap[None]
    return np.concatenate([union_boxes(maps, float(t)) for t in thresholds]).reshape(-1, 4).astype(np.int64)


# --- the wsolevaluation grid ----------------------------------------------------------------------------


def grid_scoremap(heat_map: np.ndarray, grid: int = WSOL_GRID) -> np.ndarray:
    """(h, w) map at the class map's resolution -> (grid, grid) float64 in [0, 1]: resized bicubic and
    min-max normalised, as wsolevaluation prepares a CAM (a constant or non-finite map becomes zeros)."""
    resized = cv2.resize(heat_map.astype(np.float64), (grid, grid), interpolation=cv2.INTER_CUBIC)
    if not np.isfinite(resized).all():
        return np.zeros_like(resized)
    low, high = resized.min(), resized.max()
    if low == high:
        return np.zeros_like(resized)
    shifted = resized - low
    return shifted / shifted.max()


def grid_boxes(boxes: np.ndarray, size: tuple[int, int], grid: int = WSOL_GRID) -> np.ndarray:
    """(M, 4) inclusive boxes in an image of `size` (width, height) -> (M, 4) wsolevaluation boxes on the
    grid: its files end a box one past its last pixel (x0 + w), and each coordinate is scaled to the grid
    and truncated; the result is then read as inclusive, as wsolevaluation's IoU reads it."""
    ends = (as_boxes(boxes) + np.array([0, 0, 1, 1])).astype(np.float64)
    width, height = (float(s) for s in size)
    # coordinate * grid / side, in that order, then truncated: wsolevaluation's rounding.
    sides = np.array([width, height, width, height])
    return (ends * float(grid) / sides).astype(np.int64)


def grid_levels(levels: np.ndarray, grid: int = WSOL_GRID) -> np.ndarray:
    """(H, W) uint8 mask grey levels -> (grid, grid), nearest neighbour (OpenCV), as wsolevaluation reads masks."""
    return cv2.resize(levels, (grid, grid), interpolation=cv2.INTER_NEAREST)


def mask_regions(
    object_levels: np.ndarray, ignore_levels: np.ndarray | None, level: int
) -> tuple[np.ndarray, np.ndarray]:
    """Grey-level masks -> ((H, W) bool object, (H, W) bool pixels that count). Pixels >= `level` are in.
    Only the ignore region outside the object is left out: object pixels always count."""
    obj = object_levels >= level
    if ignore_levels is None:
        return obj, np.ones_like(obj)
    return obj, ~((ignore_levels >= level) & ~obj)


# --- MaxBoxAccV2 ----------------------------------------------------------------------------------------


def contour_boxes(binary: np.ndarray, *, multi_contour: bool = True, wsol_ends: bool = False) -> np.ndarray:
    """(H, W) bool -> (K, 4) boxes of its contours, outer and hole borders alike (K may be 0).

    multi_contour=False keeps the contour of largest polygon area (the first of equals, in OpenCV's
    RETR_TREE order). wsol_ends: a box ends at x + w, capped at the last pixel (wsolevaluation); else at
    x + w - 1, the contour's exact inclusive extent.
    """
    contours = cv2.findContours(binary.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return np.zeros((0, 4), dtype=np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)  # (x, y, w, h)
    if wsol_ends:
        height, width = binary.shape
        ends = np.minimum(rects[:, :2] + rects[:, 2:], [width - 1, height - 1])
    else:
        ends = rects[:, :2] + rects[:, 2:] - 1
    return np.concatenate([rects[:, :2], ends], axis=1)


def _best_ious(binaries: Sequence[np.ndarray], gt: np.ndarray, multi_contour: bool, wsol_ends: bool) -> np.ndarray:
    """(len(binaries),) the best IoU of any contour box of each binary map with any ground-truth box;
    a map with no contour scores its (0, 0, 0, 0) box, as wsolevaluation (and the service's union box) has it."""
    boxes, owner = [], []
    for i, binary in enumerate(binaries):
        found = contour_boxes(binary, multi_contour=multi_contour, wsol_ends=wsol_ends)
        if not len(found):
            found = np.zeros((1, 4), dtype=np.int64)
        boxes.append(found)
        owner.append(np.full(len(found), i))
    best = np.zeros(len(binaries), dtype=np.float64)
    if boxes:
        # One IoU computation for the boxes of every map, then the best per map.
        np.maximum.at(best, np.concatenate(owner), box_iou(np.concatenate(boxes), gt).max(axis=1))
    return best


def wsol_box_hits(
    scoremap: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    *,
    multi_contour: bool = True,
    ious: Sequence[float] = MAXBOXACC_IOUS,
) -> np.ndarray:
    """MaxBoxAccV2's per-image term under the wsol protocol: (T, len(ious)) bool, whether a contour box of
    (uint8(255 s) > int(t * max uint8(255 s))) reaches IoU >= delta with a ground-truth box.

    scoremap (224, 224) float in [0, 1] (`grid_scoremap`); gt (M, 4) grid boxes (`grid_boxes`).
    """
    levels = (scoremap.astype(np.float64) * 255).astype(np.uint8)
    peak_level = int(levels.max())
    cuts = np.array([int(t * peak_level) for t in thresholds], dtype=np.int64)
    # At most 256 distinct integer cuts among the thresholds: contours once per cut.
    distinct, back = np.unique(cuts, return_inverse=True)
    best = _best_ious([levels > c for c in distinct], gt, multi_contour, wsol_ends=True)[back]
    return best[:, None] >= np.asarray(ious)[None, :]


def original_box_hits(
    heatmap: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    *,
    multi_contour: bool = True,
    ious: Sequence[float] = MAXBOXACC_IOUS,
) -> np.ndarray:
    """MaxBoxAccV2's per-image term under the original protocol: (T, len(ious)) bool, whether an inclusive
    contour box of (heatmap >= t) reaches IoU >= delta with a ground-truth box.

    heatmap (H, W) at the original size; gt (M, 4) inclusive original-image boxes.
    """
    # Compared in the heatmap's precision, as the service's boxes compare.
    binaries = [heatmap >= heatmap.dtype.type(t) for t in thresholds]
    best = _best_ious(binaries, gt, multi_contour, wsol_ends=False)
    return best[:, None] >= np.asarray(ious)[None, :]


# --- Peak-IoU --------------------------------------------------------------------------------------------


def _levels(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) -> int64 levels 0..255 with heatmap * 255 >= T iff level >= T (floor, for integer T)."""
    return np.clip(np.floor(heatmap.astype(np.float64) * 255.0), 0, PEAK_LEVELS - 1).astype(np.int64)


def mask_iou_curve(heatmap: np.ndarray, mask: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """(256,) float64: IoU of (heatmap * 255 >= T) with the mask for T = 0..255 (SEM / LID Peak-IoU).

    heatmap (H, W) in [0, 1], mask (H, W) bool; `counted` (H, W) bool leaves the other pixels out.
    Where prediction and mask are both empty the IoU is 1 (they agree).
    """
    levels, mask = _levels(heatmap), mask.astype(bool)
    if counted is not None:
        levels, mask = levels[counted], mask[counted]
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


# --- PxAP ------------------------------------------------------------------------------------------------


def pixel_histograms(
    scores: np.ndarray, mask: np.ndarray, counted: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(len(edges) - 1,) int64 counts of object and of background pixels per bin [edges[k], edges[k+1]):
    what PxAP sums over a data set. scores, mask, counted (H, W); scores in [0, 1]."""
    index = np.searchsorted(edges, scores[counted].astype(np.float64), side="right") - 1
    obj = mask[counted]
    bins = len(edges) - 1
    return np.bincount(index[obj], minlength=bins), np.bincount(index[~obj], minlength=bins)


def average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """PxAP (Choe et al., CVPR 2020) from summed `pixel_histograms`: the area under the pixel
    precision-recall curve swept over the bin edges, sum_k (R_k - R_k+1) * P_k.

    At edge k the predicted pixels are those in bins >= k. Returns a fraction in [0, 1]; 0 when there
    are no object pixels.
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
