"""The whole runtime pipeline against PyTorch and the loop reference, on real photographs.

The expectations are built independently of the service's code: preprocessing from the spec
(PIL bilinear resize to the input size, then (x / 255 - mean) / std), scores as a softmax of
the spatial mean, and union boxes by a plain loop over pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scg_loops import scg_loops
from spa_service.errors import InvalidRequestError
from spa_service.pipeline.imaging import DecodedImage, decode_image
from spa_service.pipeline.localize import (
    LocalizeOptions,
    Localizer,
    chosen_classes,
    class_scores,
)
from spa_service.settings import Settings

DATA = Path(__file__).resolve().parent / "data"
PHOTOS = ("chelsea.jpg", "coffee.jpg")


def photo(name: str) -> DecodedImage:
    return decode_image((DATA / name).read_bytes(), max_pixels=40_000_000)


@pytest.fixture(scope="module")
def vgg16(vgg16_model_dir: Path) -> Localizer:
    return Localizer.from_settings(Settings(model_dir=vgg16_model_dir, providers="cpu", max_batch_size=4))


@pytest.fixture(scope="module")
def torch_vgg16():
    """The same freshly initialised VGG16-SPA the fixture exported (same seed), in PyTorch."""
    torch = pytest.importorskip("torch")
    from spa_export.nets import build_model

    torch.manual_seed(0)
    return build_model("vgg16", 200).eval()


def spec_preprocess(images: list[DecodedImage], card) -> np.ndarray:
    """(N, 3, H, W): each image resized with PIL bilinear, scaled to [0, 1], normalised per channel."""
    height, width = card.input_size
    batch = []
    for decoded in images:
        pixels = np.asarray(decoded.image.resize((width, height), Image.BILINEAR), dtype=np.float64) / 255.0
        batch.append(((pixels - np.array(card.mean)) / np.array(card.std)).transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)


def softmax_of_means(class_map: np.ndarray) -> np.ndarray:
    rows = []
    for maps in class_map.astype(np.float64):
        logits = [m.mean() for m in maps]
        top = max(logits)
        exp = [np.exp(v - top) for v in logits]
        rows.append([e / sum(exp) for e in exp])
    return np.array(rows)


def loop_union_box(heatmap: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    xs, ys = [], []
    for y, row in enumerate(heatmap):
        passing = [x for x, value in enumerate(row.tolist()) if value >= threshold]
        if passing:
            xs += [passing[0], passing[-1]]
            ys.append(y)
    return (min(xs), min(ys), max(xs), max(ys)) if xs else (0, 0, 0, 0)


def torch_outputs(model, batch: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(batch))]


@pytest.mark.parametrize("mode", ["reference", "paper"])
def test_vgg16_matches_pytorch_and_loop_reference(vgg16: Localizer, torch_vgg16, mode: str) -> None:
    images = [photo(name) for name in PHOTOS]
    card = vgg16.card
    vgg16.scg_mode = mode
    try:
        results = vgg16.localize(images, [LocalizeOptions(topk=5, method="scg")] * len(images))
    finally:
        vgg16.scg_mode = "reference"
    class_map, feat_a, feat_b = torch_outputs(torch_vgg16, spec_preprocess(images, card))
    scores = softmax_of_means(class_map)
    top5 = np.argsort(-scores, axis=1)[:, :5]
    expected = scg_loops(
        [feat_a, feat_b], class_map, top5, [(im.height, im.width) for im in images], card.scg, mode=mode
    )
    threshold = card.box_threshold["scg"]
    for result, image, classes, want, score_row in zip(results, images, top5, expected, scores):
        assert (result.width, result.height) == (image.width, image.height)
        assert [p.class_id for p in result.predictions] == classes.tolist()
        np.testing.assert_allclose([p.score for p in result.predictions], score_row[classes], rtol=1e-4)
        got = np.stack([p.heatmap_at_image_size() for p in result.predictions])
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-3)
        # Boxes are compared on the reference's own maps: identical unless a pixel sits within the
        # ONNX-vs-PyTorch noise of the threshold, which the heatmap check above bounds.
        assert [p.boxes for p in result.predictions] == [[loop_union_box(m, threshold)] for m in want]
        assert all(p.label == card.labels[p.class_id] for p in result.predictions)


def test_cam_method_is_the_normalised_class_map_resized(vgg16: Localizer, torch_vgg16) -> None:
    image = photo("coffee.jpg")
    (result,) = vgg16.localize([image], [LocalizeOptions(topk=2, method="cam", threshold=0.3)])
    card = vgg16.card
    class_map = torch_outputs(torch_vgg16, spec_preprocess([image], card))[0]
    for prediction in result.predictions:
        cam = np.maximum(class_map[0, prediction.class_id], 0)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-10)
        want = cv2.resize(cam, (image.width, image.height), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(prediction.heatmap_at_image_size(), want, atol=2e-3)
        assert prediction.boxes == [loop_union_box(want, 0.3)]


def test_a_batch_equals_single_images(vgg16: Localizer) -> None:
    images = [photo("chelsea.jpg"), photo("coffee.jpg"), photo("chelsea.jpg")]
    options = [
        LocalizeOptions(topk=3),
        LocalizeOptions(method="cam", box_mode="all"),
        LocalizeOptions(class_ids=(7, 3), box_mode="largest", threshold=0.5),
    ]
    together = vgg16.localize(images, options)
    assert {r.batch_size for r in together} == {3}
    for image, opts, batched in zip(images, options, together):
        (single,) = vgg16.localize([image], [opts])
        assert [p.class_id for p in single.predictions] == [p.class_id for p in batched.predictions]
        for a, b in zip(single.predictions, batched.predictions):
            np.testing.assert_allclose(a.heatmap_at_image_size(), b.heatmap_at_image_size(), atol=1e-4)
            assert a.boxes == b.boxes
    assert [p.class_id for p in together[2].predictions] == [7, 3]
    assert all(len(p.boxes) == 1 for p in together[2].predictions)


def test_one_backbone_run_serves_every_method(vgg16: Localizer) -> None:
    images = [photo("chelsea.jpg"), photo("coffee.jpg")]
    run = vgg16.run_backbone(images)
    for method in ("cam", "scg"):
        options = [LocalizeOptions(topk=2, method=method), LocalizeOptions(class_ids=(5,), method=method)]
        for split, whole in zip(vgg16.postprocess(run, options), vgg16.localize(images, options)):
            assert [(p.class_id, p.boxes) for p in split.predictions] == [(p.class_id, p.boxes) for p in whole.predictions]
            for a, b in zip(split.predictions, whole.predictions):
                np.testing.assert_array_equal(a.map, b.map)


def test_timings_cover_every_stage(vgg16: Localizer) -> None:
    (result,) = vgg16.localize([photo("chelsea.jpg")], [LocalizeOptions()])
    assert set(result.timings_ms) == {"preprocess", "backbone", "scg", "boxes"}
    assert all(v >= 0 for v in result.timings_ms.values())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (LocalizeOptions(topk=0), "topk must be between 1 and 200"),
        (LocalizeOptions(topk=201), "topk must be between 1 and 200"),
        (LocalizeOptions(class_ids=(200,)), r"class_id \[200\] out of range"),
        (LocalizeOptions(class_ids=(-1,)), "out of range"),
        (LocalizeOptions(class_ids=(3, 3)), "must not repeat"),
        (LocalizeOptions(threshold=1.5), r"threshold must be in \[0, 1\]"),
    ],
)
def test_bad_options_are_refused(vgg16: Localizer, options: LocalizeOptions, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        vgg16.localize([photo("chelsea.jpg")], [options])


def test_chosen_classes_pads_to_the_longest_request() -> None:
    scores = np.array([[0.1, 0.5, 0.3, 0.1], [0.4, 0.1, 0.2, 0.3]], dtype=np.float32)
    chosen = chosen_classes(scores, [LocalizeOptions(topk=1), LocalizeOptions(class_ids=(2, 1, 0))])
    assert chosen.tolist() == [[1, 2, 0], [2, 1, 0]]


def test_class_scores_are_softmax_of_the_spatial_mean() -> None:
    class_map = np.random.default_rng(0).standard_normal((2, 5, 3, 4)).astype(np.float32)
    logits = class_map.mean(axis=(2, 3))
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(class_scores(class_map), want, rtol=1e-5)
