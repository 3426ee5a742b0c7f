"""The HTTP API through the real app and a real exported model: answers, parameters, documents."""

from __future__ import annotations

import io

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import make_image, png_from_data_uri, reference, serving
from spa_service.http.app import create_app
from spa_service.pipeline.heatmap_png import heatmap_to_uint8
from spa_service.pipeline.localize import LocalizeOptions, Localizer

pytestmark = pytest.mark.anyio

TIMING_KEYS = {"decode", "queue", "preprocess", "backbone", "scg", "boxes", "encode", "total"}


def assert_matches(body: dict, localizer: Localizer, data: bytes, options: LocalizeOptions) -> None:
    """Classes, scores, boxes and heatmap PNGs equal the Localizer's own answer for the bytes."""
    expected = reference(localizer, data, options)
    assert (body["width"], body["height"]) == (expected.width, expected.height)
    assert [p["class_id"] for p in body["predictions"]] == [p.class_id for p in expected.predictions]
    for got, want in zip(body["predictions"], expected.predictions, strict=True):
        assert got["label"] == want.label
        assert got["score"] == pytest.approx(want.score, abs=1e-6)
        assert [tuple(box) for box in got["boxes"]] == want.boxes
        if got["heatmap"] is not None:
            heatmap = png_from_data_uri(got["heatmap"])
            assert heatmap.mode == "L"
            assert heatmap.size == (expected.width, expected.height) == tuple(got["heatmap_size"])
            np.testing.assert_array_equal(np.asarray(heatmap), heatmap_to_uint8(want.heatmap_at_image_size()))


async def test_multipart_png(client: httpx.AsyncClient, localizer: Localizer) -> None:
    data = make_image(1, (96, 72), "PNG")
    response = await client.post("/v1/localize", files={"image": ("a.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == localizer.card.name
    assert len(body["predictions"]) == 1
    assert TIMING_KEYS <= set(body["timings_ms"])
    assert body["timings_ms"]["total"] >= body["timings_ms"]["backbone"] > 0
    assert_matches(body, localizer, data, LocalizeOptions())


async def test_raw_body_jpeg_topk3(client: httpx.AsyncClient, localizer: Localizer) -> None:
    data = make_image(2, (120, 80), "JPEG")
    response = await client.post(
        "/v1/localize", params={"topk": 3}, content=data, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert_matches(body, localizer, data, LocalizeOptions(topk=3))


@pytest.mark.parametrize(
    ("params", "options"),
    [
        ({"method": "cam"}, LocalizeOptions(method="cam")),
        ({"box_mode": "all", "threshold": 0.3}, LocalizeOptions(box_mode="all", threshold=0.3)),
        ({"box_mode": "largest", "topk": 2}, LocalizeOptions(box_mode="largest", topk=2)),
        ({"class_id": [7, 2]}, LocalizeOptions(class_ids=(7, 2))),
    ],
    ids=["cam", "all-boxes", "largest", "class-ids"],
)
async def test_options_reach_the_localizer(
    client: httpx.AsyncClient, localizer: Localizer, params: dict, options: LocalizeOptions
) -> None:
    data = make_image(3, (80, 100), "PNG")
    response = await client.post("/v1/localize", params=params, files={"image": ("x.png", data)})
    assert response.status_code == 200, response.text
    assert_matches(response.json(), localizer, data, options)


async def test_class_ids_in_the_order_asked(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/localize?class_id=7&class_id=2", content=make_image(4), headers={"Content-Type": "image/png"}
    )
    assert [p["class_id"] for p in response.json()["predictions"]] == [7, 2]


async def test_heatmap_none(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/localize", params={"heatmap": "none", "topk": 2}, files={"image": make_image(5)})
    assert response.status_code == 200, response.text
    for prediction in response.json()["predictions"]:
        assert prediction["heatmap"] is None and prediction["heatmap_size"] is None
        assert prediction["boxes"]


async def test_large_image_gets_a_proportionally_smaller_heatmap(settings_for) -> None:
    async with serving(create_app(settings_for(heatmap_max_side=64))) as client:
        response = await client.post("/v1/localize", files={"image": make_image(6, (200, 100))})
    prediction = response.json()["predictions"][0]
    assert prediction["heatmap_size"] == [64, 32]
    assert png_from_data_uri(prediction["heatmap"]).size == (64, 32)
    assert (response.json()["width"], response.json()["height"]) == (200, 100)


async def test_batch_mixes_good_and_bad_images(client: httpx.AsyncClient, localizer: Localizer) -> None:
    good = [make_image(10, (90, 60), "PNG"), make_image(11, (64, 64), "JPEG"), make_image(12, (50, 70), "PNG")]
    whole = make_image(13, (200, 150), "JPEG")
    truncated = whole[: len(whole) // 2]
    files = [
        ("images", ("0.png", good[0], "image/png")),
        ("images", ("1.txt", b"not an image at all", "text/plain")),
        ("images", ("2.jpg", good[1], "image/jpeg")),
        ("images", ("3.jpg", truncated, "image/jpeg")),
        ("images", ("4.png", b"", "image/png")),
        ("images", ("5.png", good[2], "image/png")),
    ]
    response = await client.post("/v1/localize/batch", params={"topk": 2}, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r.get("error", {}).get("code") for r in results] == [
        None, "not_an_image", None, "truncated_image", "empty_image", None
    ]
    for data, body in zip(good, (results[0], results[2], results[5])):
        assert_matches(body, localizer, data, LocalizeOptions(topk=2))


async def test_models_is_the_card_and_the_providers(client: httpx.AsyncClient, localizer: Localizer) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    listing = response.json()
    assert listing["default"] == localizer.card.name and len(listing["models"]) == 1
    [body] = listing["models"]
    assert body == (await client.get(f"/v1/models/{localizer.card.name}")).json()
    assert body.pop("providers") == ["CPUExecutionProvider"] and body.pop("provider") == "CPUExecutionProvider"
    assert body.pop("cuda_fallback") is False
    assert body == localizer.card.model_dump(mode="json")
    assert body["onnx_sha256"] == localizer.card.onnx_sha256 and body["io"]["image"] == "image"


async def test_health_and_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = (await client.get("/openapi.json")).json()
    localize = spec["paths"]["/v1/localize"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(localize["requestBody"]["content"])
    assert {p["name"] for p in localize["parameters"]} >= {"topk", "method", "threshold", "box_mode", "heatmap",
                                                           "class_id"}
    assert spec["components"]["schemas"]["LocalizeResponse"]["examples"]
    assert spec["components"]["schemas"]["ErrorResponse"]["examples"]


async def test_exif_orientation_is_applied(client: httpx.AsyncClient) -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.open(io.BytesIO(make_image(7, (80, 40), "JPEG"))).save(buffer, "JPEG", exif=exif)
    response = await client.post("/v1/localize", content=buffer.getvalue(), headers={"Content-Type": "image/jpeg"})
    body = response.json()
    assert (body["width"], body["height"]) == (40, 80)
    assert body["predictions"][0]["heatmap_size"] == [40, 80]


async def test_heatmap_pngs_carry_the_maps_detail_not_the_images_size(settings_for) -> None:
    # 32 pixels per map cell by default: a large photo's PNG is the map at that size, stretched by clients.
    data = make_image(0, size=(900, 600))
    async with serving(create_app(settings_for())) as client:
        capped = (await client.post("/v1/localize", files={"image": ("i.png", data)})).json()
    async with serving(create_app(settings_for(heatmap_cell_px=0))) as client:
        full = (await client.post("/v1/localize", files={"image": ("i.png", data)})).json()
    map_side = max(reference(Localizer.from_settings(settings_for()), data).predictions[0].map.shape)
    [capped_prediction], [full_prediction] = capped["predictions"], full["predictions"]
    assert full_prediction["heatmap_size"] == [900, 600]
    width, height = capped_prediction["heatmap_size"]
    heatmap = np.asarray(png_from_data_uri(capped_prediction["heatmap"]))
    assert heatmap.shape == (height, width) and width < 900 and abs(width / height - 1.5) < 0.01
    stretched = cv2.resize(heatmap, (900, 600), interpolation=cv2.INTER_LINEAR).astype(int)
    exact = np.asarray(png_from_data_uri(full_prediction["heatmap"])).astype(int)
    assert np.abs(stretched - exact).max() <= 8 and np.abs(stretched - exact).mean() < 1.0
    assert capped_prediction["boxes"] == full_prediction["boxes"]
    assert width == 32 * map_side
