"""Browser tests: Debian's Chromium, driven by Playwright, against real `spa-serve` processes.

They skip, saying why, where /usr/bin/chromium (scripts/install-browser) or the playwright package
(the `test` extra) is missing. Playwright only drives that Chromium: it never downloads a browser.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from browser_helpers import (
    BODY_LIMIT,
    CHROMIUM,
    DESKTOP,
    LAUNCH_ARGS,
    PHOTOS,
    Server,
    spa_serve,
)

if TYPE_CHECKING:  # playwright may be missing: then the tests skip
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="session")
def playwright_api() -> ModuleType:
    """playwright.sync_api, or a skip saying what is missing. Every fixture that starts something
    depends on it, so that nothing starts when the tests are going to skip."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser (installs Debian's chromium)")
    return pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is missing: install the `test` extra"
    )


@pytest.fixture(scope="module")
def browser(playwright_api: ModuleType) -> Iterator[Browser]:
    """Headless Debian Chromium. Module scope, so that Playwright's own event loop is gone before
    the asyncio tests of other directories run."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def model_dir(playwright_api: ModuleType, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, named `tiny` (apart from the bundled models), with a samples/ folder holding the test
    photos, like models/demo/samples/."""
    out = tmp_path_factory.mktemp("browser-model") / "tiny"
    shutil.copytree(tiny_model_dir, out, ignore=shutil.ignore_patterns("samples"))  # its own, if it has any
    card = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**card, "name": "tiny"}))
    (out / "samples").mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, out / "samples")
    return out


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service with no CORS origins and a small body limit."""
    log_path = tmp_path_factory.mktemp("spa-serve") / "server.log"
    with spa_serve(model_dir, log_path, SPA_MAX_BODY_BYTES=str(BODY_LIMIT)) as server:
        yield server


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """new_page(**context_options) -> a Page in a fresh context (default: a desktop viewport).

    An uncaught JavaScript error in any page fails the test."""
    contexts, errors = [], []

    def make(**options: object) -> Page:
        context = browser.new_context(**{"viewport": DESKTOP, **options})
        context.set_default_timeout(15_000)  # everything here takes a second or two: fail early
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(error))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
