"""Plain helpers for the service tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import Localization, LocalizeOptions, Localizer
from spa_service.settings import Settings


def make_image(seed: int = 0, size: tuple[int, int] = (96, 72), fmt: str = "PNG") -> bytes:
    """A bright blob on a noisy background (seeded), so maps and boxes are not degenerate."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    blob = np.exp(-(((xx - cx) / (0.2 * width)) ** 2 + ((yy - cy) / (0.2 * height)) ** 2))
    pixels = rng.uniform(0, 80, (height, width, 3)) + blob[..., None] * rng.uniform(120, 175, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buffer, fmt)
    return buffer.getvalue()


def png_from_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))
    assert image.format == "PNG"
    return image


def reference(localizer: Localizer, data: bytes, options: LocalizeOptions = LocalizeOptions()) -> Localization:
    """What the Localizer itself says for these bytes, outside the HTTP layer."""
    decoded = decode_image(data, max_pixels=Settings().max_image_pixels)
    return localizer.localize([decoded], [options])[0]


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait, polling the event loop, until `condition()` holds; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.002)


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await client.get("/readyz")).status_code != 200:
        assert loop.time() < deadline, "the app never became ready"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def serving(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60.0) as client:
            if ready:
                await wait_ready(client)
            yield client
