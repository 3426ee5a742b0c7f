"""Per-method running totals over a data set, and the summary (percentages) they give.

`MethodTally.add` takes one image at a time and keeps only counters and histograms, of a size fixed by
the threshold sweeps, never a heatmap: a data set of any size is streamed through it.

Data-set figures, each under the protocol of the code that defined it (`protocol_of`; docs/evaluation.md):
- spa: Top-1 / Top-5 / GT-known Loc and the error breakdown, as the SPA authors' evaluation computes
  them: shares of the images with boxes, at one box threshold, with the service's union box at the
  original size and IoU > 0.5.
- wsol (or the `original` WsolProtocol): MaxBoxAccV2 takes each IoU threshold's best CAM threshold, then
  the mean over the three; PxAP pools every image's pixels (metrics.WsolProtocol).
- lid: Peak-IoU, the peak of the per-image IoU curves' mean (LID challenge), at the original size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics as m
from .datasets import MaskLevels

# The best box threshold is the one with the highest GT-known Loc: it uses every image and does not
# depend on the classifier; ties go to the higher Top-1 Loc, then to the lower threshold.
SELECTION = "highest gt_known_loc_acc, then highest top1_loc_acc, then lowest threshold"
SPA_PROTOCOL = (
    "SPA authors' evaluation: the service's union box (pixels >= threshold) of the heatmap at the original "
    "image size, inclusive IoU > 0.5 with a ground-truth box; Loc at the best box threshold"
)
PEAK_PROTOCOL = (
    "LID challenge, at the original size: IoU of (heatmap * 255 >= T) with the mask "
    f"(levels >= {m.MASK_LEVEL}), T = 0..255, averaged over images, then its peak"
)
LOC_FIGURES = ("top1_cls_acc", "top5_cls_acc", "top1_loc_acc", "top5_loc_acc", "gt_known_loc_acc", "errors")


def protocol_of(wsol: m.WsolProtocol) -> dict[str, str]:
    """Each summary figure's key -> the name of the protocol that computes it."""
    return {
        **dict.fromkeys(LOC_FIGURES, "spa"),
        "maxboxacc_v2_acc": wsol.name,
        "maxboxacc_acc": wsol.name,
        "pxap": wsol.name,
        "peak_iou": "lid",
        "peak_t": "lid",
    }


@dataclass
class MethodTally:
    """Running totals for one method (cam or scg). `thresholds` (T,) are the box thresholds swept for
    Top-1 / Top-5 / GT-known Loc and the error breakdown; `protocol` scores MaxBoxAccV2 and PxAP."""

    thresholds: np.ndarray
    protocol: m.WsolProtocol = field(default_factory=m.WsolProtocol)
    images: int = 0
    box_images: int = 0
    mask_images: int = 0
    empty_heatmaps: int = 0  # images whose ground-truth class heatmap is all zero (an all-negative class map)
    top1_cls: int = 0
    top5_cls: int = 0
    gt_known: np.ndarray = field(init=False)  # (T,) images whose ground-truth class box is correct
    top1_loc: np.ndarray = field(init=False)  # (T,)
    top5_loc: np.ndarray = field(init=False)  # (T,)
    errors: np.ndarray = field(init=False)  # (T, len(ERROR_KINDS)) counts of each top-1 outcome
    cam_thresholds: np.ndarray = field(init=False)  # the protocol's CAM thresholds
    box_hits: np.ndarray = field(init=False)  # (len(cam_thresholds), len(MAXBOXACC_IOUS))
    iou_curve_sum: np.ndarray = field(init=False)  # (256,) sum over images of the mask IoU curve
    pxap_edges: np.ndarray = field(init=False)
    positives: np.ndarray = field(init=False)  # (len(pxap_edges) - 1,) object pixels per score bin
    negatives: np.ndarray = field(init=False)  # (len(pxap_edges) - 1,) background pixels per score bin

    def __post_init__(self) -> None:
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        t = len(self.thresholds)
        self.gt_known = np.zeros(t, dtype=np.int64)
        self.top1_loc = np.zeros(t, dtype=np.int64)
        self.top5_loc = np.zeros(t, dtype=np.int64)
        self.errors = np.zeros((t, len(m.ERROR_KINDS)), dtype=np.int64)
        self.cam_thresholds = self.protocol.cam_thresholds()
        self.box_hits = np.zeros((len(self.cam_thresholds), len(m.MAXBOXACC_IOUS)), dtype=np.int64)
        self.iou_curve_sum = np.zeros(m.PEAK_LEVELS, dtype=np.float64)
        self.pxap_edges = self.protocol.pxap_edges()
        self.positives = np.zeros(len(self.pxap_edges) - 1, dtype=np.int64)
        self.negatives = np.zeros(len(self.pxap_edges) - 1, dtype=np.int64)

    def add(
        self,
        *,
        ranking: Sequence[int],
        label: int,
        heatmap: np.ndarray,
        boxes: np.ndarray,
        coarse_map: np.ndarray | None = None,
        mask: MaskLevels | None = None,
    ) -> None:
        """One image: its top classes best first (5, or all when fewer), the ground-truth class, that
        class's (H, W) heatmap at the original size, the (M, 4) ground-truth boxes (M may be 0: no box
        metrics), the class's (h, w) map at the class map's resolution (needed by the wsol protocol) and,
        if known, the mask grey levels.

        The top-1 box is the ground-truth class's box whenever the top-1 class is right, and a wrong
        class fails every box metric, so the ground-truth class's heatmap is all that is needed.
        """
        wsol = self.protocol.name == "wsol"
        if wsol and coarse_map is None:
            raise ValueError("the wsol protocol needs the (h, w) map at the class map's resolution")
        top1 = len(ranking) > 0 and ranking[0] == label
        top5 = label in ranking[:5]
        self.images += 1
        self.top1_cls += top1
        self.top5_cls += top5
        self.empty_heatmaps += not heatmap.any()
        size = (heatmap.shape[1], heatmap.shape[0])
        scoremap = m.grid_scoremap(coarse_map) if wsol and coarse_map is not None else heatmap
        if len(boxes):
            self.box_images += 1
            pred = m.union_boxes_over_thresholds(heatmap, self.thresholds)
            correct = m.box_iou(pred, boxes).max(axis=1) > m.LOC_IOU
            self.gt_known += correct
            self.top1_loc += correct & top1
            self.top5_loc += correct & top5
            kinds = m.error_kinds(top1, pred, boxes)
            self.errors[np.arange(len(kinds)), kinds] += 1
            if wsol:
                hits = m.wsol_box_hits(
                    scoremap, m.grid_boxes(boxes, size), self.cam_thresholds, multi_contour=self.protocol.multi_contour
                )
            else:
                hits = m.original_box_hits(
                    heatmap, boxes, self.cam_thresholds, multi_contour=self.protocol.multi_contour
                )
            self.box_hits += hits
        if mask is not None:
            self.mask_images += 1
            obj, counted = m.mask_regions(mask.object, mask.ignore, m.MASK_LEVEL)
            self.iou_curve_sum += m.mask_iou_curve(heatmap, obj, counted)
            if wsol:
                ignore = None if mask.ignore is None else m.grid_levels(mask.ignore)
                obj, counted = m.mask_regions(m.grid_levels(mask.object), ignore, self.protocol.mask_level)
            pos, neg = m.pixel_histograms(scoremap, obj, counted, self.pxap_edges)
            self.positives += pos
            self.negatives += neg

    def best_index(self) -> int:
        """Index of the best box threshold (see SELECTION)."""
        order = np.lexsort((self.thresholds, -self.top1_loc, -self.gt_known))
        return int(order[0])

    def summary(self) -> dict[str, Any]:
        """Percentages (0-100) as the report holds them, keys ending in _acc (higher is better) or _err
        (lower is better); None where the data set lacks what a figure needs."""
        pct = _percent
        out: dict[str, Any] = {
            "images": self.images,
            "box_images": self.box_images,
            "mask_images": self.mask_images,
            "empty_heatmaps": self.empty_heatmaps,
            "top1_cls_acc": pct(self.top1_cls, self.images),
            "top5_cls_acc": pct(self.top5_cls, self.images),
        }
        if self.box_images:
            b = self.best_index()
            per_iou = self.box_hits.max(axis=0) / self.box_images
            out |= {
                "best_threshold": float(self.thresholds[b]),
                "top1_loc_acc": pct(self.top1_loc[b], self.box_images),
                "top5_loc_acc": pct(self.top5_loc[b], self.box_images),
                "gt_known_loc_acc": pct(self.gt_known[b], self.box_images),
                "maxboxacc_v2_acc": round(float(per_iou.mean()) * 100.0, 4),
                "maxboxacc_acc": {
                    f"{iou:g}": {
                        "acc": round(float(per_iou[j]) * 100.0, 4),
                        "cam_threshold": round(float(self.cam_thresholds[int(np.argmax(self.box_hits[:, j]))]), 6),
                    }
                    for j, iou in enumerate(m.MAXBOXACC_IOUS)
                },
                "errors": {
                    f"{kind}_err": pct(self.errors[b, i], self.box_images)
                    for i, kind in enumerate(m.ERROR_KINDS)
                    if kind != "correct"
                },
                "per_threshold": [
                    {
                        "threshold": float(t),
                        "top1_loc_acc": pct(self.top1_loc[i], self.box_images),
                        "top5_loc_acc": pct(self.top5_loc[i], self.box_images),
                        "gt_known_loc_acc": pct(self.gt_known[i], self.box_images),
                    }
                    for i, t in enumerate(self.thresholds)
                ],
            }
        else:
            out |= dict.fromkeys(
                (
                    "best_threshold", "top1_loc_acc", "top5_loc_acc", "gt_known_loc_acc",
                    "maxboxacc_v2_acc", "maxboxacc_acc", "errors",
                )
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
