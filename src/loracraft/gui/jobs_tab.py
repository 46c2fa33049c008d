"""The Queue tab: the jobs table, the actions on the selected job, and the job's live page.

The logic is in plain functions of the queue (`table_rows`, `run_action`, `move_job`, `delete_job`,
`job_view_values`, ...) that return what the components show; `jobs_tab` only lays out the components and
connects them, so the behaviour is tested without a browser. A gr.Timer refreshes the table and the page
every two seconds: the jobs run in other processes and write their progress to files.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

import gradio as gr

from loracraft.errors import UserError
from loracraft.gui.job_view import JobPage, job_page
from loracraft.jobs.progress import read_progress

if TYPE_CHECKING:
    from loracraft.jobs.progress import JobProgress
    from loracraft.jobs.queue import Job, JobQueue

REFRESH_SECONDS = 2.0
TABLE_COLUMNS = ["id", "name", "state", "progress", "started", "output"]
ACTION_BUTTONS = [
    ("up", "Move up"),
    ("down", "Move down"),
    ("stop", "Stop (saves a state)"),
    ("resume", "Resume"),
    ("cancel", "Cancel"),
    ("duplicate", "Duplicate"),
    ("edit-copy", "Edit a copy in the form"),
    ("delete", "Delete…"),
]
# The loss plots' curves (job_view.loss_table, validation_table), named up front so that a curve that
# appears later in a run (the first epoch average) has its colour and legend entry from the start.
CURVE_COLORS = {"loss": "#4c78a8", "average": "#f58518", "epoch average": "#e45756", "validation": "#54a24b"}
ACTION_DONE = {"cancel": "cancelled", "stop": "asked to stop", "resume": "queued to resume"}


@dataclass(frozen=True)
class JobsTab:
    """What the caller wires further: `edited_copy` receives a job's config TOML when the user asks to
    edit a copy of it, for the form to load (then the form's own add/start queues the edited copy)."""

    edited_copy: gr.State
    selected_job: gr.Dropdown


def jobs_tab(queue: JobQueue, current_config: gr.State | None = None) -> JobsTab:
    """The "Queue" tab, built inside the caller's gr.Blocks. `current_config` holds the form's config as
    TOML text (None while it does not validate); with it, the tab offers to queue it."""
    with gr.Tab("Queue", elem_id="queue-tab"):
        add_button = None
        if current_config is not None:
            add_button = gr.Button(
                "Add the form's config to the queue", variant="primary", elem_id="queue-add"
            )
        # A callable value is read again on each page load: a reopened page shows the queue as it is now.
        table = gr.Dataframe(
            value=lambda: table_rows(queue),
            headers=TABLE_COLUMNS,
            interactive=False,
            label="Jobs",
            elem_id="queue-table",
        )
        # Custom values are allowed because the choices of a page opened earlier lag behind the queue
        # until the next refresh; a job id typed or left over from a deleted job gets its own message.
        selected = gr.Dropdown(
            choices=job_choices(queue),
            value=None,
            allow_custom_value=True,
            label="Selected job (click a row or type its id)",
            elem_id="queue-job",
        )
        with gr.Row():
            buttons = {name: gr.Button(label, elem_id=f"queue-{name}") for name, label in ACTION_BUTTONS}
        remove_outputs = gr.Checkbox(
            value=False,
            label="Delete its output files too (LoRA files and saved states)",
            elem_id="queue-remove-outputs",
        )
        with gr.Row(visible=False) as confirm_row:
            question = gr.Markdown(elem_id="queue-delete-question")
            confirm = gr.Button("Delete", variant="stop", elem_id="queue-delete-confirm")
            keep = gr.Button("Keep it", elem_id="queue-delete-keep")
        message = gr.Textbox(label="Message", interactive=False, elem_id="queue-message")
        view = _job_view_components()
        edited_copy = gr.State(None)
        timer = gr.Timer(REFRESH_SECONDS)

    def on_job(handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler(queue, job_id, *rest)` as an event function of the dropdown's value and `rest`."""
        return lambda value, *rest: handler(queue, selected_id(value), *rest)

    def refresh(value: Any) -> list[Any]:
        return [table_rows(queue), gr.update(choices=job_choices(queue)), *on_job(job_view_values)(value)]

    def then_refresh(event: Any) -> None:
        event.then(refresh, inputs=selected, outputs=[table, selected, *view], show_progress="hidden")

    timer.tick(refresh, inputs=selected, outputs=[table, selected, *view], show_progress="hidden")
    selected.change(on_job(job_view_values), inputs=selected, outputs=view)
    table.select(selected_row_job, outputs=selected)
    if add_button is not None:
        then_refresh(add_button.click(lambda toml: add_config(queue, toml), current_config, message))
    for name, offset in (("up", -1), ("down", 1)):
        then_refresh(buttons[name].click(on_job(partial(_move, offset=offset)), selected, message))
    for action in ("stop", "resume", "cancel"):
        then_refresh(buttons[action].click(on_job(partial(_act, action=action)), selected, message))
    then_refresh(buttons["duplicate"].click(on_job(duplicate_job), selected, message))
    buttons["edit-copy"].click(on_job(edit_copy), selected, [edited_copy, message])
    buttons["delete"].click(on_job(_ask_delete), [selected, remove_outputs], [confirm_row, question, message])
    deleted = confirm.click(on_job(_confirm_delete), [selected, remove_outputs], [confirm_row, message])
    then_refresh(deleted)
    keep.click(lambda: gr.update(visible=False), outputs=confirm_row)
    return JobsTab(edited_copy=edited_copy, selected_job=selected)


def _move(queue: JobQueue, job_id: int | None, *, offset: int) -> str:
    return move_job(queue, job_id, offset)


def _act(queue: JobQueue, job_id: int | None, *, action: str) -> str:
    return run_action(queue, action, job_id)


def _confirm_delete(queue: JobQueue, job_id: int | None, remove_outputs: bool) -> tuple[Any, str]:
    return gr.update(visible=False), delete_job(queue, job_id, remove_outputs)


def selected_id(value: Any) -> int | None:
    """The job id in the dropdown's value: a choice's id, or the number a user typed ("3", "3: name")."""
    if value is None or isinstance(value, int):
        return value
    digits = str(value).strip().split(":", 1)[0].strip()
    return int(digits) if digits.isdigit() else None


def served_folders(queue: JobQueue) -> list[str]:
    """The folders whose files the page shows (the sample images each run copies into its job folder):
    Gradio serves files outside its working folder only from launch's `allowed_paths`."""
    return [str(queue.root / "jobs")]


def _job_view_components() -> list[gr.components.Component]:
    """The job page's components, in JobPage's field order."""
    gr.Markdown("### Selected job")
    headline = gr.Markdown(elem_id="job-headline")
    with gr.Row():
        progress = gr.HTML(label="Progress", show_label=True, container=True, elem_id="job-progress")
        speed = gr.Textbox(label="Speed and memory", interactive=False, elem_id="job-speed")
    with gr.Row():
        loss = gr.LinePlot(
            x="step", y="loss", color="curve", color_map=CURVE_COLORS, label="Loss", elem_id="job-loss"
        )
        # From zero: a constant rate has no range of its own, and the plot collapsed to a line-less strip.
        lr = gr.LinePlot(
            x="step", y="lr", color="parameters", y_lim=[0, None], label="Learning rate", elem_id="job-lr"
        )
    validation = gr.LinePlot(
        x="step",
        y="validation loss",
        color="curve",
        color_map=CURVE_COLORS,
        label="Validation loss",
        elem_id="job-validation",
    )
    samples = gr.Gallery(label="Sample images", columns=4, elem_id="job-samples")
    log = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, interactive=False, elem_id="job-log")
    outputs = gr.Markdown(elem_id="job-outputs")
    return [headline, progress, speed, loss, lr, validation, samples, log, outputs]


def table_rows(queue: JobQueue) -> list[list[Any]]:
    """One row a job in queue order: id, name, state, "step/total", start time, output file."""
    return [
        [
            job.id,
            job.name,
            job.state,
            _progress_cell(job_progress(job)),
            _time_text(job.started_at),
            job.output,
        ]
        for job in queue.jobs()
    ]


def _progress_cell(progress: JobProgress) -> str:
    if progress.total_steps:
        return f"{progress.step}/{progress.total_steps}"
    return str(progress.step) if progress.step else ""


def _time_text(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def job_progress(job: Job) -> JobProgress:
    """A running job's progress read afresh; any other job's files no longer change while its state
    stays, so those reads are kept (the key is the whole Job, state and times included)."""
    if job.state == "running":
        return read_progress(job)
    return _settled_progress(job)


@lru_cache(maxsize=256)
def _settled_progress(job: Job) -> JobProgress:
    return read_progress(job)


def job_choices(queue: JobQueue) -> list[tuple[str, int]]:
    return [(f"{job.id}: {job.name} ({job.state})", job.id) for job in queue.jobs()]


def selected_row_job(event: gr.SelectData) -> int:
    """The id (the first column) of the row the user clicked in the jobs table."""
    return int(event.row_value[0])


def job_view_values(queue: JobQueue, job_id: int | None) -> list[Any]:
    """The job page's component values for `job_id`; empty ones when none is selected."""
    if job_id is None:
        return _empty_page()
    try:
        job = queue.get(job_id)
    except UserError as err:
        return [str(err), *_empty_page()[1:]]
    page = job_page(job, job_progress(job))
    return [getattr(page, field) for field in JobPage.__dataclass_fields__]


def _empty_page() -> list[Any]:
    return ["No job selected.", "", "", None, None, None, [], "", ""]


def add_config(queue: JobQueue, config_toml: str | None) -> str:
    if not config_toml:
        return "The form's config does not validate yet: fix the field its message names, then add it."
    return _one_line(lambda: f"Added job {queue.add(config_toml).id}.")


def run_action(queue: JobQueue, action: str, job_id: int | None) -> str:
    """stop, resume or cancel the job; the message says what happened or why not, in one line."""
    if job_id is None:
        return _NO_SELECTION
    return _one_line(lambda: f"Job {getattr(queue, action)(job_id).id} {ACTION_DONE[action]}.")


def move_job(queue: JobQueue, job_id: int | None, offset: int) -> str:
    if job_id is None:
        return _NO_SELECTION

    def move() -> str:
        queue.move(job_id, _place_in_line(queue, job_id) + offset)
        return f"Job {job_id} moved to place {_place_in_line(queue, job_id)}."

    return _one_line(move)


def _place_in_line(queue: JobQueue, job_id: int) -> int:
    """The job's place in the table, from 1 (the stored positions may have gaps)."""
    ids = [job.id for job in queue.jobs()]
    if job_id not in ids:
        queue.get(job_id)  # its message names the unknown job
    return ids.index(job_id) + 1


def duplicate_job(queue: JobQueue, job_id: int | None) -> str:
    if job_id is None:
        return _NO_SELECTION
    return _one_line(lambda: f"Job {job_id} duplicated as job {queue.duplicate(job_id).id}.")


def edit_copy(queue: JobQueue, job_id: int | None) -> tuple[str | None, str]:
    """The job's config TOML for the form, and the message saying where it went."""
    if job_id is None:
        return None, _NO_SELECTION
    try:
        job = queue.get(job_id)
    except UserError as err:
        return None, str(err)
    if job.tool is not None:
        return None, f"Job {job_id} runs `loracraft {job.tool}`: no config to edit; Duplicate runs it again."
    return job.config_toml, f"Job {job_id}'s config is in the form: edit it, then add it to the queue."


def delete_question(queue: JobQueue, job_id: int, remove_outputs: bool) -> str:
    job = queue.get(job_id)
    outputs = "and its output files" if remove_outputs else f"(its outputs in {job.output_dir} are kept)"
    return f"Delete job {job.id} ({job.name}) {outputs}?"


def _ask_delete(queue: JobQueue, job_id: int | None, remove_outputs: bool) -> tuple[Any, str, str]:
    """Show the confirmation row with its question, or hide it and say why not in the message."""
    if job_id is None:
        return gr.update(visible=False), "", _NO_SELECTION
    try:
        return gr.update(visible=True), delete_question(queue, job_id, remove_outputs), ""
    except UserError as err:
        return gr.update(visible=False), "", str(err)


def delete_job(queue: JobQueue, job_id: int | None, remove_outputs: bool) -> str:
    if job_id is None:
        return _NO_SELECTION

    def delete() -> str:
        queue.delete(job_id, remove_outputs=remove_outputs)
        return (
            f"Job {job_id} deleted{' with its output files' if remove_outputs else '; its outputs are kept'}."
        )

    return _one_line(delete)


_NO_SELECTION = "Select a job first (click its row in the table)."


def _one_line(act: Any) -> str:
    """Run a queue action; a mistake (unknown job, a state that refuses it) is its one-line message."""
    try:
        return act()
    except UserError as err:
        return str(err)
