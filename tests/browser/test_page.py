"""The demo page at `/`: results drawn as the API returned them, options, samples, and every error shown.

SPA_UPDATE_SCREENSHOT=1 also writes the desktop screenshot of chelsea.jpg to docs/screenshot.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from browser_helpers import (
    BODY_LIMIT,
    PHOTOS,
    REPO,
    Server,
    api_answer,
    assert_same_boxes,
    boxes_of,
    drawn_boxes,
    localize_with,
    open_demo,
)
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser


def set_range(page: Page, selector: str, value: float) -> None:
    """What dragging a slider does: a new value, then an `input` event."""
    page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)


def canvas_pixel(page: Page, x: int, y: int) -> list[int]:
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d').getImageData(x, y, 1, 1).data)",
        [x, y],
    )


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_uploaded_photo_is_drawn_as_the_api_answers(
    photo: Path, new_page: Callable[..., Page], server: Server, tmp_path: Path
) -> None:
    page = open_demo(new_page, server)
    page.fill("#topk", "3")
    query, answer = localize_with(page, lambda: page.set_input_files("#file", photo))

    card = httpx.get(f"{server.url}/v1/models").json()["models"][0]
    threshold = str(card["box_threshold"]["scg"])
    assert query == {"topk": "3", "method": "scg", "threshold": threshold, "box_mode": "union"}
    assert len(answer["predictions"]) == 3
    assert drawn_boxes(page) == boxes_of(answer)
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(server, photo, query)))

    # The canvas is the image's size, and the list shows each class with its boxes.
    assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [answer["width"], answer["height"]]
    items = page.locator("#predictions button")
    assert items.count() == 3
    for item, prediction in zip(items.all(), answer["predictions"], strict=True):
        assert item.get_attribute("data-class-id") == str(prediction["class_id"])
        text = item.inner_text()
        assert prediction["label"] in text
        assert all(str(box).replace(" ", "") in text.replace(" ", "") for box in prediction["boxes"])
    assert page.locator("#timings dt", has_text="backbone").count() == 1
    assert photo.name in page.inner_text("#status")  # the live region announces the result

    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    screenshot = tmp_path / f"{photo.stem}.png"
    page.screenshot(path=screenshot, full_page=True)
    if photo.name == "chelsea.jpg" and os.environ.get("SPA_UPDATE_SCREENSHOT"):
        shutil.copy(screenshot, REPO / "docs" / "screenshot.png")


def test_options_rerun_and_redraw(new_page: Callable[..., Page], server: Server) -> None:
    photo = PHOTOS[0]
    page = open_demo(new_page, server)
    page.fill("#topk", "2")
    localize_with(page, lambda: page.set_input_files("#file", photo))

    # CAM brings its own default threshold from the model card; boxes per region.
    card = httpx.get(f"{server.url}/v1/models").json()["models"][0]

    def change_options() -> None:
        page.select_option("#method", "cam")
        page.select_option("#box-mode", "all")

    query, answer = localize_with(page, change_options, method="cam", box_mode="all")
    assert query["threshold"] == str(card["box_threshold"]["cam"])
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(server, photo, query)))

    # Opacity and the class whose heatmap is shown only redraw: no new request.
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    set_range(page, "#opacity", 0)
    plain = canvas_pixel(page, answer["width"] // 2, answer["height"] // 2)
    set_range(page, "#opacity", 1)
    page.wait_for_function(
        "([x, y, plain]) => document.getElementById('canvas').getContext('2d').getImageData(x, y, 1, 1)"
        ".data.some((v, i) => v !== plain[i])",
        arg=[answer["width"] // 2, answer["height"] // 2, plain],
    )
    second = page.locator("#predictions button").nth(1)
    second.click()
    assert second.get_attribute("aria-pressed") == "true"
    assert answer["predictions"][1]["label"] in page.get_attribute("#canvas", "aria-label")
    assert not [url for url in requests if "/v1/" in url]


def test_exif_rotated_photo_is_drawn_upright(new_page: Callable[..., Page], server: Server, tmp_path: Path) -> None:
    """Stored 200 x 100, red left and blue right, with EXIF orientation 6 (turn 90 degrees clockwise to
    show): the API answers for 100 x 200, red on top; the page must draw it so, not stretched."""
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :100, 0] = 255
    pixels[:, 100:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    photo = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(photo, exif=exif, quality=95)

    page = open_demo(new_page, server)
    _, answer = localize_with(page, lambda: page.set_input_files("#file", photo))
    assert (answer["width"], answer["height"]) == (100, 200)
    set_range(page, "#opacity", 0)
    mean_rgb = """([top]) => {
        const data = document.getElementById('canvas').getContext('2d').getImageData(20, top, 60, 60).data;
        const sum = [0, 0, 0];
        for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sum[c] += data[i + c];
        return sum.map((v) => v / (data.length / 4));
    }"""
    top, bottom = page.evaluate(mean_rgb, [20]), page.evaluate(mean_rgb, [120])
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0], (top, bottom)


def test_image_the_browser_cannot_show(new_page: Callable[..., Page], server: Server, tmp_path: Path) -> None:
    """The service reads TIFF, Chromium does not: the heatmap and boxes are drawn on grey, and the page says so."""
    photo = tmp_path / "small.tiff"
    Image.open(PHOTOS[0]).reduce(4).save(photo)
    page = open_demo(new_page, server)
    query, _ = localize_with(page, lambda: page.set_input_files("#file", photo))
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(server, photo, query)))
    assert "drawn on grey" in page.inner_text("#status")


def test_dropped_image_is_localized(new_page: Callable[..., Page], server: Server) -> None:
    page = open_demo(new_page, server)
    photo = PHOTOS[1]
    drop = """([name, bytes]) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], name, { type: "image/jpeg" }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
    }"""
    query, _ = localize_with(page, lambda: page.evaluate(drop, [photo.name, list(photo.read_bytes())]))
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(server, photo, query)))


def test_sample_is_one_click_away(new_page: Callable[..., Page], server: Server) -> None:
    page = open_demo(new_page, server)
    samples = page.locator("#samples button")
    assert page.is_visible("#samples") and samples.count() == len(PHOTOS)
    query, _ = localize_with(page, lambda: samples.nth(1).click())
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(server, PHOTOS[1], query)))
    assert PHOTOS[1].name in page.inner_text("#status")


def test_sample_strip_hidden_without_the_samples_route(new_page: Callable[..., Page], server: Server) -> None:
    page = new_page()
    page.route("**/v1/models/*/samples", lambda route: route.fulfill(status=404, json={"error": {"code": "not_found"}}))
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=idle]")
    assert page.is_hidden("#samples") and page.is_hidden("#error")


def error_after(page: Page, action: Callable[[], None]) -> str:
    action()
    page.wait_for_selector("body[data-state=error]")
    assert page.is_hidden("#output")
    return page.inner_text("#error")


def test_text_file_shows_the_api_error(new_page: Callable[..., Page], server: Server) -> None:
    page = open_demo(new_page, server)
    text = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image at all\n"}
    message = error_after(page, lambda: page.set_input_files("#file", files=[text]))
    assert "cannot read this file as an image" in message and "not_an_image" in message

    # The page recovers: the next image works.
    localize_with(page, lambda: page.set_input_files("#file", PHOTOS[0]))
    assert page.is_hidden("#error")


def test_oversized_file_shows_the_limit(new_page: Callable[..., Page], server: Server, tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > BODY_LIMIT
    page = open_demo(new_page, server)
    message = error_after(page, lambda: page.set_input_files("#file", big))
    assert "too large" in message and f"{BODY_LIMIT:,} bytes" in message and "body_too_large" in message


def test_network_failure_is_shown(new_page: Callable[..., Page], server: Server) -> None:
    page = open_demo(new_page, server)
    page.route("**/localize?*", lambda route: route.abort("connectionrefused"))
    message = error_after(page, lambda: page.set_input_files("#file", PHOTOS[0]))
    assert "Could not reach the service" in message


def test_unavailable_service_at_load_is_shown(new_page: Callable[..., Page], server: Server) -> None:
    page = new_page()
    page.route("**/v1/models", lambda route: route.fulfill(status=503, body="<html>Service Unavailable</html>"))
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=error]")
    assert "busy or still starting" in page.inner_text("#error")
    assert page.inner_text("#model") == "Model card unavailable"
