"""The demo page with the keyboard alone, on a phone-sized screen, and behind an API key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from browser_helpers import (
    PHOTOS,
    Server,
    api_answer,
    assert_same_boxes,
    boxes_of,
    drawn_boxes,
    localize_with,
    open_demo,
    spa_serve,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

API_KEY = "browser-test-key"
FOCUS_RING = """() => {
    const focused = document.activeElement;
    return [getComputedStyle(focused).outlineStyle, focused.matches(":focus-visible")];
}"""


def focused_id(page: Page) -> str:
    return page.evaluate("document.activeElement.id")


def tab_to(page: Page, element_id: str, most: int = 12) -> None:
    """Press Tab until `element_id` has the focus, and check that the focus is visible there."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if focused_id(page) == element_id:
            break
    else:
        pytest.fail(f"#{element_id} not reached with {most} Tabs (focus is on {focused_id(page)!r})")
    focus = page.evaluate(FOCUS_RING)
    assert focus == ["solid", True], f"no visible focus on #{element_id}"


def test_keyboard_only(new_page: Callable[..., Page], server: Server) -> None:
    page = open_demo(new_page, server)
    # A listener turns on Playwright's file-chooser interception now, before the key is pressed:
    # turned on by expect_file_chooser itself, it may come too late for the first chooser.
    page.on("filechooser", lambda chooser: None)

    # The file picker is the first stop, and Space opens it.
    tab_to(page, "file", most=1)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    localize_with(page, lambda: chooser.value.set_files(PHOTOS[0]))

    # Options: type a number, pick the method with the arrow keys; the page localizes again.
    tab_to(page, "topk")
    page.keyboard.press("Control+A")
    page.keyboard.type("2")

    def to_cam() -> None:
        tab_to(page, "method")
        page.keyboard.press("ArrowDown")

    query, answer = localize_with(page, to_cam, topk="2", method="cam")
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(server, PHOTOS[0], query)))

    # Enter on the Localize button, then on the second class to show its heatmap.
    tab_to(page, "run")
    localize_with(page, lambda: page.keyboard.press("Enter"))
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.locator("#predictions button").nth(1).get_attribute("aria-pressed") == "true"
    assert answer["predictions"][1]["label"] in page.get_attribute("#canvas", "aria-label")


def test_keyboard_compare(new_page: Callable[..., Page], server: Server) -> None:
    page = open_demo(new_page, server)
    localize_with(page, lambda: page.set_input_files("#file", PHOTOS[0]))
    other = {"scg": "cam", "cam": "scg"}[page.input_value("#method")]
    # The checkbox is named by its label; Space ticks it and the other method's answer is asked for.
    assert page.get_by_label("Show CAM and SCG side by side").get_attribute("id") == "compare"

    def compare() -> None:
        tab_to(page, "compare")
        page.keyboard.press("Space")

    localize_with(page, compare, method=other)
    assert page.is_checked("#compare") and page.is_visible("#compare-figure")
    assert other.upper() in page.get_attribute("#compare-canvas", "aria-label")
    assert " beside " in page.inner_text("#status")  # the live region says both are shown


def test_keyboard_sample(new_page: Callable[..., Page], server: Server) -> None:
    page = open_demo(new_page, server)
    tab_to(page, "file", most=1)
    page.keyboard.press("Tab")  # the first sample
    assert page.evaluate("document.activeElement.closest('#samples') !== null")
    query, _ = localize_with(page, lambda: page.keyboard.press("Enter"))
    assert_same_boxes(drawn_boxes(page), boxes_of(api_answer(server, PHOTOS[0], query)))


def test_phone_viewport_has_no_horizontal_scroll(new_page: Callable[..., Page], server: Server, tmp_path: Path) -> None:
    page = open_demo(
        new_page, server, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page.fill("#topk", "3")
    localize_with(page, lambda: page.set_input_files("#file", PHOTOS[1]))

    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 390
    canvas = page.locator("#canvas").bounding_box()
    assert canvas["x"] >= 0 and canvas["x"] + canvas["width"] <= 390
    # A new image on a phone scrolls its result into view.
    assert page.evaluate("document.getElementById('result').getBoundingClientRect().top") < 844
    page.screenshot(path=tmp_path / "phone.png", full_page=True)

    # Compared, the two pictures stack instead of squeezing side by side.
    default = httpx.get(f"{server.url}/v1/models").json()["models"][0]["default_method"]
    localize_with(page, lambda: page.check("#compare"), method={"scg": "cam", "cam": "scg"}[default])
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 390
    upper, lower = (page.locator(s).bounding_box() for s in ("#canvas", "#compare-canvas"))
    assert upper["y"] + upper["height"] <= lower["y"] and lower["x"] + lower["width"] <= 390


@pytest.fixture(scope="module")
def keyed_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("spa-serve-keyed") / "server.log"
    with spa_serve(model_dir, log_path, SPA_API_KEY=API_KEY) as server:
        yield server


def test_api_key_is_asked_for(new_page: Callable[..., Page], keyed_server: Server) -> None:
    page = new_page()
    page.goto(keyed_server.url + "/")
    page.wait_for_selector("body[data-state=error]")
    assert "needs an API key" in page.inner_text("#error")
    assert page.is_visible("#key-field") and focused_id(page) == "api-key"

    page.keyboard.type(API_KEY)
    page.keyboard.press("Tab")  # `change`: the card and the samples load with the key
    page.wait_for_selector("body[data-state=idle]")
    assert page.is_visible("#samples")
    localize_with(page, lambda: page.set_input_files("#file", PHOTOS[0]))
    assert drawn_boxes(page)
