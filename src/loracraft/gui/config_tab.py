"""The form's configuration files: load and save TOML (what `loracraft train --config_file` reads),
import a kohya_ss GUI JSON, a kohya TOML or a pasted command line (every key reported as mapped or
ignored), apply a shipped preset, and show the `loracraft train` command of the form.

The functions below the panel take and return plain values (control lists, text); the panel wires them
to the page. A mistake is the CLI's one-line message in the panel's message box and leaves the form as
it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from loracraft.atomic import write_text_atomic
from loracraft.config.load import read_config_file, train_command
from loracraft.config.presets import load_preset, preset_names
from loracraft.errors import UserError
from loracraft.gui.form_state import controls_of, validate


def load_config(path: str) -> tuple[list[Any], str]:
    """The controls of the TOML (or flat JSON) at `path`, as `--config_file` reads it."""
    if not path.strip():
        raise UserError("give the config file's path to load")
    return controls_of(read_config_file(path.strip())), f"Loaded {path.strip()}"


def save_config(path: str, controls: Sequence[Any]) -> str:
    """Write the form as TOML at `path`; refused while the form does not validate (the file must load)."""
    if not path.strip():
        raise UserError("give a path to save the config to, e.g. my_lora.toml")
    validation = validate(controls)
    if validation.toml is None:
        raise UserError(f"not saved: {validation.message}")
    target = Path(path.strip()).expanduser()
    write_text_atomic(target, validation.toml)
    return f"Saved {target}"


def import_into_form(source: str, uploaded: str | None, prompts_folder: Path) -> tuple[list[Any], str]:
    """The controls of an imported config (an uploaded file, a path, or pasted text) and the report of
    every key it held. A kohya_ss GUI config holds its sample prompts as text: they go to a prompt file
    that `sample_prompts` names, next to a config given by its path (as `loracraft config import` does),
    else in `prompts_folder` (an upload's copy and pasted text have no folder of their own)."""
    from loracraft.config.importers import import_config, names_a_file, report_lines
    from loracraft.config.importers.apply import write_prompt_file

    if uploaded:
        report = import_config(Path(uploaded))
        prompt_file = prompts_folder / f"{Path(uploaded).stem}.prompts.txt"
    elif source.strip():
        report = import_config(source.strip())
        prompt_file = (
            Path(source.strip()).with_suffix(".prompts.txt")
            if names_a_file(source.strip())
            else prompts_folder / f"pasted-{_digest(source)}.prompts.txt"
        )
    else:
        raise UserError("paste a kohya command line, JSON or TOML, or give a file to import")
    lines = report_lines(report)
    if note := write_prompt_file(report, prompt_file):
        lines.append(note)
    return controls_of(report.values), "\n".join(lines)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def apply_preset(name: str | None) -> tuple[list[Any], str]:
    if not name:
        raise UserError("choose a preset first")
    return controls_of(load_preset(name)), f"Preset {name} applied"


def show_command(controls: Sequence[Any]) -> str:
    """The `loracraft train` command line that trains the form's config, or why there is none."""
    validation = validate(controls)
    if validation.config is None:
        return f"no command: {validation.message}"
    return train_command(validation.config)


def _form_action(action: Callable[..., tuple[list[Any], str]], count: int) -> Callable[..., list[Any]]:
    """`action` for Gradio: its controls and message, or the form untouched and the error's line."""

    def run(*args: Any) -> list[Any]:
        try:
            controls, message = action(*args)
        except UserError as err:
            return [gr.update()] * count + [f"error: {err}"]
        return [*controls, message]

    return run


def _message_action(action: Callable[..., str]) -> Callable[..., str]:
    def run(*args: Any) -> str:
        try:
            return action(*args)
        except UserError as err:
            return f"error: {err}"

    return run


def config_panel(controls: list[gr.components.Component], prompts_folder: Path) -> list[Any]:
    """The "Configuration file" section above the form's tabs, wired to `controls` (in FIELD_NAMES order);
    imported sample prompts without a folder of their own are written to `prompts_folder`. Returns the events that rewrite the whole form (load, preset, import), for the caller to follow each
    with one check of the form."""
    with gr.Accordion("Configuration file", open=True, elem_id="config-file"):
        with gr.Row():
            path = gr.Textbox(
                label="Config file (TOML)", placeholder="my_lora.toml", scale=4, elem_id="config-path"
            )
            load = gr.Button("Load", elem_id="config-load")
            save = gr.Button("Save", elem_id="config-save")
        with gr.Row():
            preset = gr.Dropdown(
                choices=preset_names(), value=None, label="Preset", scale=4, elem_id="config-preset"
            )
            use_preset = gr.Button("Apply preset", elem_id="config-preset-apply")
        with gr.Accordion("Import a kohya_ss GUI JSON, a kohya TOML or a command line", open=False):
            source = gr.Textbox(
                label="Paste the JSON, TOML or command line, or give a file's path",
                lines=4,
                elem_id="import-source",
            )
            uploaded = gr.File(
                label="…or upload the file",
                file_types=[".json", ".toml", ".txt"],
                type="filepath",
                elem_id="import-file",
            )
            do_import = gr.Button("Import", elem_id="import-run")
            report = gr.Textbox(
                label="Import report: every key, mapped or ignored", lines=10, elem_id="import-report"
            )
        with gr.Row():
            command_button = gr.Button("Show command", elem_id="show-command")
        command = gr.Textbox(label="loracraft train command", lines=3, elem_id="train-command")
        message = gr.Textbox(label="Message", interactive=False, elem_id="config-message")

    count = len(controls)
    loaded = load.click(_form_action(load_config, count), inputs=path, outputs=[*controls, message])
    save.click(
        _message_action(lambda file, *shown: save_config(file, shown)),
        inputs=[path, *controls],
        outputs=message,
    )
    preset_applied = use_preset.click(
        _form_action(apply_preset, count), inputs=preset, outputs=[*controls, message]
    )
    imported = do_import.click(
        _form_action(partial(import_into_form, prompts_folder=prompts_folder), count),
        inputs=[source, uploaded],
        outputs=[*controls, report],
    )
    command_button.click(lambda *shown: show_command(shown), inputs=controls, outputs=command)
    return [loaded, preset_applied, imported]
