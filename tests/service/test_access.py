"""Who may call: the optional API key and CORS for browser frontends on other origins."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from service_helpers import make_image, serving
from spa_service.http.app import create_app

pytestmark = pytest.mark.anyio

ALLOWED = "https://frontend.example"


@pytest.fixture
async def client(settings_for) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(api_key="s3cret", cors_origins=[ALLOWED], max_body_bytes=50_000)
    async with serving(create_app(settings)) as client:
        yield client


async def test_api_key_is_required_on_v1_only(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"] == {"code": "unauthorized", "message": "missing X-API-Key header"}
    wrong = await client.post("/v1/localize", files={"image": make_image()}, headers={"X-API-Key": "guess"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    good = await client.post("/v1/localize", files={"image": make_image()}, headers={"X-API-Key": "s3cret"})
    assert good.status_code == 200, good.text
    for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await client.get(open_path)).status_code == 200, open_path
    assert 'route="/v1/models",status="401"' in (await client.get("/metrics")).text


async def test_the_protected_paths_are_a_setting(settings_for) -> None:
    paths = ["/v1/", "/metrics", "/docs", "/openapi.json", "/samples/", "/"]
    async with serving(create_app(settings_for(api_key="s3cret", api_key_paths=paths))) as client:
        name = (await client.get("/v1/models", headers={"X-API-Key": "s3cret"})).json()["default"]
        for closed in ("/metrics", "/docs", "/openapi.json", "/", f"/samples/{name}/x.jpg", "/v1/samples"):
            assert (await client.get(closed)).status_code == 401, closed
        assert (await client.get("/metrics", headers={"X-API-Key": "s3cret"})).status_code == 200
        for probe in ("/healthz", "/readyz", "/static/app.js"):  # "/" names the page alone, not all below it
            assert (await client.get(probe)).status_code == 200, probe


async def test_api_key_is_checked_before_the_body(client: httpx.AsyncClient) -> None:
    """Without the key, even a body over the limit is answered 401: nothing was read."""
    response = await client.post("/v1/localize", content=b"\0" * 60_000, headers={"Content-Type": "image/png"})
    assert response.status_code == 401


async def test_api_key_in_openapi(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s["type"] == "apiKey" and s["name"] == "X-API-Key" for s in schemes.values())


async def test_cors_headers_for_allowed_origin_only(client: httpx.AsyncClient) -> None:
    key = {"X-API-Key": "s3cret"}
    allowed = await client.get("/v1/models", headers={"Origin": ALLOWED, **key})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    other = await client.get("/v1/models", headers={"Origin": "https://evil.example", **key})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


async def test_cors_preflight(client: httpx.AsyncClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key,content-type"}
    allowed = await client.options("/v1/localize", headers={"Origin": ALLOWED, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    refused = await client.options("/v1/localize", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers


async def test_errors_carry_cors_headers_so_pages_can_show_them(client: httpx.AsyncClient) -> None:
    unauthorized = await client.get("/v1/models", headers={"Origin": ALLOWED})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == ALLOWED
    too_large = await client.post(
        "/v1/localize",
        content=b"\0" * 60_000,
        headers={"Origin": ALLOWED, "X-API-Key": "s3cret", "Content-Type": "image/png"},
    )
    assert too_large.status_code == 413
    assert too_large.headers["access-control-allow-origin"] == ALLOWED


async def test_no_cors_headers_when_no_origins_configured(settings_for) -> None:
    async with serving(create_app(settings_for())) as client:
        response = await client.get("/v1/models", headers={"Origin": ALLOWED})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
