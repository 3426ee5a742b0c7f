"""The bundled real-photo model (models/imagenet-lite0): its card, its samples' licences, and real photos through
the real HTTP app (no torch: this is the runtime side)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from spa_service.card import PRESETS, load_card
from spa_service.http.app import create_app
from spa_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "imagenet-lite0"
DATA = ROOT / "tests" / "data"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet classes 281-285


def test_card_and_onnx_check_out():
    card, onnx_path = load_card(MODEL)  # checks the ONNX file's sha256 against the card
    assert onnx_path.stat().st_size <= 20_000_000
    assert card.arch == "efficientnet_lite0" and card.num_classes == 1000
    assert card.labels[281:286] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert card.labels[967:969] == ["espresso", "cup"]
    assert card.mean == card.std == (0.5, 0.5, 0.5)
    assert card.map_size == (7, 7)
    assert card.default_method == "scg"  # chosen by cross-validation on real photos (docs/real-photo-model.md)
    assert card.preset not in PRESETS  # its own, tuned settings: docs/real-photo-model.md
    assert max(card.parity.values()) < 1e-4


def test_samples_are_licensed_and_have_boxes():
    samples = MODEL / "samples"
    images = sorted(p.name for p in samples.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    licences = (samples / "LICENSES.md").read_text(encoding="utf-8")
    listed = re.findall(r"^- `([^`]+)`.*(?:CC0|public domain)", licences, flags=re.MULTILINE)
    assert images and sorted(listed) == images
    photos = json.loads((DATA / "photo-boxes.json").read_text(encoding="utf-8"))["photos"]
    assert {p["sample"] for p in photos if p.get("sample")} == set(images)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(model_dir=MODEL))) as client:
        yield client


def _localize(client: TestClient, name: str, **params) -> dict:
    data = (DATA / name).read_bytes()
    response = client.post("/v1/localize", params={"heatmap": "none", **params},
                           files={"image": (name, data, "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("method", ["scg", "cam"])
def test_chelsea_is_a_cat(client, method):
    body = _localize(client, "chelsea.jpg", method=method)
    [top] = body["predictions"]
    assert top["label"] in CATS
    assert (body["width"], body["height"]) == (451, 300)
    [[x0, y0, x1, y1]] = top["boxes"]
    assert 0 <= x0 <= x1 < 451 and 0 <= y0 <= y1 < 300


def test_coffee_is_espresso_or_a_cup(client):
    body = _localize(client, "coffee.jpg", topk=2)
    assert body["predictions"][0]["label"] in {"espresso", "cup"}
    assert body["model"] == "imagenet-lite0"



def _iou(a: list[int], b: list[int]) -> float:
    """IoU of two inclusive [x0, y0, x1, y1] pixel boxes (written here, independent of the service's)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(w, 0) * max(h, 0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


# IoU of the served top-1 box (the card's default_method and threshold) with the hand-drawn box of each sample
# photo, as measured on the bundled model (SCG at 0.3: chelsea 0.80, coffee 0.43, rocket 0.05, mean 0.43; the
# PNG originals in docs/real-photo-model.md), minus a margin of 0.10: room for other onnxruntime builds and CPUs,
# none for a model whose boxes moved. rocket.jpg is misclassified (drilling platform): no floor of its own.
IOU_FLOORS = {"chelsea.jpg": 0.70, "coffee.jpg": 0.33}
MEAN_IOU_FLOOR = 0.33


def test_served_boxes_overlap_the_hand_drawn_boxes(client):
    photos = json.loads((DATA / "photo-boxes.json").read_text(encoding="utf-8"))["photos"]
    ious = {}
    for photo in (p for p in photos if p.get("sample")):
        data = (MODEL / "samples" / photo["sample"]).read_bytes()
        response = client.post("/v1/localize", params={"heatmap": "none"}, files={"image": (photo["sample"], data)})
        assert response.status_code == 200, response.text
        [box] = response.json()["predictions"][0]["boxes"]
        ious[photo["sample"]] = _iou(box, photo["box"])
    for name, floor in IOU_FLOORS.items():
        assert ious[name] >= floor, (name, ious[name])
    assert sum(ious.values()) / len(ious) >= MEAN_IOU_FLOOR, ious
