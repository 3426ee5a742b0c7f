"""A slow, loop-by-loop SCG, straight from docs/reference.md section 4 and the paper's Eq. 6-14.

Structured like the authors' evaluation: for each image the affinity of its blocks, then for
each class the cam, two real cv2.resize calls (step 9), the selected columns / rows gathered
one position at a time, and a final cv2.resize. Deliberately unvectorised: it is the yardstick
for tests/test_scg.py and for the speed ratio in bench/bench_scg.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from spa_service.card import ScgParams


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _minmax(values: np.ndarray) -> np.ndarray:
    return (values - np.min(values)) / (np.max(values) - np.min(values) + 1e-10)


def _unit_rows(block: np.ndarray) -> np.ndarray:
    """One image's (C, h, w) block as (HW, C) rows of unit length (zero rows stay zero)."""
    channels = block.shape[0]
    rows = block.reshape(channels, -1).T
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-10)


def reference_block_loops(block: np.ndarray, params: ScgParams) -> np.ndarray:
    """Reference steps 1-7 for one image's block (C, h, w) -> (HW, HW)."""
    rows = _unit_rows(block)
    hw = rows.shape[0]
    a = np.maximum(rows @ rows.T, 0)  # steps 1-2
    a[a < params.fo_th] = 0
    first = a / (a.sum(axis=0, keepdims=True) + 1e-5)  # step 3
    a2 = a.copy()
    for i in range(hw):  # step 4
        a2[i, i] = 0
    p = a2 / (a2.sum(axis=0, keepdims=True) + 1e-5)
    high = p.copy()
    for _ in range(params.order - 1):  # step 5
        high = high @ p
        high = high / (high.sum(axis=0, keepdims=True) + 1e-10)
    high[high < params.so_th / hw] = 0  # step 6
    s_block = np.maximum(first, params.so_weight * high)  # step 7
    return s_block / (s_block.sum(axis=0, keepdims=True) + 1e-10)


def paper_block_loops(block: np.ndarray, params: ScgParams) -> np.ndarray:
    """Paper Eq. 6-11 for one image's block (C, h, w) -> HSC (HW, HW), one row i at a time."""
    rows = _unit_rows(block)
    hw = rows.shape[0]
    cosine = rows @ rows.T  # Eq. 6
    first = np.maximum(cosine, 0)  # Eq. 7
    if params.order == 1:
        return first
    off_diagonal = cosine.copy()  # S(f_k, f_j) with k != j
    for k in range(hw):
        off_diagonal[k, k] = 0
    hsc = np.empty_like(first)
    for i in range(hw):
        chain = cosine[i].copy()  # S(f_i, f_k) with k != i
        chain[i] = 0
        for _ in range(params.order - 1):  # Eq. 8 (supplementary Eq. 1 for higher orders)
            chain = chain @ off_diagonal / hw
        hsc[i] = np.maximum(first[i], _minmax(chain))  # Eq. 9-11, row i normalised over k
    return hsc


def reference_class_loops(affinity: np.ndarray, cam: np.ndarray, params: ScgParams) -> np.ndarray:
    """Steps 10-13 (before the final resize) for one class: S (HW, HW), cam (h, w) -> (h, w)."""
    flat = cam.reshape(-1)
    hw = flat.shape[0]

    def aggregate(selected: list[int]) -> np.ndarray:
        if not selected:
            return np.zeros(hw, dtype=affinity.dtype)
        total = np.zeros(hw, dtype=affinity.dtype)
        for j in selected:  # step 11 per selected column, step 12 summed
            total += _minmax(affinity[:, j])
        return _minmax(total)

    positive = aggregate([j for j in range(hw) if flat[j] >= params.fg_th])
    negative = aggregate([j for j in range(hw) if flat[j] <= params.bg_th])
    return _minmax(np.maximum(positive - negative, 0)).reshape(cam.shape)  # step 13


def paper_class_loops(hsc: np.ndarray, cam: np.ndarray, params: ScgParams) -> np.ndarray:
    """Eq. 12-14 for one class: HSC (HW, HW), cam (h, w) -> (h, w), min-max normalised."""
    flat = cam.reshape(-1)
    hw = flat.shape[0]

    def mean_rows(selected: list[int]) -> np.ndarray:
        total = np.zeros(hw, dtype=hsc.dtype)
        for i in selected:
            total += hsc[i]
        return total / max(len(selected), 1)

    objects = mean_rows([i for i in range(hw) if flat[i] > params.fg_th])
    background = mean_rows([i for i in range(hw) if flat[i] < params.bg_th])
    return _minmax(np.maximum(objects - background, 0)).reshape(cam.shape)


def scg_loops(
    features: Sequence[np.ndarray],
    class_maps: np.ndarray,
    classes: np.ndarray,
    original_sizes: Sequence[tuple[int, int]],
    params: ScgParams,
    mode: str = "reference",
    final_resize: bool = True,
) -> list[np.ndarray]:
    """Heatmaps per image: (K, H, W) at its original size (or (K, h, w) without the final resize).

    features: blocks (N, C_b, h, w); class_maps (N, num_classes, h, w); classes (N, K) indices;
    original_sizes: (H, W) per image.
    """
    block_loops = reference_block_loops if mode == "reference" else paper_block_loops
    class_loops = reference_class_loops if mode == "reference" else paper_class_loops
    heatmaps = []
    for n, (height, width) in enumerate(original_sizes):
        affinity = sum(block_loops(block[n], params) for block in features)
        maps = []
        for c in classes[n]:
            cam = np.maximum(class_maps[n, c], 0)  # step 8
            cam = _minmax(cam)
            h, w = cam.shape
            cam = _resize(_resize(cam, height, width), h, w)  # step 9
            scg = class_loops(affinity, cam, params)
            maps.append(_resize(scg, height, width) if final_resize else scg)
        heatmaps.append(np.stack(maps))
    return heatmaps


# --- synthetic inputs shared by the tests and bench/bench_scg.py -----------------------------


def _ellipse(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    ry, rx = rng.uniform(0.15, 0.4) * h + 0.5, rng.uniform(0.15, 0.4) * w + 0.5
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def make_features(rng: np.random.Generator, n: int, channels: int, h: int, w: int) -> np.ndarray:
    """Post-ReLU-like (N, C, h, w) float32 features with object / background structure.

    Each position mixes one of four latent prototypes (two object parts, two background
    textures) with noise, projected to `channels` and passed through a biased ReLU: about 60%
    zeros and cosine similarities spread over [0, 1] as in a real backbone.
    """
    latent = 16
    yy, xx = np.mgrid[0:h, 0:w]
    projection = rng.normal(0, 1, (latent, channels))
    out = np.empty((n, channels, h, w), dtype=np.float32)
    for i in range(n):
        part = xx > rng.uniform(0.3, 0.7) * w
        lower = yy > rng.uniform(0.3, 0.7) * h
        label = np.where(_ellipse(rng, h, w), part.astype(int), 2 + lower.astype(int))
        z = rng.normal(0, 1, (4, latent))[label] + rng.normal(0, 0.5, (h, w, latent))
        out[i] = np.maximum(z @ projection - 1.0, 0).transpose(2, 0, 1)
    return out


def make_class_maps(rng: np.random.Generator, n: int, num_classes: int, h: int, w: int) -> np.ndarray:
    """(N, num_classes, h, w) float32 class maps: two smooth bumps per class on a negative floor."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy = rng.uniform(0, h, (n, num_classes, 2, 1, 1))
    cx = rng.uniform(0, w, (n, num_classes, 2, 1, 1))
    sigma = rng.uniform(0.1, 0.35, (n, num_classes, 2, 1, 1)) * max(h, w)
    height = rng.uniform(0.2, 1.0, (n, num_classes, 2, 1, 1))
    bumps = (height * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))).sum(axis=2)
    return (4 * bumps - 1 + rng.normal(0, 0.05, (n, num_classes, h, w))).astype(np.float32)
