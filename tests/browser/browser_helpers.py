"""Plain helpers for the browser tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from helpers.serve import Server, spa_serve  # noqa: F401 - re-exported for the browser tests

if TYPE_CHECKING:  # playwright may be missing: then the tests skip
    from playwright.sync_api import Page, Response

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "tests" / "data"
PHOTOS = [DATA_DIR / "chelsea.jpg", DATA_DIR / "coffee.jpg"]
CHROMIUM = Path("/usr/bin/chromium")
# Nothing outside this machine is reachable: keep Chromium from trying.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BODY_LIMIT = 150_000  # small, so that a file over the limit is small too; the test photos are under it
DESKTOP = {"width": 1280, "height": 900}


@contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """`python -m http.server` for `directory`, in a thread, on a free loopback port; yields its origin."""

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def open_demo(new_page: Callable[..., Page], server: Server, **options: object) -> Page:
    """The demo page, once it has loaded the model card and the sample list."""
    page = new_page(**options)
    response = page.goto(server.url + "/")
    assert response.ok, f"GET / answered {response.status}"
    page.wait_for_selector("body[data-state=idle]")
    return page


def localize_with(page: Page, action: Callable[[], None], **wanted: str) -> tuple[dict[str, str], dict]:
    """Do `action`; wait for the page's localize request with the `wanted` query parameters (a quick
    series of option changes may send others first), then for the page to show its answer.
    Returns that request's query parameters and JSON answer."""

    def awaited(response: Response) -> bool:
        url = urlsplit(response.url)
        query = dict(parse_qsl(url.query))
        # The page asks the chosen model by name: /v1/models/NAME/localize.
        return url.path.endswith("/localize") and all(query.get(k) == v for k, v in wanted.items())

    with page.expect_response(awaited) as answer:
        action()
    page.wait_for_selector("body[data-state=done]")
    return dict(parse_qsl(urlsplit(answer.value.url).query)), answer.value.json()


def drawn_boxes(page: Page, canvas: str = "#canvas") -> list[dict]:
    return json.loads(page.get_attribute(canvas, "data-boxes"))


def boxes_of(response: dict) -> list[dict]:
    """The boxes of an API response, in the page's `data-boxes` form."""
    return [
        {"class_id": p["class_id"], "label": p["label"], "score": p["score"], "box": box}
        for p in response["predictions"]
        for box in p["boxes"]
    ]


def api_answer(server: Server, photo: Path, query: dict[str, str]) -> dict:
    """What the API answers for this photo and these query parameters, asked directly."""
    response = httpx.post(
        f"{server.url}/v1/localize", params=query, files={"image": (photo.name, photo.read_bytes())}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_boxes(drawn: list[dict], expected: list[dict]) -> None:
    """Same classes, labels and boxes in the same order; scores equal up to float noise across batches."""
    assert [(b["class_id"], b["label"], b["box"]) for b in drawn] == [
        (b["class_id"], b["label"], b["box"]) for b in expected
    ]
    assert [b["score"] for b in drawn] == pytest.approx([b["score"] for b in expected], rel=1e-5)
