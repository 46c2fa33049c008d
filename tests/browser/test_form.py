"""The training form in a real browser: a preset fills it, an invalid value shows the CLI's one-line
message and disables Start until it is fixed, the search box filters the fields, and a kohya_ss GUI JSON
imports with every key reported and its values in the form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from page_helpers import (
    checkbox,
    choose,
    expect,
    number_input,
    open_tab,
    screenshot,
    set_value,
    text_input,
)

pytestmark = pytest.mark.browser

KOHYA_SS = Path(__file__).resolve().parents[1] / "data" / "kohya_ss"
VALID = "✅ The config validates: Start queues it."


def test_a_preset_fills_the_form_and_an_invalid_value_disables_start(open_page):
    page = open_page()
    choose(page, "config-preset", "sd15-style-12gb")
    page.locator("#config-preset-apply").click()
    expect(page.locator("#config-message textarea")).to_have_value("Preset sd15-style-12gb applied")
    message = page.locator("#validation-message")
    expect(message).to_have_text(VALID)
    open_tab(page, "tab-network")
    expect(number_input(page, "network_dim")).to_have_value("64")  # the form's own default is 32
    expect(number_input(page, "network_alpha")).to_have_value("32")
    screenshot(page, "train-form")

    set_value(number_input(page, "network_alpha"), -1)
    expect(message).to_have_text("❌ --network_alpha: Input should be greater than or equal to 0 (got -1)")
    expect(page.locator("#start")).to_be_disabled()
    expect(page.locator("#field-network_alpha")).to_contain_text("⚠ --network_alpha: Input should be")

    set_value(number_input(page, "network_alpha"), 8)
    expect(message).to_have_text(VALID)
    expect(page.locator("#start")).to_be_enabled()

    open_tab(page, "tab-training")
    choose(page, "field-mixed_precision", "no")
    checkbox(page, "full_fp16").check()
    expect(message).to_have_text(
        "❌ --full_fp16 needs --mixed_precision fp16, got no; add --mixed_precision fp16 or drop --full_fp16"
    )
    expect(page.locator("#start")).to_be_disabled()
    screenshot(page, "form-invalid-value")
    checkbox(page, "full_fp16").uncheck()
    expect(message).to_have_text(VALID)
    expect(page.locator("#start")).to_be_enabled()


def test_the_search_box_filters_the_fields(open_page):
    page = open_page()
    open_tab(page, "tab-network")
    expect(page.locator("#field-network_dim")).to_be_visible()
    set_value(text_input(page, "field-search"), "alpha")
    expect(page.locator("#field-network_alpha")).to_be_visible()
    expect(page.locator("#field-network_dim")).to_be_hidden()
    set_value(text_input(page, "field-search"), "")
    expect(page.locator("#field-network_dim")).to_be_visible()


def test_a_kohya_ss_gui_json_imports_into_the_form_with_its_report(open_page):
    page = open_page()
    page.get_by_text("Import a kohya_ss GUI JSON, a kohya TOML or a command line").click()
    set_value(text_input(page, "import-source"), str(KOHYA_SS / "sd15 - EDG_LoraOptiSettings.json"))
    page.locator("#import-run").click()
    report = page.locator("#import-report textarea")
    expect(report).to_have_value(re.compile(r"56 keys mapped, 7 ignored$"))
    lines = report.input_value().splitlines()
    assert lines[0].endswith(
        "EDG_LoraOptiSettings.json: a kohya_ss GUI LoRA config (SD1.x/SD2.x, LoRA_type Standard)"
    )
    assert "mapped   optimizer                      -> optimizer_type = 'AdamW8bit'" in lines
    assert "mapped   max_resolution                 -> resolution = '512,650'" in lines
    assert "mapped   LoRA_type                      -> network_module = 'networks.lora'" in lines
    open_tab(page, "tab-network")
    expect(number_input(page, "network_dim")).to_have_value("64")
    expect(number_input(page, "network_alpha")).to_have_value("64")
    open_tab(page, "tab-optimizer")
    expect(text_input(page, "field-optimizer_type")).to_have_value("AdamW8bit")
    expect(number_input(page, "unet_lr")).to_have_value("0.0001")
    expect(text_input(page, "field-lr_scheduler")).to_have_value("constant")
    open_tab(page, "tab-training")
    expect(number_input(page, "seed")).to_have_value("1234")
    expect(text_input(page, "field-mixed_precision")).to_have_value("bf16")
    open_tab(page, "tab-folders")
    expect(text_input(page, "field-resolution")).to_have_value("512,650")
    expect(number_input(page, "train_batch_size")).to_have_value("3")
    report.scroll_into_view_if_needed()
    screenshot(page, "import-report")


def test_every_field_of_an_imported_kohya_ss_config_lands_in_the_form(open_page):
    """Through the page's controls and back: "Show command" after the import prints exactly the command
    of the imported config, so every mapped key reached its control with its value."""
    from loracraft.config.importers import import_config
    from loracraft.config.load import build_config, train_command

    source = KOHYA_SS / "SDXL - LoRA kudou-reira prodigy v4.0.json"
    report = import_config(source)
    expected = train_command(build_config(report.values, {}))
    assert expected.count(" --") > 30  # a config that changes many settings

    page = open_page()
    page.get_by_text("Import a kohya_ss GUI JSON, a kohya TOML or a command line").click()
    set_value(text_input(page, "import-source"), str(source))
    page.locator("#import-run").click()
    expect(page.locator("#import-report textarea")).to_have_value(
        re.compile(rf"{len(report.mapped)} keys mapped, {len(report.ignored)} ignored$")
    )
    expect(page.locator("#validation-message")).to_have_text(VALID)
    page.locator("#show-command").click()
    expect(page.locator("#train-command textarea")).to_have_value(expected)


def test_the_dataset_tab_prepares_a_folder_tree_puts_it_in_the_form_and_checks_it(open_page, tmp_path):
    from data_helpers import make_kohya_dataset

    images = make_kohya_dataset(tmp_path / "source", reg_count=0).concept_dir
    tree = tmp_path / "project"
    page = open_page()
    open_tab(page, "dataset-tab")
    set_value(text_input(page, "prepare-train-images"), str(images))
    set_value(text_input(page, "prepare-output"), str(tree))
    set_value(text_input(page, "prepare-instance-prompt"), "sks")
    set_value(text_input(page, "prepare-class-prompt"), "toy")
    page.locator("#prepare-run").click()
    expect(page.locator("#prepare-report textarea")).to_have_value(re.compile(r"40_sks toy"))
    assert (tree / "img" / "40_sks toy").is_dir()

    page.locator("#prepare-use").click()
    expect(text_input(page, "dataset-check-target")).to_have_value(str(tree / "img"))
    page.locator("#dataset-check-run").click()
    report = page.locator("#dataset-check-report textarea")
    expect(report).to_have_value(re.compile(r"\n0 error\(s\), \d+ warning\(s\): ready to train$"))
    assert "train  img/40_sks toy: 4 images, repeats 40;" in report.input_value()
    screenshot(page, "dataset-tab")
    open_tab(page, "train-tab")
    open_tab(page, "tab-folders")
    expect(text_input(page, "field-train_data_dir")).to_have_value(str(tree / "img"))
    open_tab(page, "tab-saving")
    expect(text_input(page, "field-output_dir")).to_have_value(str(tree / "model"))
