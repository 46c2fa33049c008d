"""The Utilities tab in a real browser: inspect runs in the page and shows its report; resize, filled in
its generated form, is queued as a tool job whose console and end the tab shows, and the Queue tab has
the job selected with the command it ran."""

from __future__ import annotations

import re

import pytest
import torch
from page_helpers import expect, open_tab, set_value, text_input
from safetensors.torch import save_file

pytestmark = pytest.mark.browser

MODULES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (32, 32),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (32, 32),
}


@pytest.fixture(scope="module")
def lora_file(gui_folder):
    """A kohya LoRA of rank 4 on two SD1 modules (random factors, so a resize has something to keep)."""
    for tool in ("inspect_lora", "resize_lora"):
        pytest.importorskip(f"loracraft.tools.{tool}")
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (out_features, in_features) in MODULES.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(4, in_features, generator=generator)
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator)
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    path = gui_folder / "toy-lora.safetensors"
    save_file(tensors, str(path), {"ss_network_dim": "4", "ss_network_alpha": "4.0"})
    return path


def open_tool(page, key: str) -> None:
    """Open the tool's accordion and wait until its form is mounted: Gradio renders an accordion's
    controls when it first opens, and a value typed before a control has taken its initial value is
    wiped by it (CI saw inspect run with an empty FILE box)."""
    open_tab(page, "utilities-tab")
    page.locator(f"#utility-{key}").get_by_text(f"loracraft {key}", exact=True).click()
    expect(page.locator(f"#utility-{key}-run")).to_be_visible()


def fill(box, value) -> None:
    """set_value, then check the box kept it (a control still mounting may reset it once)."""
    for _ in range(3):
        set_value(box, value)
        page_value = box.input_value()
        if page_value == str(value):
            box.page.wait_for_timeout(200)
            if box.input_value() == str(value):
                return
    expect(box).to_have_value(str(value))


def test_inspect_shows_its_report_and_resize_runs_as_a_job_with_its_console(open_page, lora_file, gui_folder):
    page = open_page()
    open_tool(page, "inspect")
    fill(text_input(page, "utility-inspect-files"), str(lora_file))
    page.locator("#utility-inspect-run").click()
    report = page.locator("#utility-inspect-result textarea")
    expect(report).to_have_value(re.compile(r"rank and alpha: rank 4 on all 2 modules"))

    open_tool(page, "resize")
    resized = gui_folder / "toy-rank2.safetensors"
    fill(text_input(page, "utility-resize-model"), str(lora_file))
    set_value(text_input(page, "utility-resize-save_to"), str(resized))
    set_value(page.locator("#utility-resize-new_rank input[type=number]"), 2)
    page.locator("#utility-resize-run").click()
    command = f"loracraft resize --model {lora_file} --save_to {resized} --new_rank 2"
    message = page.locator("#utility-resize-result textarea")
    expect(message).to_have_value(
        re.compile(rf"^Queued job (\d+) \(resize toy-rank2.safetensors\): {command}$")
    )
    job_id = re.search(r"job (\d+)", message.input_value()).group(1)
    headline = page.locator("#utility-job-headline")
    expect(headline).to_have_text(f"Job {job_id} · resize toy-rank2.safetensors · done", timeout=120_000)
    expect(page.locator("#utility-job-console textarea")).to_have_value(re.compile(rf"wrote {resized}"))
    assert resized.is_file()

    open_tab(page, "queue-tab")
    expect(page.locator("#job-headline")).to_have_text(re.compile(rf"Job {job_id} · resize toy-rank2"))
    expect(page.locator("#job-progress")).to_contain_text(command)
    expect(page.locator("#job-log textarea")).to_have_value(re.compile(rf"wrote {resized}"))
