"""A job from the form in a real browser, on the tiny SD1 model: a config file loaded into the form is
started, the page is closed while the job runs and opened again, and the Queue tab's job page shows the
job finished, with its loss curve, a sample image and its LoRA file."""

from __future__ import annotations

import re

import pytest
import tomli_w
from page_helpers import expect, open_tab, screenshot, set_value, settle, text_input

from data_helpers import make_kohya_dataset

pytestmark = pytest.mark.browser

STEPS = 4


@pytest.fixture(scope="module")
def job_toml(tiny_sd1, gui_folder):
    """A config file of a four-step run drawing a 64x64 sample every two steps."""
    dataset = make_kohya_dataset(gui_folder / "data", reg_count=0)
    prompts = gui_folder / "prompts.txt"
    prompts.write_text("a red circle --w 64 --h 64 --s 2 --d 1\n", encoding="utf-8")
    config = {
        "pretrained_model_name_or_path": str(tiny_sd1.single_file),
        "train_data_dir": str(dataset.train_dir),
        "output_dir": str(gui_folder / "out"),
        "output_name": "toy",
        "caption_extension": ".txt",
        "resolution": "64,64",
        "mixed_precision": "no",
        "optimizer_type": "AdamW",
        "seed": 0,
        "max_data_loader_n_workers": 0,
        "network_dim": 4,
        "max_train_steps": STEPS,
        "sample_prompts": str(prompts),
        "sample_every_n_steps": 2,
    }
    path = gui_folder / "toy.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def test_a_started_job_survives_the_page_and_shows_its_loss_and_samples(open_page, job_toml, gui_folder):
    page = open_page()
    set_value(text_input(page, "config-path"), str(job_toml))
    page.locator("#config-load").click()
    expect(page.locator("#config-message textarea")).to_have_value(f"Loaded {job_toml}")
    settle(page)
    expect(page.locator("#validation-message")).to_have_text("✅ The config validates: Start queues it.")
    page.locator("#start").click()
    expect(page.locator("#start-message textarea")).to_have_value(
        "Queued job 1 (toy), position 1: see the Queue tab."
    )
    page.close()  # the job runs in its own process: the page is not needed

    page = open_page()
    open_tab(page, "queue-tab")
    expect(page.locator("#queue-table")).to_contain_text("toy")
    text_input(page, "queue-job").click()
    page.get_by_role("option", name=re.compile(r"^1: toy \(")).click()
    headline = page.locator("#job-headline [data-testid=markdown]")
    expect(headline).to_have_text(re.compile(r"Job 1 · toy · (queued|running|done)"))
    expect(headline).to_have_text("Job 1 · toy · done", timeout=180_000)
    expect(page.locator("#job-progress textarea")).to_have_value(
        re.compile(rf"^step {STEPS}/{STEPS} \(100%\)")
    )
    expect(page.locator("#job-outputs textarea")).to_have_value(
        re.compile(rf"^LoRA file: {re.escape(str(gui_folder / 'out' / 'toy.safetensors'))}$", re.M)
    )
    # The loss plot draws its curves (Vega renders a canvas or an SVG); the gallery shows the samples.
    expect(page.locator("#job-loss canvas, #job-loss svg").first).to_be_visible()
    samples = page.locator("#job-samples img")
    expect(samples.first).to_be_visible()
    assert samples.first.evaluate("image => image.complete && image.naturalWidth") == 64
    assert (gui_folder / "out" / "toy.safetensors").is_file()
    page.locator("#job-loss").scroll_into_view_if_needed()  # the screenshot shows the curves and samples
    screenshot(page, "queue-job-page")
