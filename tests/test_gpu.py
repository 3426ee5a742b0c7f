"""The CUDA path: the same SCG / resize / boxes code on cupy arrays, and the engine's GPU outputs.

Skipped where cupy has no GPU (CI); run on a GPU machine with cupy (and onnxruntime-gpu for the
engine test) installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from scg_loops import make_class_maps, make_features
from spa_service.arrays import cupy_available, to_numpy
from spa_service.boxes import boxes_from_heatmaps
from spa_service.card import PRESETS
from spa_service.resize import resize_maps, roundtrip_maps
from spa_service.scg import normalize_cam, scg_maps, structure_affinity

pytestmark = pytest.mark.skipif(not cupy_available(), reason="cupy with a CUDA device is not available")
PARAMS = PRESETS["cub"].scg
DATA = Path(__file__).resolve().parent / "data"


def pipeline(xp, features, class_maps, original):
    feats = [xp.asarray(f) for f in features]
    cams = normalize_cam(xp.asarray(class_maps))
    cams = roundtrip_maps(cams, original)
    maps = scg_maps(structure_affinity(feats, PARAMS), cams, PARAMS)
    return resize_maps(maps[0], original)


@pytest.mark.parametrize(("size", "channels"), [((14, 14), (512, 512)), ((28, 28), (288, 768))])
def test_cupy_matches_numpy(size: tuple[int, int], channels: tuple[int, int]) -> None:
    import cupy

    rng = np.random.default_rng(0)
    features = [make_features(rng, 2, c, *size) for c in channels]
    class_maps = make_class_maps(rng, 2, 5, *size)
    on_cpu = pipeline(np, features, class_maps, (375, 500))
    on_gpu = pipeline(cupy, features, class_maps, (375, 500))
    assert isinstance(on_gpu, cupy.ndarray)
    np.testing.assert_allclose(to_numpy(on_gpu), on_cpu, atol=1e-5)
    for mode in ("union", "largest", "all"):
        assert boxes_from_heatmaps(on_gpu, 0.25, mode) == boxes_from_heatmaps(on_cpu, 0.25, mode)


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="onnxruntime-gpu is not installed"
)
def test_localizer_on_gpu_matches_cpu(vgg16_model_dir: Path) -> None:
    from spa_service.imaging import decode_image
    from spa_service.localize import Localizer, LocalizeOptions
    from spa_service.settings import Settings

    image = decode_image((DATA / "chelsea.jpg").read_bytes(), max_pixels=40_000_000)
    options = [LocalizeOptions(topk=5, box_mode="all")]
    gpu = Localizer.from_settings(Settings(model_dir=vgg16_model_dir, providers="cuda"))
    cpu = Localizer.from_settings(Settings(model_dir=vgg16_model_dir, providers="cpu"))
    assert gpu.engine.outputs_on_gpu
    (on_gpu,), (on_cpu,) = gpu.localize([image], options), cpu.localize([image], options)
    assert [p.class_id for p in on_gpu.predictions] == [p.class_id for p in on_cpu.predictions]
    for a, b in zip(on_gpu.predictions, on_cpu.predictions):
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-3)
