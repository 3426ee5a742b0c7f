"""Per-method running totals over a data set, and the summary (percentages) they give.

`MethodTally.add` takes one image at a time and keeps only counters and histograms, of a size fixed by
the threshold sweeps, never a heatmap: a data set of any size is streamed through it.

Data-set figures: Loc accuracies and the error breakdown are shares of the images with boxes, at one
box threshold; MaxBoxAccV2 takes each IoU threshold's best CAM threshold, then the mean over the three;
Peak-IoU is the peak of the per-image IoU curves' mean (LID challenge); PxAP pools every image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics as m

# The best box threshold is the one with the highest GT-known Loc: it uses every image and does not
# depend on the classifier; ties go to the higher Top-1 Loc, then to the lower threshold.
SELECTION = "highest gt_known_loc, then highest top1_loc, then lowest threshold"


@dataclass
class MethodTally:
    """Running totals for one method (cam or scg). `thresholds` (T,) are the box thresholds swept for
    Top-1 / Top-5 / GT-known Loc and the error breakdown."""

    thresholds: np.ndarray
    images: int = 0
    box_images: int = 0
    mask_images: int = 0
    top1_cls: int = 0
    top5_cls: int = 0
    gt_known: np.ndarray = field(init=False)  # (T,) images whose ground-truth class box is correct
    top1_loc: np.ndarray = field(init=False)  # (T,)
    top5_loc: np.ndarray = field(init=False)  # (T,)
    errors: np.ndarray = field(init=False)  # (T, len(ERROR_KINDS)) counts of each top-1 outcome
    box_hits: np.ndarray = field(init=False)  # (len(MAXBOXACC_THRESHOLDS), len(MAXBOXACC_IOUS))
    iou_curve_sum: np.ndarray = field(init=False)  # (256,) sum over images of the mask IoU curve
    positives: np.ndarray = field(init=False)  # (PXAP_BINS,) object pixels per heatmap bin
    negatives: np.ndarray = field(init=False)  # (PXAP_BINS,) background pixels per heatmap bin

    def __post_init__(self) -> None:
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        t = len(self.thresholds)
        self.gt_known = np.zeros(t, dtype=np.int64)
        self.top1_loc = np.zeros(t, dtype=np.int64)
        self.top5_loc = np.zeros(t, dtype=np.int64)
        self.errors = np.zeros((t, len(m.ERROR_KINDS)), dtype=np.int64)
        self.box_hits = np.zeros((len(m.MAXBOXACC_THRESHOLDS), len(m.MAXBOXACC_IOUS)), dtype=np.int64)
        self.iou_curve_sum = np.zeros(m.PEAK_LEVELS, dtype=np.float64)
        self.positives = np.zeros(m.PXAP_BINS, dtype=np.int64)
        self.negatives = np.zeros(m.PXAP_BINS, dtype=np.int64)

    def add(
        self,
        *,
        ranking: Sequence[int],
        label: int,
        heatmap: np.ndarray,
        boxes: np.ndarray,
        mask: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> None:
        """One image: its top classes best first (5, or all when fewer), the ground-truth class, that
        class's (H, W) heatmap, the (M, 4) ground-truth boxes (M may be 0: no box metrics) and, if known,
        the (H, W) bool object mask and pixels to count (`valid`).

        The top-1 box is the ground-truth class's box whenever the top-1 class is right, and a wrong
        class fails every box metric, so the ground-truth class's heatmap is all that is needed.
        """
        top1 = len(ranking) > 0 and ranking[0] == label
        top5 = label in ranking[:5]
        self.images += 1
        self.top1_cls += top1
        self.top5_cls += top5
        if len(boxes):
            self.box_images += 1
            pred = m.union_boxes_over_thresholds(heatmap, self.thresholds)
            correct = m.box_iou(pred, boxes).max(axis=1) > m.LOC_IOU
            self.gt_known += correct
            self.top1_loc += correct & top1
            self.top5_loc += correct & top5
            kinds = m.error_kinds(top1, pred, boxes)
            self.errors[np.arange(len(kinds)), kinds] += 1
            self.box_hits += m.max_box_acc_hits(heatmap, boxes)
        if mask is not None:
            self.mask_images += 1
            self.iou_curve_sum += m.mask_iou_curve(heatmap, mask, valid)
            pos, neg = m.pixel_histograms(heatmap, mask, valid)
            self.positives += pos
            self.negatives += neg

    def best_index(self) -> int:
        """Index of the best box threshold (see SELECTION)."""
        order = np.lexsort((self.thresholds, -self.top1_loc, -self.gt_known))
        return int(order[0])

    def summary(self) -> dict[str, Any]:
        """Percentages (0-100) as the report holds them; None where the data set lacks what a figure needs."""
        pct = _percent
        out: dict[str, Any] = {
            "images": self.images,
            "box_images": self.box_images,
            "mask_images": self.mask_images,
            "top1_cls": pct(self.top1_cls, self.images),
            "top5_cls": pct(self.top5_cls, self.images),
        }
        if self.box_images:
            b = self.best_index()
            per_iou = self.box_hits.max(axis=0) / self.box_images
            out |= {
                "best_threshold": float(self.thresholds[b]),
                "top1_loc": pct(self.top1_loc[b], self.box_images),
                "top5_loc": pct(self.top5_loc[b], self.box_images),
                "gt_known_loc": pct(self.gt_known[b], self.box_images),
                "maxboxacc_v2": round(float(per_iou.mean()) * 100.0, 4),
                "maxboxacc": {
                    f"{iou:g}": {
                        "acc": round(float(per_iou[j]) * 100.0, 4),
                        "threshold": float(m.MAXBOXACC_THRESHOLDS[int(np.argmax(self.box_hits[:, j]))]),
                    }
                    for j, iou in enumerate(m.MAXBOXACC_IOUS)
                },
                "errors": {
                    kind: pct(self.errors[b, i], self.box_images)
                    for i, kind in enumerate(m.ERROR_KINDS)
                    if kind != "correct"
                },
                "per_threshold": [
                    {
                        "threshold": float(t),
                        "top1_loc": pct(self.top1_loc[i], self.box_images),
                        "top5_loc": pct(self.top5_loc[i], self.box_images),
                        "gt_known_loc": pct(self.gt_known[i], self.box_images),
                    }
                    for i, t in enumerate(self.thresholds)
                ],
            }
        else:
            out |= dict.fromkeys(
                ("best_threshold", "top1_loc", "top5_loc", "gt_known_loc", "maxboxacc_v2", "maxboxacc", "errors")
            )
            out["per_threshold"] = []
        if self.mask_images:
            value, t = m.peak(self.iou_curve_sum / self.mask_images)
            out |= {
                "peak_iou": round(value * 100.0, 4),
                "peak_t": t,
                "pxap": round(m.average_precision(self.positives, self.negatives) * 100.0, 4),
            }
        else:
            out |= {"peak_iou": None, "peak_t": None, "pxap": None}
        return out


def _percent(count: int | np.integer, total: int) -> float | None:
    return round(100.0 * float(count) / total, 4) if total else None
