"""Every bad request is a 4xx JSON error naming the problem, and the next request works."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from service_helpers import make_image, serving
from spa_service.errors import ModelLoadError
from spa_service.http.app import create_app
from spa_service.settings import Settings

pytestmark = pytest.mark.anyio

GOOD = make_image(20, (64, 48), "PNG")
JPEG = make_image(21, (160, 120), "JPEG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by a few bytes of garbage data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x00" * 16)


def raw(data: bytes, content_type: str = "image/png") -> dict:
    return {"content": data, "headers": {"Content-Type": content_type}}


BAD_REQUESTS = {
    "no-image-part": ("/v1/localize", {"files": {"picture": ("a.png", GOOD)}}, 422, "missing_image"),
    "image-not-a-file": ("/v1/localize", {"data": {"image": "x"}, "files": {"other": ("o", b"1")}}, 422,
                         "missing_image"),
    "no-body": ("/v1/localize", {}, 422, "missing_image"),
    "two-images": ("/v1/localize", {"files": [("image", ("a", GOOD)), ("image", ("b", GOOD))]}, 413,
                   "too_many_images"),
    "wrong-content-type": ("/v1/localize", raw(GOOD, "application/json"), 415, "unsupported_media_type"),
    "empty-file": ("/v1/localize", {"files": {"image": ("a.png", b"")}}, 422, "empty_image"),
    "empty-raw-body": ("/v1/localize", raw(b""), 422, "empty_image"),
    "not-an-image": ("/v1/localize", {"files": {"image": ("a.txt", b"hello, world")}}, 415, "not_an_image"),
    "truncated-jpeg": ("/v1/localize", raw(JPEG[: len(JPEG) // 2], "image/jpeg"), 422, "truncated_image"),
    "pdf": ("/v1/localize", raw(b"%PDF-1.7\n" + bytes(200), "application/octet-stream"), 415,
            "unsupported_format"),
    "header-claims-400-megapixels": ("/v1/localize", raw(png_header_only(20_000, 20_000)), 413,
                                     "image_too_large"),
    "topk-zero": ("/v1/localize?topk=0", raw(GOOD), 422, "invalid_parameter"),
    "topk-over-classes": ("/v1/localize?topk=11", raw(GOOD), 422, "invalid_parameter"),
    "topk-not-a-number": ("/v1/localize?topk=three", raw(GOOD), 422, "invalid_parameter"),
    "method": ("/v1/localize?method=gradcam", raw(GOOD), 422, "invalid_parameter"),
    "threshold": ("/v1/localize?threshold=1.5", raw(GOOD), 422, "invalid_parameter"),
    "box-mode": ("/v1/localize?box_mode=biggest", raw(GOOD), 422, "invalid_parameter"),
    "heatmap-format": ("/v1/localize?heatmap=jpeg", raw(GOOD), 422, "invalid_parameter"),
    "class-id-range": ("/v1/localize?class_id=10", raw(GOOD), 422, "invalid_parameter"),
    "class-id-negative": ("/v1/localize?class_id=-1", raw(GOOD), 422, "invalid_parameter"),
    "misspelt-parameter": ("/v1/localize?top_k=3", raw(GOOD), 422, "invalid_parameter"),
    "batch-raw-body": ("/v1/localize/batch", raw(GOOD), 415, "unsupported_media_type"),
    "batch-no-images": ("/v1/localize/batch", {"files": {"image": ("a.png", GOOD)}}, 422, "missing_image"),
    "batch-over-limit": ("/v1/localize/batch", {"files": [("images", (f"{i}.png", GOOD)) for i in range(5)]}, 413,
                         "too_many_images"),
    "batch-bad-parameter": ("/v1/localize/batch?topk=0", {"files": [("images", ("a.png", GOOD))]}, 422,
                            "invalid_parameter"),
    "unknown-route": ("/v1/localise", raw(GOOD), 404, "not_found"),
    "malformed-multipart": ("/v1/localize", raw(b"--x\r\nnonsense", "multipart/form-data"), 400, "bad_request"),
}


@pytest.fixture
async def small_client(settings_for) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(settings_for(max_batch_images=4, max_body_bytes=100_000))) as client:
        yield client


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_request_is_a_named_4xx_and_the_next_one_works(small_client: httpx.AsyncClient, case) -> None:
    path, request, status, code = case
    response = await small_client.post(path, **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    after = await small_client.post("/v1/localize", files={"image": ("ok.png", GOOD)})
    assert after.status_code == 200, after.text


async def test_validation_message_names_the_parameter(small_client: httpx.AsyncClient) -> None:
    response = await small_client.post("/v1/localize?topk=0&box_mode=x", **raw(GOOD))
    message = response.json()["error"]["message"]
    assert "topk" in message and "box_mode" in message


async def test_method_not_allowed(small_client: httpx.AsyncClient) -> None:
    response = await small_client.get("/v1/localize")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]


async def test_pixel_limit_from_settings(settings_for) -> None:
    async with serving(create_app(settings_for(max_image_pixels=10_000))) as client:
        response = await client.post("/v1/localize", **raw(make_image(22, (200, 100))))
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "image_too_large"
        assert "200 x 100" in response.json()["error"]["message"]
        assert (await client.post("/v1/localize", **raw(make_image(23, (100, 100))))).status_code == 200


async def test_declared_content_length_over_limit_is_refused_unread(small_client: httpx.AsyncClient) -> None:
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(10):
            pulled += 1
            yield b"\0" * 50_000

    response = await small_client.post(
        "/v1/localize", content=body(), headers={"Content-Type": "image/png", "Content-Length": "500000"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert pulled == 0


async def test_streamed_body_is_cut_off_at_the_limit(small_client: httpx.AsyncClient) -> None:
    """No Content-Length (chunked): the app answers 413 once the limit is passed, not at the end."""
    pulled = 0

    async def endless(head: bytes) -> AsyncIterator[bytes]:
        nonlocal pulled
        yield head
        while pulled < 1000:
            pulled += 1
            yield b"\0" * 10_000

    part_head = b'--abc\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    for content_type, head in (("image/jpeg", b""), ("multipart/form-data; boundary=abc", part_head)):
        pulled = 0
        response = await small_client.post(
            "/v1/localize", content=endless(head), headers={"Content-Type": content_type}
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "body_too_large"
        assert pulled <= 12  # 100 kB limit / 10 kB chunks, plus what the transport reads ahead
    assert (await small_client.post("/v1/localize", **raw(GOOD))).status_code == 200


async def test_stalled_body_gets_408_and_the_app_lives_on(settings_for) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield GOOD[:100]
        await asyncio.sleep(5)
        yield GOOD[100:]

    async with serving(create_app(settings_for(body_timeout_s=0.2))) as client:
        started = time.monotonic()
        response = await client.post("/v1/localize", content=stalls(), headers={"Content-Type": "image/png"})
        assert response.status_code == 408
        assert response.json()["error"]["code"] == "body_timeout"
        assert time.monotonic() - started < 3
        assert (await client.post("/v1/localize", **raw(GOOD))).status_code == 200


async def test_unexpected_exception_is_a_logged_500(settings_for, caplog: pytest.LogCaptureFixture) -> None:
    """The last-resort handler (never reached by the cases above): JSON, logged, and the app lives on."""
    app = create_app(settings_for())
    async with serving(app) as client:

        def broken(*args: object) -> None:
            raise RuntimeError("boom")

        app.state.models.default.localizer.validate = broken
        response = await client.post("/v1/localize", **raw(GOOD))
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
        assert "boom" in caplog.text
        assert (await client.get("/healthz")).status_code == 200


async def test_app_refuses_to_start_without_a_model(tmp_path) -> None:
    app = create_app(Settings(model_dir=tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        async with app.router.lifespan_context(app):
            pass
