"""The browser tests' fixtures: a real `loracraft gui` server on a free port and Debian's Chromium driven
by Playwright, plus helpers that work Gradio's controls by the elem_ids the UI gives them.

Nothing is downloaded at run time: Playwright launches the system's /usr/bin/chromium (never
`playwright install`), with Chromium's background connections (updates, sync, QUIC) turned off, since
the test machines' closed network refuses them, and a fresh profile folder per module. Without Chromium
or the Playwright package the tests skip and say which is missing (.ci/run installs both).
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

    from loracraft.gui.server import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# On shared cores a page's first load, or an event that updates the form's hundreds of controls, can
# take seconds: the waits for what the page shows allow this much.
PAGE_TIMEOUT_MS = 60_000


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (install Debian's chromium package: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[test]' installs it)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = missing_browser()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"browser tests skipped: {reason}")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gui_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gui")


@pytest.fixture(scope="module")
def gui_server(gui_folder) -> Iterator[RunningServer]:
    """`loracraft gui` on 127.0.0.1 with its own queue; its worker runs the jobs as subprocesses."""
    from loracraft.gui.server import start_server

    patch = pytest.MonkeyPatch()
    # The job subprocesses inherit it: one thread is as fast on the tiny model, and faster on shared cores.
    patch.setenv("OMP_NUM_THREADS", "1")
    server = start_server(port=free_port(), queue_path=gui_folder / "queue.sqlite")
    yield server
    server.close()
    patch.undo()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[BrowserContext]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PAGE_TIMEOUT_MS)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def open_page(browser, gui_server) -> Iterator[Callable[[], Page]]:
    """Opens the UI in a new tab, loaded (Start is shown); the tabs still open are closed afterwards."""
    pages: list[Page] = []

    def open_one() -> Page:
        page = browser.new_page()
        pages.append(page)
        page.goto(gui_server.url)
        page.locator("#start").wait_for()
        return page

    yield open_one
    for page in pages:
        if not page.is_closed():
            page.close()
