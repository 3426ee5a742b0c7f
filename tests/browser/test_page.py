"""The demo page at `/`: results drawn as the API returned them, options, CAM beside SCG, samples, and
every error shown.

SPA_UPDATE_SCREENSHOT=1 also writes the README's screenshot, docs/screenshot.png: the bundled real-photo
model on its sample SCREENSHOT_SAMPLE, CAM beside SCG.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import cv2
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
    spa_serve,
)
from PIL import Image
from spa_service.settings import BUNDLED_PHOTO_MODEL_DIR

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
SCREENSHOT_SAMPLE = "coffee.jpg"


def set_range(page: Page, selector: str, value: float) -> None:
    """What dragging a slider does: a new value, then an `input` event."""
    page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)


def png_data_uri(uri: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGB") if image.mode != "L" else image)


def canvas_rgb(page: Page, selector: str) -> np.ndarray:
    """(H, W, 3) uint8: what the canvas shows, read back losslessly."""
    return png_data_uri(page.eval_on_selector(selector, "c => c.toDataURL('image/png')"))


def jet(levels: np.ndarray) -> np.ndarray:
    """The page's colour map (overlay.js), written out again: (H, W) uint8 levels -> (H, W, 3) uint8."""
    x = levels.astype(np.float64)[..., None] / 255.0
    tents = 255.0 * (1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0])))
    return np.rint(np.clip(tents, 0, 255)).astype(np.uint8)  # Uint8ClampedArray rounds half to even, as rint


def record_localize_requests(page: Page) -> list[dict[str, str]]:
    """The query parameters of every image the page sends to a localize route from now on, in order."""
    sent: list[dict[str, str]] = []

    def record(request) -> None:  # noqa: ANN001 - playwright's Request
        url = urlsplit(request.url)
        if request.method == "POST" and url.path.endswith("/localize"):
            sent.append(dict(parse_qsl(url.query)))

    page.on("request", record)
    return sent


def wait_for_status(page: Page, start: str) -> None:
    """Until the live region's message starts with `start` (it is written once the canvases are drawn)."""
    page.wait_for_function("(t) => document.getElementById('status').textContent.startsWith(t)", arg=start)


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
    method = card["default_method"]  # the page starts with the model's default method and its threshold
    threshold = str(card["box_threshold"][method])
    assert query == {"topk": "3", "method": method, "threshold": threshold, "box_mode": "union"}
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
    assert page.locator("#timings th[scope=row]", has_text="backbone").count() == 1
    assert photo.name in page.inner_text("#status")  # the live region announces the result

    page.screenshot(path=tmp_path / f"{photo.stem}.png", full_page=True)


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


def test_cam_and_scg_side_by_side_from_one_upload(new_page: Callable[..., Page], server: Server) -> None:
    """Both methods' answers for one upload, each drawn from its own answer; flipping the method or the
    comparison afterwards sends nothing: one request per method in all."""
    photo = PHOTOS[0]
    card = httpx.get(f"{server.url}/v1/models").json()["models"][0]
    first = card["default_method"]
    second = {"scg": "cam", "cam": "scg"}[first]
    page = open_demo(new_page, server)
    sent = record_localize_requests(page)
    set_range(page, "#opacity", 1)  # the heatmap covers the photo: the canvas is its colours and the boxes
    _, answers = localize_with(page, lambda: page.set_input_files("#file", photo))
    assert page.is_hidden("#compare-figure")

    query, second_answer = localize_with(page, lambda: page.check("#compare"), method=second)
    answers = {first: answers, second: second_answer}
    assert query["threshold"] == str(card["box_threshold"][second])  # each method with its own default
    assert [q["method"] for q in sent] == [first, second]

    # Side by side, the chosen method first; each figure says its method and draws its own answer.
    canvases = {first: "#canvas", second: "#compare-canvas"}
    for method, selector in canvases.items():
        assert page.get_attribute(selector, "data-method") == method
        assert method.upper() in page.get_attribute(selector, "aria-label")
        assert drawn_boxes(page, selector) == boxes_of(answers[method])
    assert page.inner_text("#main-caption").startswith(first.upper())
    assert page.inner_text("#compare-caption").startswith(second.upper())
    left, right = (page.locator(s).bounding_box() for s in canvases.values())
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 1

    # Two different results: the maps differ, and each canvas shows its own map, not the other's. The
    # coloured PNG is stretched over the canvas (it may be smaller than the photo): compare within a few levels.
    levels = {m: png_data_uri(a["predictions"][0]["heatmap"]) for m, a in answers.items()}
    assert (levels[first] != levels[second]).mean() > 0.5
    for method, selector in canvases.items():
        shown = canvas_rgb(page, selector).astype(int)
        size = (shown.shape[1], shown.shape[0])

        def near(map_levels: np.ndarray) -> float:
            stretched = cv2.resize(jet(map_levels), size, interpolation=cv2.INTER_LINEAR).astype(int)
            return (np.abs(shown - stretched) <= 16).all(axis=-1).mean()

        own, other = near(levels[method]), near(levels[second if method == first else first])
        assert own > 0.9 > 0.5 > other, (method, own, other)

    # Flip: the other method first, then it alone, then back; the kept answers are drawn, nothing is sent.
    page.select_option("#method", second)
    wait_for_status(page, f"{photo.name}, {second.upper()} beside {first.upper()}:")
    assert drawn_boxes(page, "#canvas") == boxes_of(answers[second])
    assert drawn_boxes(page, "#compare-canvas") == boxes_of(answers[first])
    assert float(page.input_value("#threshold")) == pytest.approx(card["box_threshold"][second], abs=0.005)
    assert page.inner_text("label[for=threshold]").startswith(f"Box threshold for {second.upper()}")
    page.uncheck("#compare")
    wait_for_status(page, f"{photo.name}, {second.upper()}:")
    assert page.is_hidden("#compare-figure")
    page.select_option("#method", first)
    wait_for_status(page, f"{photo.name}, {first.upper()}:")
    assert drawn_boxes(page) == boxes_of(answers[first])
    assert [q["method"] for q in sent] == [first, second]


@pytest.fixture(scope="module")
def photo_server(playwright_api: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bundled real-photo model, with its samples."""
    with spa_serve(BUNDLED_PHOTO_MODEL_DIR, tmp_path_factory.mktemp("spa-serve-photo") / "server.log") as server:
        yield server


def test_real_photo_model_side_by_side(new_page: Callable[..., Page], photo_server: Server, tmp_path: Path) -> None:
    """The real-photo model on one of its samples, both methods: each canvas as the API answers."""
    page = open_demo(new_page, photo_server)
    page.check("#compare")  # no image yet: nothing is sent
    samples = page.locator("#samples button", has_text=SCREENSHOT_SAMPLE)
    sent = record_localize_requests(page)
    localize_with(page, samples.click)
    wait_for_status(page, f"{SCREENSHOT_SAMPLE}, ")
    assert sorted(q["method"] for q in sent) == ["cam", "scg"]
    photo = BUNDLED_PHOTO_MODEL_DIR / "samples" / SCREENSHOT_SAMPLE
    for query, selector in zip(sent, ("#canvas", "#compare-canvas"), strict=True):
        assert page.get_attribute(selector, "data-method") == query["method"]
        assert_same_boxes(drawn_boxes(page, selector), boxes_of(api_answer(photo_server, photo, query)))

    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    screenshot = tmp_path / "screenshot.png"
    page.screenshot(path=screenshot, full_page=True)
    if os.environ.get("SPA_UPDATE_SCREENSHOT"):
        shutil.copy(screenshot, REPO / "docs" / "screenshot.png")


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
