"""The Utilities tab's actions on a real queue, without a browser: a tool's form queues its command as a
tool job (refused in the tool's one line, nothing queued), an in-page tool shows its report or its error
line, the watched job's headline and console, a tool whose module does not import is left out while the
tab still builds, and the Queue tab shows a tool job by its command."""

from __future__ import annotations

import gradio as gr
import pytest

from data_helpers import write_test_image
from loracraft.gui.job_view import job_page
from loracraft.gui.jobs_tab import edit_copy, table_rows
from loracraft.gui.tool_forms import tool_fields
from loracraft.gui.utilities_tab import (
    available_tools,
    queue_tool,
    run_in_page,
    tool_control,
    utilities_tab,
    watched_job,
)
from loracraft.jobs import tool_jobs
from loracraft.jobs.progress import read_progress
from loracraft.jobs.queue import JobQueue
from loracraft.tools.sample import make_parser as sample_parser


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "queue.sqlite")


@pytest.fixture
def prepare_form():
    [form] = available_tools(["dataset prepare"])
    return form


def values_of(form, **given):
    """The form's starting values with `given` ({flag without dashes: value}) typed in."""
    return [given.get(field.dest, field.initial) for field in form.fields]


def test_run_queues_the_forms_command_or_says_why_not_in_one_line(queue, prepare_form, tmp_path):
    message, job_id = queue_tool(queue, prepare_form, values_of(prepare_form, instance_prompt="sks"))
    assert (message, job_id) == (
        "Not queued: dataset prepare: the following arguments are required: --train_images, --output",
        None,
    )
    assert queue.jobs() == []
    values = values_of(
        prepare_form, instance_prompt="sks cat", train_images="photos", output=str(tmp_path / "t")
    )
    message, job_id = queue_tool(queue, prepare_form, values)
    job = queue.get(job_id)
    argv = ("dataset", "prepare", "--instance_prompt", "sks cat", "--train_images", "photos", "--output")
    assert job.tool_argv == (*argv, str(tmp_path / "t"))
    assert message == (
        f"Queued job {job_id} (dataset prepare t): loracraft dataset prepare --instance_prompt 'sks cat' "
        f"--train_images photos --output {tmp_path / 't'}"
    )


def test_an_in_page_tool_shows_its_report_or_its_error_line(prepare_form, tmp_path):
    missing = tmp_path / "nowhere"
    values = values_of(
        prepare_form, instance_prompt="sks", train_images=str(missing), output=str(tmp_path / "t")
    )
    assert (
        run_in_page(prepare_form, values)
        == f"error: --train_images {missing} does not exist or is not a folder"
    )
    assert not (tmp_path / "t").exists()
    photos = tmp_path / "photos"
    photos.mkdir()
    write_test_image(photos / "p.png", (64, 64), seed=0)
    values = values_of(
        prepare_form, instance_prompt="sks", train_images=str(photos), output=str(tmp_path / "t")
    )
    report = run_in_page(prepare_form, values)
    assert "40_sks" in report and (tmp_path / "t" / "img" / "40_sks" / "p.png").is_file()


def test_the_watched_job_shows_its_headline_and_console(queue, prepare_form, tmp_path):
    assert watched_job(queue, None) == ("No tool job queued from this tab yet.", "", False)
    values = values_of(prepare_form, instance_prompt="sks", train_images="p", output=str(tmp_path / "t"))
    _, job_id = queue_tool(queue, prepare_form, values)
    job = queue.get(job_id)
    job.console_log.write_text("==== started\nbuilding\r\rcopied 3 images\n", encoding="utf-8")
    assert watched_job(queue, job_id) == (
        f"Job {job_id} · dataset prepare t · queued",
        "==== started\ncopied 3 images",
        True,
    )
    queue.delete(job_id)
    headline, console, running = watched_job(queue, job_id)
    assert headline.startswith(f"no job {job_id} in the queue") and (console, running) == ("", False)


def test_a_number_without_a_default_is_a_text_box_that_may_stay_empty(prepare_form):
    with gr.Blocks():
        fields = {field.name: field for field in tool_fields(sample_parser())}
        clip_skip = tool_control(fields["--clip_skip"], "clip-skip")
        repeats = tool_control(next(f for f in prepare_form.fields if f.name == "--repeats"), "repeats")
    assert isinstance(clip_skip, gr.Textbox) and clip_skip.value == ""
    assert isinstance(repeats, gr.Number) and repeats.value == 40


def test_a_tool_that_does_not_import_is_left_out_and_the_tab_builds(queue, monkeypatch):
    monkeypatch.setitem(tool_jobs.TOOLS, "missing", "no_such_tool_module")
    with gr.Blocks() as page:
        shown = utilities_tab(queue, commands=("missing", "sample", "dataset prepare"))
    assert [form.command for form in shown] == ["sample", "dataset prepare"]
    ids = {block.elem_id for block in page.blocks.values()}
    assert {"utility-sample", "utility-sample-lora", "utility-dataset-prepare-run"} <= ids
    assert not any(str(elem_id).startswith("utility-missing") for elem_id in ids)


def test_the_queue_tab_shows_a_tool_job_by_its_command_and_offers_no_config_to_edit(
    queue, prepare_form, tmp_path
):
    values = values_of(prepare_form, instance_prompt="sks", train_images="p", output=str(tmp_path / "t"))
    _, job_id = queue_tool(queue, prepare_form, values)
    job = queue.get(job_id)
    page = job_page(job, read_progress(job))
    command = f"loracraft dataset prepare --instance_prompt sks --train_images p --output {tmp_path / 't'}"
    assert page.progress == f"<span class='job-progress-line'>{command}</span>"
    assert table_rows(queue)[0][5] == str(tmp_path / "t")
    assert edit_copy(queue, job_id) == (
        None,
        f"Job {job_id} runs `loracraft dataset prepare`: no config to edit; Duplicate runs it again.",
    )
