"""The page with several models (the picker), behind a path-prefix proxy, and /docs with no network."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from browser_helpers import (
    PHOTOS,
    Server,
    assert_same_boxes,
    boxes_of,
    drawn_boxes,
    localize_with,
    open_demo,
    spa_serve,
)
from spa_service.settings import BUNDLED_MODEL_DIR

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.browser
PREFIX = "/spa"


@pytest.fixture(scope="module")
def two_model_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny model with the test photos as samples (the default), and the bundled demo model."""
    log_path = tmp_path_factory.mktemp("spa-serve-two") / "server.log"
    with spa_serve([model_dir, BUNDLED_MODEL_DIR], log_path) as server:
        yield server


def test_the_picker_switches_model_samples_and_answers(new_page: Callable[..., Page], two_model_server: Server) -> None:
    server = two_model_server
    listing = httpx.get(f"{server.url}/v1/models").json()
    default, other = (m["name"] for m in listing["models"])
    page = open_demo(new_page, server)
    assert page.eval_on_selector_all("#model-picker option", "os => os.map(o => o.value)") == [default, other]
    assert page.input_value("#model-picker") == default
    assert page.locator("#samples button").count() == len(PHOTOS)

    localize_with(page, lambda: page.set_input_files("#file", PHOTOS[0]))
    with page.expect_response(lambda r: urlsplit(r.url).path == f"/v1/models/{other}/localize") as switched:
        page.select_option("#model-picker", other)  # the current image goes to the other model
    page.wait_for_selector("body[data-state=done]")
    answer = switched.value.json()
    assert answer["model"] == other
    assert drawn_boxes(page) == boxes_of(answer)
    demo_samples = sorted(p.name for p in (BUNDLED_MODEL_DIR / "samples").iterdir())
    page.wait_for_function(f"document.querySelectorAll('#samples button').length === {len(demo_samples)}")
    assert other in page.inner_text("#model")
    assert page.get_attribute("#topk", "max") == str(listing["models"][1]["num_classes"])

    # CAM vs SCG stays one click: the method select re-asks the same model.
    query, cam = localize_with(page, lambda: page.select_option("#method", "cam"), method="cam")
    assert cam["model"] == other
    direct = httpx.post(
        f"{server.url}/v1/models/{other}/localize", params=query,
        files={"image": (PHOTOS[0].name, PHOTOS[0].read_bytes())}, timeout=30,
    ).json()
    assert_same_boxes(drawn_boxes(page), boxes_of(direct))


@pytest.fixture(scope="module")
def default_method_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two copies of the tiny model: `tiny-scg`, whose card makes SCG the default method (the default
    model), and `tiny-cam`, CAM."""
    root = tmp_path_factory.mktemp("default-method")
    dirs = []
    for method in ("scg", "cam"):
        copy = Path(shutil.copytree(model_dir, root / f"tiny-{method}"))
        card = json.loads((copy / "model.json").read_text())
        (copy / "model.json").write_text(json.dumps({**card, "name": f"tiny-{method}", "default_method": method}))
        dirs.append(copy)
    with spa_serve(dirs, root / "server.log") as server:
        yield server


def test_the_page_starts_with_each_models_default_method(
    new_page: Callable[..., Page], default_method_server: Server
) -> None:
    server = default_method_server
    cards = {c["name"]: c for c in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert [c["default_method"] for c in cards.values()] == ["scg", "cam"]
    page = open_demo(new_page, server)
    assert page.input_value("#method") == "scg"
    query, _ = localize_with(page, lambda: page.set_input_files("#file", PHOTOS[0]))
    assert query["method"] == "scg"

    # Another model: its default method and that method's threshold, for the image already chosen.
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/models/tiny-cam/localize") as switched:
        page.select_option("#model-picker", "tiny-cam")
    page.wait_for_selector("body[data-state=done]")
    query = dict(parse_qsl(urlsplit(switched.value.url).query))
    assert query["method"] == "cam" == page.input_value("#method")
    assert query["threshold"] == str(cards["tiny-cam"]["box_threshold"]["cam"])
    assert drawn_boxes(page) == boxes_of(switched.value.json())


def behind_prefix(page: Page, server: Server, outside: list[str]) -> None:
    """A path-prefix proxy in the browser: http://127.0.0.1:PORT/spa/X is fetched as /X; any request
    that leaves the server (another host, or outside the prefix) is refused and recorded."""
    origin = server.url

    def handle(route: Route) -> None:
        url = route.request.url
        if url.startswith(origin + PREFIX + "/"):
            response = route.fetch(url=origin + url[len(origin) + len(PREFIX):])
            route.fulfill(response=response)
        else:
            outside.append(url)
            route.abort("blockedbyclient")

    page.route("**/*", handle)


def test_the_page_works_behind_a_path_prefix(new_page: Callable[..., Page], server: Server) -> None:
    page = new_page()
    outside: list[str] = []
    behind_prefix(page, server, outside)
    page.goto(f"{server.url}{PREFIX}/")
    page.wait_for_selector("body[data-state=idle]")
    samples = page.locator("#samples button")
    assert samples.count() == len(PHOTOS)
    with page.expect_response(lambda r: r.url.endswith("/localize?" + urlsplit(r.url).query)) as answer:
        samples.nth(0).click()
    page.wait_for_selector("body[data-state=done]")
    assert urlsplit(answer.value.url).path.startswith(PREFIX + "/v1/models/")
    assert drawn_boxes(page) == boxes_of(answer.value.json())
    assert outside == [], f"requests that missed the prefix: {outside}"


def test_docs_render_from_the_package_with_no_network(new_page: Callable[..., Page], server: Server) -> None:
    page = new_page()
    outside: list[str] = []
    behind_prefix(page, server, outside)  # also proves every asset is fetched from the service itself
    page.goto(f"{server.url}{PREFIX}/docs")
    page.wait_for_selector(".swagger-ui .info h1.title")
    assert "SPA Localizer" in page.inner_text(".swagger-ui .info h1.title")
    assert page.locator(".opblock-summary-path", has_text="/v1/localize").count() >= 1
    assert outside == [], f"/docs tried to load {outside}"
