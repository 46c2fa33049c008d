"""Working Gradio's controls in a browser by the elem_ids the UI gives them (`field-NAME` for a flag's
control, `start`, `config-*`, `import-*`, `queue-*`, `job-*`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def expect(target: Any) -> Any:
    """Playwright's expect, imported when used, so that these tests are collected (and skipped) where
    Playwright is not installed."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def text_input(page: Page, elem_id: str) -> Locator:
    """The text box inside a Gradio Textbox (a textarea) or Dropdown (an input)."""
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def number_input(page: Page, field: str) -> Locator:
    return page.locator(f"#field-{field} input[type=number]")


def checkbox(page: Page, field: str) -> Locator:
    return page.locator(f"#field-{field} input[type=checkbox]")


def set_value(box: Locator, value: Any) -> None:
    """Type a value the way a user does; leaving the box lets Gradio send its change."""
    box.fill(str(value))
    box.blur()


def choose(page: Page, elem_id: str, option: str) -> None:
    """Pick `option` in a Gradio Dropdown: open it and click the option (Gradio lists the options
    outside the component, by their labels)."""
    text_input(page, elem_id).click()
    page.get_by_role("option", name=option, exact=True).click()


def open_tab(page: Page, tab_id: str) -> None:
    """Click a tab's button; Gradio renders a tab's controls when it is first opened."""
    page.locator(f"#{tab_id}-button").click()


def screenshot(page: Page, name: str) -> Path:
    """Save the page as docs/screenshots/NAME.png (the pictures in the docs come from these runs)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
