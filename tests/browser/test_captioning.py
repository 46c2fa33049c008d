"""The caption editor in a real browser: a folder loaded in the Captioning tab, a caption edited and saved
by moving on (the Next button, then Alt+Right after a tag chip's × removed a tag; Alt+Left comes back
without leaving the page), a bulk replace previewed (the diff shown, the files unchanged), applied and
undone, each step checked in the files on disk; a click in the gallery shows that image."""

from __future__ import annotations

import re

import pytest
from page_helpers import expect, open_tab, screenshot, set_value, text_input

from data_helpers import write_test_image

pytestmark = pytest.mark.browser

CAPTIONS = {"a": "sks, red hair, smile", "b": "red hair, hat", "c": "blue hair"}


@pytest.fixture(scope="module")
def photos(gui_folder):
    folder = gui_folder / "captioned"
    folder.mkdir()
    for seed, (stem, caption) in enumerate(CAPTIONS.items()):
        write_test_image(folder / f"{stem}.png", (96, 64), seed=seed)
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def captions_on_disk(folder) -> dict[str, str]:
    return {stem: (folder / f"{stem}.txt").read_text(encoding="utf-8") for stem in CAPTIONS}


def test_edit_move_on_bulk_replace_apply_and_undo(open_page, photos):
    page = open_page()
    open_tab(page, "captioning-tab")
    folder = text_input(page, "caption-editor-folder")
    set_value(folder, photos)
    expect(folder).to_have_value(str(photos))
    page.locator("#caption-editor-load").click()
    status = page.locator("#caption-editor-status textarea")
    expect(status).to_have_value(f"Loaded 3 images (3 with a caption file) from {photos}.")
    caption = page.locator("#caption-editor-caption textarea")
    expect(caption).to_have_value("sks, red hair, smile")
    expect(page.locator("#caption-editor-position")).to_contain_text("1 / 3")

    caption.fill("sks, red hair, smile, edited")
    page.locator("#caption-editor-next").click()
    expect(caption).to_have_value("red hair, hat")
    expect(status).to_have_value("Saved a.txt.")
    assert captions_on_disk(photos)["a"] == "sks, red hair, smile, edited\n"

    hat = page.locator("#caption-editor-tags .token", has=page.get_by_text("hat", exact=True))
    hat.locator(".token-remove").click()
    expect(caption).to_have_value("red hair")
    assert captions_on_disk(photos)["b"] == "red hair, hat\n"  # not saved until moving on
    address = page.url
    caption.press("Alt+ArrowRight")
    expect(caption).to_have_value("blue hair")
    expect(status).to_have_value("Saved b.txt.")
    assert captions_on_disk(photos)["b"] == "red hair\n"
    caption.press("Alt+ArrowLeft")
    expect(caption).to_have_value("red hair")
    assert page.url == address

    set_value(text_input(page, "bulk-replace-old"), "red hair")
    set_value(text_input(page, "bulk-replace-new"), "auburn hair")
    page.locator("#bulk-preview").click()
    report = page.locator("#bulk-report textarea")
    expect(report).to_have_value(
        "would change 2 of 3 caption files\n\n"
        "a.txt\n  - sks, red hair, smile, edited\n  + sks, auburn hair, smile, edited\n"
        "b.txt\n  - red hair\n  + auburn hair"
    )
    before = {"a": "sks, red hair, smile, edited\n", "b": "red hair\n", "c": "blue hair\n"}
    assert captions_on_disk(photos) == before
    page.locator("#bulk-apply").click()
    expect(status).to_have_value("Applied: the bulk edit of 2 caption files (Undo takes it back).")
    expect(caption).to_have_value("auburn hair")
    expect(report).to_have_value(re.compile(r"^changed 2 of 3 caption files\n"))
    assert captions_on_disk(photos) == {
        "a": "sks, auburn hair, smile, edited\n",
        "b": "auburn hair\n",
        "c": "blue hair\n",
    }
    page.locator("#caption-editor-folder").scroll_into_view_if_needed()
    page.evaluate(
        "window.scrollBy(0, document.querySelector('#caption-editor-folder').getBoundingClientRect().top - 8)"
    )
    screenshot(page, "caption-editor")

    page.locator("#caption-editor-undo").click()
    expect(status).to_have_value("Undone: the bulk edit of 2 caption files.")
    expect(caption).to_have_value("red hair")
    assert captions_on_disk(photos) == before

    page.locator("#caption-editor-gallery .thumbnail-item").nth(2).click()
    expect(caption).to_have_value("blue hair")
    expect(page.locator("#caption-editor-position")).to_contain_text("3 / 3")
