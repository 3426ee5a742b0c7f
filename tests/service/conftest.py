"""Fixtures for the HTTP service tests: the real app on a real exported model (`tiny_model_dir`
from tests/conftest.py), driven in-process through httpx's ASGI transport with the lifespan run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from service_helpers import serving
from spa_service.http.app import create_app
from spa_service.pipeline.localize import Localizer
from spa_service.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings_for(tiny_model_dir: Path) -> Callable[..., Settings]:
    """Settings on the tiny model; keywords override fields."""

    def build(**overrides: object) -> Settings:
        return Settings(model_dir=tiny_model_dir, **overrides)

    return build


@pytest.fixture
def app(settings_for: Callable[..., Settings]) -> FastAPI:
    return create_app(settings_for())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as client:
        yield client


@pytest.fixture
def localizer(app: FastAPI, client: httpx.AsyncClient) -> Localizer:
    """The Localizer the app loaded (call it only while no request is in flight)."""
    return app.state.models.default.localizer
