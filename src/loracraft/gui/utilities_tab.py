"""The Utilities tab: the LoRA tools (inspect, resize, merge, extract, grid), one section each, with forms
generated from each tool's own parser (tool_forms.py).

"Run" queues the command as a tool job, which the queue's worker runs as `loracraft TOOL ...` in a
subprocess like a training run: the section says which job it is, the panel under the sections follows
its console, and the Queue tab has it selected. Inspect is read-only and takes a moment, so it runs in
the page's process and shows its report where it ran (its one-line error when the input is wrong).

A tool whose module does not import in this installation is left out, so the page always builds.
The logic is in plain functions (`available_tools`, `queue_tool`, `run_in_page`, `watched_job`), tested
without a browser; `utilities_tab` lays out and connects the components.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from loracraft.errors import UserError
from loracraft.gui.form_fields import CHECKBOX, DROPDOWN, INTEGER, LIST, NOT_SET, NUMBER
from loracraft.gui.job_view import headline
from loracraft.gui.tool_forms import ToolField, tool_argv, tool_fields
from loracraft.jobs.progress import log_tail
from loracraft.jobs.queue import ACTIVE
from loracraft.jobs.tool_jobs import tool_module

if TYPE_CHECKING:
    from loracraft.jobs.queue import JobQueue

# The tools the tab offers, in its order (each a `loracraft` command of jobs/tool_jobs.TOOLS).
UTILITY_TOOLS = ("inspect", "resize", "merge", "extract", "grid")
# Read-only and instant: run in the page's process, the report shown at once.
IN_PAGE_TOOLS = ("inspect",)
REFRESH_SECONDS = 2.0
CONSOLE_LINES = 40
NOT_GIVEN = "(not given)"
_NUMBER_HINTS = {INTEGER: "a whole number; empty: not given", NUMBER: "a number; empty: not given"}
_LIST_HINTS = {str: "separated by spaces; quote an item that holds one", int: "numbers separated by spaces",
               float: "numbers separated by spaces"}  # fmt: skip


@dataclass(frozen=True)
class ToolForm:
    """A tool's section: its command, what it does (its parser's description) and its fields."""

    command: str
    description: str
    fields: tuple[ToolField, ...]

    @property
    def key(self) -> str:
        """The command in the sections' elem_ids: `utility-resize-run`."""
        return self.command.replace(" ", "-")


def available_tools(commands: Sequence[str] = UTILITY_TOOLS) -> list[ToolForm]:
    """The forms of the tools among `commands` whose modules import here."""
    forms = []
    for command in commands:
        try:
            parser = tool_module(command).make_parser()
        except UserError:
            continue
        forms.append(ToolForm(command, parser.description or "", tuple(tool_fields(parser))))
    return forms


def command_of(form: ToolForm, values: Sequence[Any]) -> list[str]:
    """The whole `loracraft` argv of the form's values: the command words, then its flags."""
    return [*form.command.split(), *tool_argv(form.fields, values)]


def queue_tool(queue: JobQueue, form: ToolForm, values: Sequence[Any]) -> tuple[str, int | None]:
    """Queue the form's command as a tool job: (the message, the job's id; None when refused in one line)."""
    try:
        argv = command_of(form, values)
        job = queue.add_tool(argv)
    except UserError as err:
        return f"Not queued: {err}", None
    return f"Queued job {job.id} ({job.name}): loracraft {shlex.join(argv)}", job.id


def run_in_page(form: ToolForm, values: Sequence[Any]) -> str:
    """Run the tool here, its printed lines collected as its report; a mistake is its `error:` line."""
    lines: list[str] = []
    try:
        flags = tool_argv(form.fields, values)
        tool_module(form.command).main(flags, echo=lines.append)
    except UserError as err:
        return f"error: {err}"
    return "\n".join(lines)


def watched_job(queue: JobQueue, job_id: int | None) -> tuple[str, str, bool]:
    """(headline, console tail, whether it still runs) of the tool job queued from this tab."""
    if job_id is None:
        return "No tool job queued from this tab yet.", "", False
    try:
        job = queue.get(job_id)
    except UserError as err:
        return str(err), "", False
    return headline(job), "\n".join(log_tail(job.console_log, CONSOLE_LINES)), job.state in ACTIVE


def tool_control(field: ToolField, elem_id: str) -> gr.components.Component:
    """The Gradio control of one field, showing its default, with its help as the tooltip."""
    common = {"label": field.label, "info": field.info, "elem_id": elem_id}
    if field.kind == CHECKBOX:
        return gr.Checkbox(value=field.initial, **common)
    if field.kind == DROPDOWN:
        unset = [(NOT_GIVEN, NOT_SET)] if field.initial == NOT_SET else []
        choices = unset + [(str(choice), str(choice)) for choice in field.choices]
        return gr.Dropdown(choices=choices, value=field.initial, **common)
    if field.kind in (INTEGER, NUMBER) and field.initial is None:
        # Gradio's Number shows None as 0 and sends 0 back: a flag not given would be given as 0.
        return gr.Textbox(value="", placeholder=_NUMBER_HINTS[field.kind], **common)
    if field.kind in (INTEGER, NUMBER):
        return gr.Number(value=field.initial, precision=0 if field.kind == INTEGER else None, **common)
    if field.kind == LIST:
        return gr.Textbox(value=field.initial, placeholder=_LIST_HINTS[field.item_type], **common)
    hint = f"default: {field.default_hint}" if field.default_hint else ""
    return gr.Textbox(value=field.initial, placeholder=hint, **common)


def utilities_tab(
    queue: JobQueue, queue_selection: gr.Dropdown | None = None, commands: Sequence[str] = UTILITY_TOOLS
) -> list[ToolForm]:
    """The "Utilities" tab with the `commands` that import here, built inside the caller's gr.Blocks; a
    queued job is also selected in `queue_selection` (the Queue tab's job dropdown). Returns the tools
    it shows."""
    forms = available_tools(commands)
    with gr.Tab("Utilities", elem_id="utilities-tab"):
        gr.Markdown(
            "The LoRA tools, each with the flags of `loracraft TOOL` (kohya's names). **Run** queues the "
            "command as a job (its console shows below and in the Queue tab); Inspect runs at once. "
            "Relative paths are read from the folder the UI was started in."
        )
        tool_sections(queue, forms, queue_selection)
    return forms


def tool_sections(
    queue: JobQueue,
    forms: Sequence[ToolForm],
    queue_selection: gr.Dropdown | None = None,
    prefix: str = "utility",
) -> None:
    """An accordion per tool of `forms` and, under them, the panel following the job last queued from
    them, built where the caller is; `prefix` starts the elem_ids (`utility-resize-run`), so that
    another tab (Captioning) can show its own tools the same way."""
    sections = [_section(form, prefix) for form in forms]
    gr.Markdown("### Tool job queued from this tab")
    watched = gr.State(None)
    job_headline = gr.Markdown(watched_job(queue, None)[0], elem_id=f"{prefix}-job-headline")
    console = gr.Textbox(
        label="Console", lines=12, max_lines=12, interactive=False, elem_id=f"{prefix}-job-console"
    )
    timer = gr.Timer(REFRESH_SECONDS, active=False)

    def refresh(job_id: int | None) -> list[Any]:
        title, tail, running = watched_job(queue, job_id)
        return [title, tail, gr.Timer(active=running)]

    timer.tick(refresh, inputs=watched, outputs=[job_headline, console, timer], show_progress="hidden")
    for form, (controls, run, message) in zip(forms, sections, strict=True):
        if form.command in IN_PAGE_TOOLS:
            run.click(lambda *values, form=form: run_in_page(form, values), inputs=controls, outputs=message)
            continue
        outputs = [message, watched] + ([queue_selection] if queue_selection is not None else [])
        queued = run.click(lambda *values, form=form: _queue_event(queue, form, values, queue_selection),
                           inputs=controls, outputs=outputs)  # fmt: skip
        queued.then(refresh, inputs=watched, outputs=[job_headline, console, timer], show_progress="hidden")


def _queue_event(queue: JobQueue, form: ToolForm, values: Sequence[Any], selection: Any) -> list[Any]:
    message, job_id = queue_tool(queue, form, values)
    if job_id is None:
        return [message, gr.update()] + ([gr.update()] if selection is not None else [])
    return [message, job_id] + ([job_id] if selection is not None else [])


def _section(form: ToolForm, prefix: str) -> tuple[list[gr.components.Component], gr.Button, gr.Textbox]:
    """A tool's accordion: its description, its controls, Run and where the result shows."""
    in_page = form.command in IN_PAGE_TOOLS
    key = f"{prefix}-{form.key}"
    with gr.Accordion(f"loracraft {form.command}", open=False, elem_id=key):
        gr.Markdown(form.description)
        controls = [tool_control(field, f"{key}-{field.dest}") for field in form.fields]
        run = gr.Button("Run" if in_page else "Run (queue a job)", variant="primary", elem_id=f"{key}-run")
        label = "Report" if in_page else "Queued"
        message = gr.Textbox(
            label=label, lines=20 if in_page else 1, interactive=False, elem_id=f"{key}-result"
        )
    return controls, run, message
