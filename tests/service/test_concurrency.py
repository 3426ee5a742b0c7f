"""Many requests at once through the real app: batching, overload, readiness and draining."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import (
    make_image,
    png_from_data_uri,
    reference,
    serving,
    until,
    wait_ready,
)
from spa_service.http.app import create_app
from spa_service.pipeline.heatmap_png import heatmap_to_uint8
from spa_service.pipeline.imaging import DecodedImage, decode_for_model
from spa_service.pipeline.localize import BackboneRun, LocalizeOptions, Localizer

pytestmark = pytest.mark.anyio


class SlowLocalizer:
    """The real Localizer, slowed down by `delay_s` per backbone call, its warm-up held by `gate`."""

    def __init__(
        self,
        inner: Localizer,
        delay_s: float = 0.0,
        gate: threading.Event | None = None,
        batch_gate: threading.Event | None = None,
    ) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.gate = gate
        self.batch_gate = batch_gate  # holds every batch until set

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def run_backbone(self, images: Sequence[DecodedImage]) -> BackboneRun:
        if self.batch_gate is not None:
            assert self.batch_gate.wait(30)
        time.sleep(self.delay_s)
        return self.inner.run_backbone(images)

    def warmup(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(30)
        self.inner.warmup()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_parallel_requests_are_batched_and_match_single_requests(settings_for) -> None:
    settings = settings_for(max_batch_size=8, max_queue_delay_ms=20)
    localizer = Localizer.from_settings(settings)
    images = [make_image(100 + i, (64 + 4 * i, 48 + 2 * i), "JPEG" if i % 2 else "PNG") for i in range(32)]
    options = LocalizeOptions(topk=2)
    expected = [reference(localizer, data, options) for data in images]

    # The first batch is held until 8 more images wait, so batching does not depend on timing.
    held = threading.Event()
    app = create_app(settings, SlowLocalizer(localizer, batch_gate=held))
    async with serving(app) as client:
        before = samples((await client.get("/metrics")).text)
        requests = asyncio.gather(
            *(client.post("/v1/localize", params={"topk": 2}, files={"image": ("i", data)}) for data in images)
        )
        await until(lambda: app.state.models.default.batcher.queue_depth >= 8)
        held.set()
        responses = await requests
        after = samples((await client.get("/metrics")).text)

    for response, want in zip(responses, expected, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == (want.width, want.height)
        assert [p["class_id"] for p in body["predictions"]] == [p.class_id for p in want.predictions]
        for got, ref in zip(body["predictions"], want.predictions):
            # Batched and single backbone calls may round differently in the last bits.
            assert got["score"] == pytest.approx(ref.score, abs=1e-4)
            heatmap = np.asarray(png_from_data_uri(got["heatmap"]), dtype=np.int16)
            assert np.abs(heatmap - heatmap_to_uint8(ref.heatmap_at_image_size())).max() <= 1
            for box, ref_box in zip(got["boxes"], ref.boxes, strict=True):
                assert np.abs(np.subtract(box, ref_box)).max() <= 1

    route = (("route", "/v1/localize"), ("status", "200"))
    assert after[("spa_requests_total", route)] - before.get(("spa_requests_total", route), 0) == 32
    model = (("model", localizer.card.name),)
    assert after[("spa_images_processed_total", model)] - before.get(("spa_images_processed_total", model), 0) == 32
    batches = after[("spa_batch_size_count", model)] - before.get(("spa_batch_size_count", model), 0)
    single = (("le", "1.0"), *model)
    singles = after[("spa_batch_size_bucket", single)] - before.get(("spa_batch_size_bucket", single), 0)
    assert batches < 32 and singles < batches, "no batch of more than one image"
    assert ("spa_stage_duration_seconds_count", (*model, ("stage", "backbone"))) in after
    assert after[("spa_queue_depth", model)] == 0


async def test_full_queue_answers_503_with_retry_after(settings_for) -> None:
    settings = settings_for(max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0, retry_after_s=3)
    slow = SlowLocalizer(Localizer.from_settings(settings), delay_s=0.3)
    async with serving(create_app(settings, slow)) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/localize", files={"image": ("i", make_image(i))}) for i in range(8))
        )
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and 503 in statuses and set(statuses) == {200, 503}
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "3"
                assert response.json()["error"]["code"] == "overloaded"
        slow.delay_s = 0.0
        assert (await client.post("/v1/localize", files={"image": ("i", make_image(9))})).status_code == 200
        metrics = samples((await client.get("/metrics")).text)
        assert metrics[("spa_requests_total", (("route", "/v1/localize"), ("status", "503")))] >= 1


async def test_ready_only_after_warm_up(settings_for) -> None:
    settings = settings_for()
    gate = threading.Event()
    gated = SlowLocalizer(Localizer.from_settings(settings), gate=gate)
    async with serving(create_app(settings, gated), ready=False) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"] == {"code": "not_ready", "message": "warming up"}
        assert (await client.get("/healthz")).status_code == 200
        ready = f'spa_ready{{model="{gated.card.name}"}}'
        assert f"{ready} 0.0" in (await client.get("/metrics")).text
        gate.set()
        deadline = time.monotonic() + 10
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert f"{ready} 1.0" in (await client.get("/metrics")).text


async def test_shutdown_turns_readiness_off_first_and_drains(settings_for) -> None:
    settings = settings_for(max_batch_size=1, max_queue_delay_ms=0)
    slow = SlowLocalizer(Localizer.from_settings(settings), delay_s=0.2)
    app = create_app(settings, slow)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
        async with app.router.lifespan_context(app):
            await wait_ready(client)
            service = app.state.models.default
            in_flight = [
                asyncio.create_task(client.post("/v1/localize", files={"image": ("i", make_image(i))}))
                for i in range(3)
            ]
            await until(lambda: service.batcher.queue_depth >= 2)  # one running, two waiting
            app.state.models.begin_shutdown()  # what SIGTERM does first
            assert (await client.get("/readyz")).json()["error"]["message"] == "shutting down"
        # The lifespan has ended: everything that was queued went through the model and is answered.
        responses = await asyncio.wait_for(asyncio.gather(*in_flight), timeout=10)
        assert [response.status_code for response in responses] == [200, 200, 200]
        late = await client.post("/v1/localize", files={"image": ("i", make_image(5))})
        assert late.status_code == 503
        assert late.json()["error"]["code"] == "shutting_down"


async def test_with_jpeg_draft_a_big_photo_is_answered_in_its_own_coordinates(settings_for) -> None:
    settings = settings_for(jpeg_draft=True, heatmap_cell_px=0)  # the heatmap at the photo's own size
    localizer = Localizer.from_settings(settings)
    side = 4 * max(localizer.card.input_size)  # decoded at half scale or less
    pixels = np.random.default_rng(5).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((side * 4 // 3, side), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    drafted = decode_for_model(data, max_pixels=settings.max_image_pixels, input_size=localizer.card.input_size,
                               draft=True)
    expected = localizer.localize([drafted], [LocalizeOptions()])[0]
    async with serving(create_app(settings, localizer)) as client:
        response = await client.post("/v1/localize", files={"image": ("big.jpg", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (side * 4 // 3, side)
    assert [p["class_id"] for p in body["predictions"]] == [p.class_id for p in expected.predictions]
    assert [[tuple(b) for b in p["boxes"]] for p in body["predictions"]] == [p.boxes for p in expected.predictions]
    heatmap = np.asarray(png_from_data_uri(body["predictions"][0]["heatmap"]))
    assert heatmap.shape == (side, side * 4 // 3)
    np.testing.assert_array_equal(heatmap, heatmap_to_uint8(expected.predictions[0].heatmap_at_image_size()))
    exact = reference(localizer, data).predictions[0].heatmap_at_image_size()
    assert (heatmap_to_uint8(exact) != heatmap).any()  # the exact path's answer is not the one served
