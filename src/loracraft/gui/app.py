"""The web UI's page: the training form generated from TrainConfig, the dataset tools, the queue and the
LoRA tools (utilities_tab.py).

The form has one control per TrainConfig field on kohya_ss-style tabs (tabs.py). Every edit re-validates
the whole form with the CLI's model and shows the CLI's one-line message at the top and on the field it
names; Start queues the config only while it validates. The same pass shows and hides the fields that
matter for the current options and model family, and applies the search box.

The pass follows the user's own edits (the controls' `input` events), not every change of value: a
preset, a loaded or imported config rewrites hundreds of controls at once, and one pass after the whole
rewrite replaces the hundreds that each control's `change` would queue (which froze the page for a
minute).

The page never trains: Start adds a job to the queue, which a worker runs as `loracraft train` in a
subprocess (server.py starts the worker).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import gradio as gr

from loracraft.errors import UserError
from loracraft.gui.captioning_tab import captioning_tab
from loracraft.gui.config_tab import config_panel
from loracraft.gui.controls import make_control
from loracraft.gui.dataset_tab import check_section, dataset_tab
from loracraft.gui.form_fields import config_value, form_fields
from loracraft.gui.form_state import FIELD_NAMES, controls_of, initial_controls, validate
from loracraft.gui.jobs_tab import jobs_tab
from loracraft.gui.model_family import model_family
from loracraft.gui.style import blocks_style
from loracraft.gui.tabs import CONTROLLERS, FOLDERS, MODEL, TABS, hidden_fields, matches_search, tab_fields
from loracraft.gui.utilities_tab import utilities_tab

if TYPE_CHECKING:
    from loracraft.jobs.queue import JobQueue

MODEL_FIELD = "pretrained_model_name_or_path"
OPTIMIZER_ARGS = "optimizer_args"
VALID = "✅ The config validates: Start queues it."
# The data folder's place for the sample prompts of configs imported by upload or pasted.
IMPORTED_PROMPTS = "imported-prompts"


@dataclass(frozen=True)
class FormView:
    """What the page shows beside the values: hidden fields, the field marked invalid, and the optimizer
    whose arguments the optimizer_args field describes."""

    hidden: frozenset[str]
    flagged: str | None
    optimizer: str | None = None


@lru_cache(maxsize=64)
def optimizer_args_hint(optimizer: str) -> str:
    from loracraft.training.optimizer.arguments import argument_hint

    return argument_hint(optimizer)


def field_info(name: str, optimizer: str | None) -> str:
    """A field's tooltip: its description; optimizer_args adds what the chosen optimizer takes."""
    description = form_fields()[name].description
    if name == OPTIMIZER_ARGS and optimizer:
        return f"{description} {optimizer_args_hint(optimizer)}"
    return description


@lru_cache(maxsize=16)
def _cached_family(model: str, modified: float | None) -> tuple[str | None, str]:
    return model_family(model)


def family_of(model: str | None) -> tuple[str | None, str]:
    """The model's family and a line about it; read again only when the file changes."""
    model = (model or "").strip()
    modified = os.path.getmtime(model) if model and os.path.exists(model) else None
    return _cached_family(model, modified)


def controller_values(controls: Sequence[Any]) -> dict[str, Any]:
    """The values the relevance rules look at, read from the controls as the config would read them
    (a value that cannot be read counts as given)."""
    fields = form_fields()
    shown = dict(zip(FIELD_NAMES, controls, strict=True))
    values = {}
    for name in CONTROLLERS:
        try:
            values[name] = config_value(fields[name], shown[name])
        except UserError:
            values[name] = shown[name]
    return values


def hidden_now(controls: Sequence[Any], query: str, family: str | None) -> frozenset[str]:
    """The fields hidden for these values: with a search, every field that does not match (a match shows
    even where it does not matter now, so search finds everything); else the ones not relevant."""
    if query.strip():
        return frozenset(name for name in FIELD_NAMES if not matches_search(name, query))
    return frozenset(hidden_fields(controller_values(controls), family))


def _field_update(name: str, view: FormView, before: FormView, message: str) -> Any:
    changes: dict[str, Any] = {}
    if (name in view.hidden) != (name in before.hidden):
        changes["visible"] = name not in view.hidden
    if name == view.flagged:
        changes.update(info=f"⚠ {message}", elem_classes=["invalid-field"])
    elif name == before.flagged:
        changes.update(info=field_info(name, view.optimizer), elem_classes=[])
    elif name == OPTIMIZER_ARGS and view.optimizer != before.optimizer:
        changes.update(info=field_info(name, view.optimizer))
    return gr.update(**changes)


def refresh_form(controls: Sequence[Any], query: str, before: FormView) -> list[Any]:
    """After any change: [validation message, Start button, config TOML (None: invalid), family line,
    the new FormView, then one update per control (visibility, the invalid mark)]."""
    family, family_line = family_of(controls[FIELD_NAMES.index(MODEL_FIELD)])
    validation = validate(controls)
    # While the form does not validate, the hint stays with the last optimizer it named.
    optimizer = validation.config.optimizer_name if validation.config is not None else before.optimizer
    view = FormView(hidden_now(controls, query, family), validation.field, optimizer)
    message = f"❌ {validation.message}" if validation.config is None else VALID
    return [
        message,
        gr.update(interactive=validation.config is not None),
        validation.toml,
        family_line,
        view,
        *(_field_update(name, view, before, validation.message) for name in FIELD_NAMES),
    ]


def start_job(queue: JobQueue, name: str, controls: Sequence[Any]) -> str:
    """Queue the form's config as a job; refused with the CLI's message while it does not validate."""
    validation = validate(controls)
    if validation.toml is None:
        return f"Not started: {validation.message}"
    try:
        job = queue.add(validation.toml, name=name.strip() or None)
    except UserError as err:
        return f"Not started: {err}"
    return f"Queued job {job.id} ({job.name}), position {job.position}: see the Queue tab."


def controls_of_toml(text: str | None) -> list[Any]:
    """The controls of a job's config TOML (the queue's "edit a copy"); unchanged for no text."""
    if not text:
        return [gr.update()] * len(FIELD_NAMES)
    from loracraft.config.files import tomllib

    return controls_of(tomllib.loads(text))


def build_app(queue: JobQueue) -> gr.Blocks:
    """The whole page on `queue`: Train (the form), Dataset, the Queue with its job pages, Utilities,
    Captioning."""
    start_values = initial_controls()
    start_validation = validate(start_values)
    start_optimizer = start_validation.config.optimizer_name if start_validation.config else None
    start_view = FormView(hidden_now(start_values, "", None), None, start_optimizer)
    with gr.Blocks(title="loracraft", analytics_enabled=False, **blocks_style()) as app:
        current_config = gr.State(start_validation.toml)
        view_state = gr.State(start_view)
        gr.Markdown("# loracraft: LoRA training")
        with gr.Tabs(elem_id="main-tabs") as main_tabs:
            with gr.Tab("Train", id="train", elem_id="train-tab"):
                controls = [
                    make_control(
                        form_fields()[name],
                        visible=name not in start_view.hidden,
                        info=field_info(name, start_optimizer),
                        render=False,
                    )
                    for name in FIELD_NAMES
                ]
                by_name = dict(zip(FIELD_NAMES, controls, strict=True))
                form_rewrites = config_panel(controls, queue.path.parent / IMPORTED_PROMPTS)
                with gr.Row():
                    search = gr.Textbox(
                        label="Search settings", placeholder="name or words of its description", scale=3,
                        elem_id="field-search",
                    )  # fmt: skip
                    job_name = gr.Textbox(
                        label="Job name (empty: the output name)", scale=2, elem_id="job-name"
                    )
                    start = gr.Button("Start", variant="primary", scale=1, elem_id="start",
                                      interactive=start_validation.config is not None)  # fmt: skip
                validation_message = gr.Markdown(VALID, elem_id="validation-message")
                start_message = gr.Textbox(label="Start", interactive=False, elem_id="start-message")
                with gr.Tabs(elem_id="config-tabs"):
                    for tab in TABS:
                        with gr.Tab(tab, elem_id=f"tab-{tab.split()[0].lower()}"):
                            if tab == MODEL:
                                family_line = gr.Markdown(
                                    family_of(start_values[FIELD_NAMES.index(MODEL_FIELD)])[1],
                                    elem_id="model-family",
                                )
                            for name in tab_fields()[tab]:
                                by_name[name].render()
                            if tab == FOLDERS:
                                with gr.Accordion("Check this dataset", open=False):
                                    check_section(controls, "folders")
            form_rewrites.append(dataset_tab(controls))
            jobs = jobs_tab(queue, current_config)
            utilities_tab(queue, jobs.selected_job)
            captioning_tab(queue, jobs.selected_job)

        check_form = {
            "fn": lambda query, before, *shown: refresh_form(shown, query, before),
            "inputs": [search, view_state, *controls],
            "outputs": [validation_message, start, current_config, family_line, view_state, *controls],
            "show_progress": "hidden",
            # One queue for every check, in the order asked: a check of older values never lands last.
            "concurrency_id": "form-check",
        }
        gr.on(
            triggers=[control.input for control in controls] + [search.change],
            trigger_mode="always_last",
            **check_form,
        )
        for rewrite in form_rewrites:
            rewrite.then(**check_form)
        start.click(
            lambda name, *shown: start_job(queue, name, shown),
            inputs=[job_name, *controls],
            outputs=start_message,
        )
        copied = jobs.edited_copy.change(controls_of_toml, inputs=jobs.edited_copy, outputs=controls)
        copied.then(**check_form).then(lambda: gr.Tabs(selected="train"), outputs=main_tabs)
    return app
