"""The CUDA path: the same SCG / resize / boxes code on cupy arrays, and the engine's GPU outputs.

Skipped where cupy has no GPU (CI); run on a GPU machine with cupy (and onnxruntime-gpu for the
engine tests) installed, e.g. by scripts/gpu-check, which points SPA_GPU_TEST_MODEL_DIR at a VGG16-SPA
model directory (that machine has no torch to export one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from box_oracles import full_size_boxes
from scg_loops import make_class_maps, make_features
from spa_service.arrays import cupy_available, to_numpy
from spa_service.card import PRESETS
from spa_service.pipeline.boxes import union_boxes
from spa_service.pipeline.resize import resize_maps, roundtrip_maps
from spa_service.pipeline.scg import normalize_cam, scg_maps, structure_affinity

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cupy_available(), reason="cupy with a CUDA device is not available")]
PARAMS = PRESETS["cub"].scg
DATA = Path(__file__).resolve().parent / "data"


needs_cuda_provider = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="onnxruntime-gpu is not installed"
)


def pipeline(xp, features, class_maps, original, mode):
    feats = [xp.asarray(f) for f in features]
    cams = normalize_cam(xp.asarray(class_maps))
    cams = roundtrip_maps(cams, original)
    maps = scg_maps(structure_affinity(feats, PARAMS, mode=mode), cams, PARAMS, mode=mode)
    return resize_maps(maps[0], original)


@pytest.fixture(scope="module")
def gpu_model_dir(request: pytest.FixtureRequest) -> Path:
    """SPA_GPU_TEST_MODEL_DIR where set (a machine without torch), else a fresh VGG16-SPA export."""
    given = os.environ.get("SPA_GPU_TEST_MODEL_DIR")
    return Path(given) if given else request.getfixturevalue("vgg16_model_dir")


@pytest.mark.parametrize("mode", ["reference", "paper"])
@pytest.mark.parametrize(("size", "channels"), [((14, 14), (512, 512)), ((28, 28), (288, 768))])
def test_cupy_matches_numpy(size: tuple[int, int], channels: tuple[int, int], mode: str) -> None:
    import cupy

    rng = np.random.default_rng(0)
    features = [make_features(rng, 2, c, *size) for c in channels]
    class_maps = make_class_maps(rng, 2, 5, *size)
    on_cpu = pipeline(np, features, class_maps, (375, 500), mode)
    on_gpu = pipeline(cupy, features, class_maps, (375, 500), mode)
    assert isinstance(on_gpu, cupy.ndarray)
    np.testing.assert_allclose(to_numpy(on_gpu), on_cpu, atol=1e-5)
    assert to_numpy(union_boxes(on_gpu, 0.25)).tolist() == union_boxes(on_cpu, 0.25).tolist()  # on the device
    for mode in ("union", "largest", "all"):
        assert full_size_boxes(on_gpu, 0.25, mode) == full_size_boxes(on_cpu, 0.25, mode)


@needs_cuda_provider
def test_engine_runs_cuda_with_the_chosen_options(gpu_model_dir: Path) -> None:
    from spa_service.card import load_card
    from spa_service.pipeline.engine import Engine

    card, onnx_path = load_card(gpu_model_dir)
    engine = Engine(onnx_path, card, providers="cuda")
    assert engine.provider == "CUDAExecutionProvider" and not engine.cuda_fallback and engine.outputs_on_gpu
    options = engine.session.get_provider_options()["CUDAExecutionProvider"]
    assert options["use_tf32"] == "0" and options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert options["arena_extend_strategy"] == "kSameAsRequested"


@needs_cuda_provider
@pytest.mark.parametrize("mode", ["reference", "paper"])
def test_localizer_on_gpu_matches_cpu(gpu_model_dir: Path, mode: str) -> None:
    from spa_service.pipeline.imaging import decode_image
    from spa_service.pipeline.localize import LocalizeOptions, Localizer
    from spa_service.settings import Settings

    images = [decode_image((DATA / name).read_bytes(), max_pixels=40_000_000) for name in ("chelsea.jpg", "coffee.jpg")]
    options = [LocalizeOptions(topk=5, box_mode="all"), LocalizeOptions(topk=3, box_mode="union")]
    gpu = Localizer.from_settings(Settings(model_dir=gpu_model_dir, providers="cuda", scg_mode=mode))
    cpu = Localizer.from_settings(Settings(model_dir=gpu_model_dir, providers="cpu", scg_mode=mode))
    assert gpu.engine.outputs_on_gpu
    for on_gpu, on_cpu in zip(gpu.localize(images, options), cpu.localize(images, options), strict=True):
        assert [p.class_id for p in on_gpu.predictions] == [p.class_id for p in on_cpu.predictions]
        for a, b in zip(on_gpu.predictions, on_cpu.predictions, strict=True):
            np.testing.assert_allclose(a.heatmap_at_image_size(), b.heatmap_at_image_size(), atol=1e-3)
            # fp32 on both sides (TF32 off): the same boxes, up to an edge pixel at the threshold.
            assert len(a.boxes) == len(b.boxes)
            if a.boxes:
                assert np.abs(np.asarray(a.boxes) - np.asarray(b.boxes)).max() <= 2, (a.boxes, b.boxes)
