"""examples/embed/ served from a second origin: works where SPA_CORS_ORIGINS allows it, refused where not."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_helpers import (
    PHOTOS,
    REPO,
    Server,
    api_answer,
    assert_same_boxes,
    boxes_of,
    drawn_boxes,
    localize_with,
    spa_serve,
    static_site,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def embed_origin() -> Iterator[str]:
    with static_site(REPO / "examples" / "embed") as origin:
        yield origin


@pytest.fixture(scope="module")
def cors_server(model_dir: Path, embed_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("spa-serve-cors") / "server.log"
    with spa_serve(model_dir, log_path, SPA_CORS_ORIGINS=json.dumps([embed_origin])) as server:
        yield server


def open_embed(new_page: Callable[..., Page], embed_origin: str, service: Server) -> tuple[Page, list[str]]:
    """The example page calling `service`, and the browser console's messages."""
    page = new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{embed_origin}/?api={service.url}/")
    page.set_input_files("#file", PHOTOS[0])
    return page, console


def test_embed_works_with_cors(
    new_page: Callable[..., Page], embed_origin: str, cors_server: Server, tmp_path: Path
) -> None:
    page, _ = open_embed(new_page, embed_origin, cors_server)
    query, answer = localize_with(page, lambda: page.click("button[type=submit]"))
    assert drawn_boxes(page) == boxes_of(answer)
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(cors_server, PHOTOS[0], query)))
    assert answer["predictions"][0]["label"] in page.inner_text("#message")
    page.screenshot(path=tmp_path / "embed.png", full_page=True)


def test_embed_is_refused_without_cors(new_page: Callable[..., Page], embed_origin: str, server: Server) -> None:
    page, console = open_embed(new_page, embed_origin, server)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-state=error]")
    message = page.inner_text("#message")
    assert "could not use the service" in message and f"SPA_CORS_ORIGINS include {embed_origin}" in message
    assert any("blocked by CORS policy" in text for text in console), console
