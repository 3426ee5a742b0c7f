"""The vectorised SCG (service/pipeline/scg.py + service/pipeline/resize.py) against the loop implementation.

Parity is checked twice:
- in float64, where both sides compute the same real numbers and must agree to 1e-5 (they
  agree to 1e-14 before the final resize and to ~6e-8 after it, cv2's float64 resize being
  float32-accurate): this proves the algebra (masks, fused normalisations, syrk forms, the
  resize matrices) is the reference's;
- in float32, the service's dtype. Reference mode thresholds second-order values at so_th / HW,
  in the middle of their distribution, and min-max normalises differences of nearly equal
  sums, so two float32 implementations with different summation orders cannot agree to 1e-5
  everywhere at HW = 784 (nor does either agree with float64 that closely). The float32 tests
  hold HW <= 240 to 1e-5 and HW = 784 to a quantile bound that still catches any real bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
import scg_loops as scg_loops_module
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scg_loops import (
    make_class_maps,
    make_features,
    paper_class_loops,
    reference_class_loops,
    scg_loops,
)
from spa_service.card import PRESETS, ScgParams
from spa_service.pipeline.localize import localization_maps
from spa_service.pipeline.resize import resize_maps, roundtrip_maps
from spa_service.pipeline.scg import normalize_cam, scg_maps, structure_affinity

FAST = settings(max_examples=30, deadline=None)
MODES = ["reference", "paper"]
CUB, ILSVRC = PRESETS["cub"].scg, PRESETS["ilsvrc"].scg


def vectorized(features, class_maps, classes, sizes, params, mode):
    """The service path (`localize.localization_maps`): (N, K, h, w) maps and, per image, (K, H, W)
    heatmaps at its size."""
    maps = localization_maps(class_maps, features, classes, sizes, ["scg"] * len(sizes), params, mode)
    return maps, [resize_maps(m, size) for m, size in zip(maps, sizes, strict=True)]


@dataclass(frozen=True)
class Case:
    name: str
    map_size: tuple[int, int]
    channels: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]  # original (H, W) per image; len = batch
    topk: int

    def inputs(self, seed: int, dtype=np.float32):
        rng = np.random.default_rng(seed)
        n, (h, w) = len(self.sizes), self.map_size
        features = [make_features(rng, n, c, h, w).astype(dtype) for c in self.channels]
        class_maps = make_class_maps(rng, n, 12, h, w).astype(dtype)
        classes = np.argsort(-class_maps.mean(axis=(2, 3)), axis=1)[:, : self.topk]
        return features, class_maps, classes, list(self.sizes)


VGG = Case("vgg16", (14, 14), (512, 512), ((500, 375),), 5)
VGG_BATCH = Case("vgg16-batch", (14, 14), (512, 512), ((500, 375), (7, 9), (14, 14)), 5)
INCEPTION = Case("inceptionv3", (28, 28), (288, 768), ((300, 200),), 5)
NON_SQUARE = Case("non-square", (12, 20), (64, 32, 16), ((9, 5), (240, 400)), 1)

PARAMS = {
    "cub": CUB,
    "ilsvrc": ILSVRC,
    "order1": CUB.model_copy(update={"order": 1}),
    "order3": ILSVRC.model_copy(update={"order": 3, "fo_th": 0.0}),
}
# Paper mode's loops take one vector-matrix product per row, so HW = 784 runs once per mode.
EXACT = [(c, p, m) for c in (VGG, VGG_BATCH, NON_SQUARE) for p in PARAMS for m in MODES] + [
    (INCEPTION, "cub", "reference"),
    (INCEPTION, "ilsvrc", "reference"),
    (INCEPTION, "ilsvrc", "paper"),
]


def max_error(ours, theirs) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize(("case", "preset", "mode"), EXACT, ids=[f"{c.name}-{p}-{m}" for c, p, m in EXACT])
def test_matches_loops_in_float64(case: Case, preset: str, mode: str) -> None:
    params = PARAMS[preset]
    features, class_maps, classes, sizes = case.inputs(seed=len(case.name), dtype=np.float64)
    maps, heatmaps = vectorized(features, class_maps, classes, sizes, params, mode)
    assert maps.dtype == np.float64 and maps.shape == (len(sizes), case.topk, *case.map_size)
    assert [h.shape for h in heatmaps] == [(case.topk, *size) for size in sizes]
    assert max_error(heatmaps, scg_loops(features, class_maps, classes, sizes, params, mode)) <= 1e-5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("preset", ["cub", "ilsvrc"])
@pytest.mark.parametrize("case", [VGG, VGG_BATCH, NON_SQUARE], ids=lambda c: c.name)
def test_matches_loops_in_float32(case: Case, preset: str, mode: str) -> None:
    params = PARAMS[preset]
    features, class_maps, classes, sizes = case.inputs(seed=7)
    maps, heatmaps = vectorized(features, class_maps, classes, sizes, params, mode)
    assert maps.dtype == np.float32 and all(h.dtype == np.float32 for h in heatmaps)
    assert max_error(heatmaps, scg_loops(features, class_maps, classes, sizes, params, mode)) <= 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_inception_float32_within_rounding_of_loops(mode: str) -> None:
    """HW = 784: 99% of pixels within 1e-5, all within 1e-2 (a second-order value sitting on
    so_th / HW can flip under float32 rounding and move one position's value)."""
    features, class_maps, classes, sizes = INCEPTION.inputs(seed=7)
    _, heatmaps = vectorized(features, class_maps, classes, sizes, ILSVRC, mode)
    loops = scg_loops(features, class_maps, classes, sizes, ILSVRC, mode)
    errors = np.concatenate([np.abs(a - b).ravel() for a, b in zip(heatmaps, loops, strict=True)])
    assert np.quantile(errors, 0.99) <= 1e-5 and errors.max() <= 1e-2


# --- degenerate inputs: finite, in [0, 1], and still the reference's answer --------------------


def assert_unit(maps: np.ndarray) -> None:
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("mode", MODES)
def test_zero_and_constant_class_maps_give_zero_maps(mode: str) -> None:
    features, class_maps, _, sizes = VGG.inputs(seed=3, dtype=np.float64)
    class_maps[:, 0] = 0.0
    class_maps[:, 1] = 3.0
    classes = np.array([[0, 1, 2]])
    maps, heatmaps = vectorized(features, class_maps, classes, sizes, CUB, mode)
    assert_unit(maps)
    assert not maps[0, :2].any() and maps[0, 2].max() > 0.99
    assert max_error(heatmaps, scg_loops(features, class_maps, classes, sizes, CUB, mode)) <= 1e-5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("low", "high", "empty"), [(0.0, 0.09, "positive"), (0.5, 1.0, "negative"), (0.06, 0.09, "both")]
)
def test_empty_selections(mode: str, low: float, high: float, empty: str) -> None:
    """cams entirely below fg_th (0.1), entirely above bg_th (0.05), or between the two."""
    features, _, _, _ = VGG.inputs(seed=4, dtype=np.float64)
    rng = np.random.default_rng(5)
    cams = rng.uniform(low, high, (1, 3, 14, 14))
    affinity = structure_affinity(features, CUB, mode)
    maps = scg_maps(affinity, cams, CUB, mode)
    assert_unit(maps)
    if empty != "negative":  # no object positions: nothing to localise
        assert not maps.any()
    class_loops = reference_class_loops if mode == "reference" else paper_class_loops
    for k in range(3):
        np.testing.assert_allclose(maps[0, k], class_loops(affinity[0], cams[0, k], CUB), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_feature_vectors(mode: str, dtype) -> None:
    features, class_maps, classes, sizes = VGG.inputs(seed=6, dtype=dtype)
    features[0][:, :, 3:9, 2:6] = 0  # a hole in one block
    features[1][:, :, 0, :] = 0  # a row in the other
    maps, heatmaps = vectorized(features, class_maps, classes, sizes, ILSVRC, mode)
    assert_unit(maps)
    assert max_error(heatmaps, scg_loops(features, class_maps, classes, sizes, ILSVRC, mode)) <= 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_all_zero_feature_vectors(mode: str) -> None:
    _, class_maps, classes, sizes = VGG.inputs(seed=8)
    features = [np.zeros((1, 64, 14, 14), dtype=np.float32), np.zeros((1, 32, 14, 14), np.float32)]
    maps, heatmaps = vectorized(features, class_maps, classes, sizes, CUB, mode)
    assert_unit(maps)
    assert max_error(heatmaps, scg_loops(features, class_maps, classes, sizes, CUB, mode)) <= 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_identical_feature_vectors(mode: str) -> None:
    """Every position alike: the affinity is constant, so the maps are min-max normalised rounding
    noise, whose values depend on the BLAS kernels. Checked instead: the affinity is one value on its
    diagonal and one off it, and the maps are unit maps."""
    _, class_maps, classes, sizes = VGG.inputs(seed=8)
    features = [np.full((1, 64, 14, 14), 1.5, dtype=np.float32), np.zeros((1, 32, 14, 14), np.float32)]
    affinity = structure_affinity(features, CUB, mode)[0]
    on = np.eye(affinity.shape[0], dtype=bool)
    for part in (affinity[on], affinity[~on]):
        assert np.ptp(part) <= 1e-5 * np.abs(part).max()
    maps, _ = vectorized(features, class_maps, classes, sizes, CUB, mode)
    assert_unit(maps)


def test_normalize_cam() -> None:
    maps = np.array([[[[0.0, 0.0], [0.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]], [[-1.0, 1.0], [3.0, 0.5]]]])
    cams = normalize_cam(maps.astype(np.float32))
    assert cams.dtype == np.float32
    np.testing.assert_array_equal(cams[0, :2], 0)
    np.testing.assert_allclose(cams[0, 2], [[0.0, 1 / 3], [1.0, 0.5 / 3]], rtol=1e-6)


def test_bad_inputs_raise() -> None:
    block = np.ones((1, 4, 3, 3), np.float32)
    with pytest.raises(ValueError):
        structure_affinity([block, np.ones((1, 4, 3, 4), np.float32)], CUB)
    with pytest.raises(ValueError):
        structure_affinity([block], CUB, mode="hsc")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        scg_maps(structure_affinity([block], CUB), np.ones((1, 2, 3, 4), np.float32), CUB)


# --- properties --------------------------------------------------------------------------------

params_strategy = st.builds(
    ScgParams,
    fo_th=st.floats(0, 1),
    so_th=st.floats(0, 3),
    so_weight=st.floats(0.01, 4),
    order=st.integers(1, 4),
    fg_th=st.floats(0, 1),
    bg_th=st.floats(0, 1),
)


@st.composite
def scg_inputs(draw: st.DrawFn, dtype=np.float32):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, k, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    channels = draw(st.lists(st.integers(1, 24), min_size=1, max_size=3))
    zeros = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))  # share of all-zero feature vectors
    features = []
    for c in channels:
        block = np.maximum(rng.normal(0, 1, (n, c, h, w)), 0) * (rng.random((n, 1, h, w)) >= zeros)
        features.append(block.astype(dtype))
    class_maps = rng.normal(0, 1, (n, k, h, w)).astype(dtype) * draw(st.sampled_from([0.0, 1.0]))
    return features, class_maps


@given(scg_inputs(), params_strategy, st.sampled_from(MODES), st.integers(1, 60), st.integers(1, 60))
@FAST
def test_maps_are_finite_and_in_unit_range(inputs, params: ScgParams, mode: str, height: int, width: int) -> None:
    features, class_maps = inputs
    cams = np.stack([roundtrip_maps(c, (height, width)) for c in normalize_cam(class_maps)])
    assert np.isfinite(cams).all()
    maps = scg_maps(structure_affinity(features, params, mode), cams, params, mode)
    assert_unit(maps)
    heatmaps = resize_maps(maps, (height, width))
    # Bilinear weights sum to 1 only up to float32 rounding.
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= -1e-6 and heatmaps.max() <= 1 + 1e-6


@given(scg_inputs(dtype=np.float64), params_strategy, st.sampled_from(MODES), st.floats(1e-3, 1e3))
@FAST
def test_scaling_a_block_changes_nothing(inputs, params: ScgParams, mode: str, scale: float) -> None:
    features, class_maps = inputs
    # Invariant up to the norms' 1e-10 guard: only where every non-zero vector's norm, scaled, dwarfs it.
    norms = np.linalg.norm(features[0], axis=1)
    assume(not (norms > 0).any() or norms[norms > 0].min() * min(scale, 1.0) > 1e-4)
    scaled = [features[0] * scale, *features[1:]]
    affinity, scaled_affinity = structure_affinity(features, params, mode), structure_affinity(scaled, params, mode)
    np.testing.assert_allclose(scaled_affinity, affinity, rtol=0, atol=1e-5)
    cams = normalize_cam(class_maps)
    # The maps likewise, up to the min-max normalisations' 1e-10 guard: only where each one spreads its values
    # far beyond it (affinities equal to 1e-9, as of nearly parallel feature vectors, make the guard decide).
    spreads = zip(min_max_spreads(affinity, cams, params, mode), min_max_spreads(scaled_affinity, cams, params, mode))
    assume(all(a == b == 0 or min(a, b) > 1e-4 for a, b in spreads))
    np.testing.assert_allclose(
        scg_maps(scaled_affinity, cams, params, mode),
        scg_maps(affinity, cams, params, mode),
        rtol=0,
        atol=1e-5,
    )


def min_max_spreads(affinity: np.ndarray, cams: np.ndarray, params: ScgParams, mode: str) -> list[float]:
    """The spread (max - min) of every min-max normalisation the loop oracle takes for these maps, in order."""
    spreads: list[float] = []
    minmax = scg_loops_module._minmax

    def recording(values: np.ndarray) -> np.ndarray:
        spreads.append(float(np.ptp(values)))
        return minmax(values)

    oracle = reference_class_loops if mode == "reference" else paper_class_loops
    with mock.patch.object(scg_loops_module, "_minmax", recording):
        for n in range(cams.shape[0]):
            for k in range(cams.shape[1]):
                oracle(affinity[n], cams[n, k], params)
    return spreads


@pytest.mark.parametrize("mode", MODES)
def test_scaling_a_block_changes_nothing_in_float32(mode: str) -> None:
    features, class_maps, classes, sizes = VGG.inputs(seed=9)
    maps, _ = vectorized(features, class_maps, classes, sizes, CUB, mode)
    scaled, _ = vectorized([features[0] * 3.7, features[1] * 0.01], class_maps, classes, sizes, CUB, mode)
    np.testing.assert_allclose(
        structure_affinity([features[0] * 3.7, features[1] * 0.01], CUB, mode),
        structure_affinity(features, CUB, mode),
        atol=1e-5,
    )
    np.testing.assert_allclose(scaled, maps, atol=1e-5)
