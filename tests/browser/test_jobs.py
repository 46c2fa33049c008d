"""Jobs from the form in a real browser, on the tiny SD1 model: a config file loaded into the form is
started, the page is closed while the job runs and opened again, and the Queue tab's job page shows the
job finished, with its loss curve, a sample image and its LoRA file; a running job is stopped from its
page (it saves a state) and resumed from there to the end."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import tomli_w
from page_helpers import expect, open_tab, screenshot, set_value, text_input

from data_helpers import make_kohya_dataset

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

STEPS = 4
# Long enough to stop it from the page (refreshed every two seconds) before it ends, short enough to
# let the resumed run end.
LONG_STEPS = 120


@pytest.fixture(scope="module")
def job_config(tiny_sd1, gui_folder) -> Callable[..., Path]:
    """Writes a config file of a run on the tiny SD1 model and one dataset; `values` override the
    four-step run drawing a 64x64 sample every two steps."""
    train_dir = make_kohya_dataset(gui_folder / "data", reg_count=0).train_dir
    return partial(_write_job_config, tiny_sd1.single_file, train_dir, gui_folder)


def _write_job_config(model: Path, train_dir: Path, gui_folder: Path, **values) -> Path:
    prompts = gui_folder / "prompts.txt"
    prompts.write_text("a red circle --w 64 --h 64 --s 2 --d 1\n", encoding="utf-8")
    config = {
        "pretrained_model_name_or_path": str(model),
        "train_data_dir": str(train_dir),
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
        **values,
    }
    path = gui_folder / f"{config['output_name']}.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def load_into_form(page: Page, config: Path) -> None:
    set_value(text_input(page, "config-path"), str(config))
    page.locator("#config-load").click()
    expect(page.locator("#config-message textarea")).to_have_value(f"Loaded {config}")
    expect(page.locator("#validation-message")).to_have_text("✅ The config validates: Start queues it.")


def select_job(page: Page, name: str) -> None:
    text_input(page, "queue-job").click()
    page.get_by_role("option", name=re.compile(rf"^\d+: {name} \(")).click()


@pytest.fixture(scope="module")
def job_toml(job_config):
    return job_config()


def test_a_started_job_survives_the_page_and_shows_its_loss_and_samples(open_page, job_toml, gui_folder):
    page = open_page()
    load_into_form(page, job_toml)
    page.locator("#start").click()
    expect(page.locator("#start-message textarea")).to_have_value(
        "Queued job 1 (toy), position 1: see the Queue tab."
    )
    page.close()  # the job runs in its own process: the page is not needed

    page = open_page()
    open_tab(page, "queue-tab")
    expect(page.locator("#queue-table")).to_contain_text("toy")
    select_job(page, "toy")
    headline = page.locator("#job-headline [data-testid=markdown]")
    expect(headline).to_have_text(re.compile(r"Job 1 · toy · (queued|running|done)"))
    expect(headline).to_have_text("Job 1 · toy · done", timeout=180_000)
    expect(page.locator("#job-progress .job-progress-line")).to_have_text(
        re.compile(rf"^step {STEPS}/{STEPS} \(100%\)")
    )
    bar = page.locator("#job-progress progress")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == (str(STEPS), str(STEPS))
    # The LoRA file is a download link: what it hands over is the file the run wrote.
    link = page.locator("#job-outputs a", has_text="toy.safetensors")
    expect(link).to_have_attribute("href", re.compile(r"api/jobs/1/files/toy\.safetensors$"))
    downloaded = page.request.get(link.evaluate("a => a.href"))
    assert downloaded.ok and downloaded.body() == (gui_folder / "out" / "toy.safetensors").read_bytes()
    # The loss plot draws its curves (Vega renders a canvas or an SVG); the gallery shows the samples.
    expect(page.locator("#job-loss canvas, #job-loss svg").first).to_be_visible()
    # Each plot lists its curves in its legend (a plot that got its axes wrong drew none); the plots are
    # drawn once scrolled into view.
    page.locator("#job-loss").scroll_into_view_if_needed()
    for plot, curves in (("job-loss", ("loss", "average")), ("job-lr", ("unet", "textencoder"))):
        legend = page.locator(f"#{plot} .role-legend-label")
        expect(legend).to_have_count(len(curves) + (plot == "job-loss"))  # + the epoch average
        for curve in curves:
            expect(legend.filter(has_text=curve).first).to_be_visible()
    samples = page.locator("#job-samples img")
    expect(samples.first).to_be_visible()
    assert samples.first.evaluate("image => image.complete && image.naturalWidth") == 64
    assert (gui_folder / "out" / "toy.safetensors").is_file()
    screenshot(page, "queue-job-page")


def test_a_running_job_is_stopped_from_its_page_and_resumed_to_the_end(open_page, job_config, gui_folder):
    config = job_config(output_name="long", max_train_steps=LONG_STEPS)
    page = open_page()
    load_into_form(page, config)
    open_tab(page, "queue-tab")
    page.locator("#queue-add").click()  # the Queue tab's own way to add the form's config
    expect(page.locator("#queue-message textarea")).to_have_value(re.compile(r"^Added job \d+\.$"))
    select_job(page, "long")
    headline = page.locator("#job-headline [data-testid=markdown]")
    progress = page.locator("#job-progress .job-progress-line")
    expect(progress).to_have_text(re.compile(rf"^step [1-9]\d*/{LONG_STEPS} "), timeout=120_000)

    page.locator("#queue-stop").click()
    expect(page.locator("#queue-message textarea")).to_have_value(re.compile(r"^Job \d+ asked to stop\.$"))
    stopped = re.compile(r"Job \d+ · long · stopped: stopped by SIGTERM at step (\d+)")
    expect(headline).to_have_text(stopped, timeout=120_000)
    step = int(stopped.search(headline.inner_text()).group(1))
    assert 0 < step < LONG_STEPS
    assert (gui_folder / "out" / f"long-step{step:08d}-state").is_dir()
    assert not (gui_folder / "out" / "long.safetensors").exists()

    page.locator("#queue-resume").click()
    expect(page.locator("#queue-message textarea")).to_have_value(re.compile(r"^Job \d+ queued to resume\.$"))
    expect(headline).to_have_text(re.compile(r"Job \d+ · long · done\s*$"), timeout=180_000)
    expect(progress).to_have_text(re.compile(rf"^step {LONG_STEPS}/{LONG_STEPS} \(100%\)"))
    assert (gui_folder / "out" / "long.safetensors").is_file()
