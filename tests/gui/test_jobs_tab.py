"""The Queue tab's handlers as plain functions on a real queue file, and the tab built in a Blocks."""

import json

import gradio as gr
import pytest

from loracraft.gui import jobs_tab as tab
from loracraft.jobs.queue import JobQueue


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "queue.sqlite")


def add(queue, tmp_path, name):
    return queue.add(f'output_dir = "{tmp_path / "out"}"\noutput_name = "{name}"\n', name=name)


def names(queue):
    return [job.name for job in queue.jobs()]


def test_table_rows_show_each_job_with_its_progress(queue, tmp_path):
    first, second = add(queue, tmp_path, "a"), add(queue, tmp_path, "b")
    second.progress_file.write_text(
        json.dumps({"event": "plan", "total_steps": 8, "epochs": 2, "steps_per_epoch": 4, "initial_step": 0})
        + "\n"
        + json.dumps({"event": "scalars", "step": 3, "values": {"loss/current": 0.2}})
        + "\n",
        encoding="utf-8",
    )
    assert tab.table_rows(queue) == [
        [first.id, "a", "queued", "", "", str(tmp_path / "out" / "a")],
        [second.id, "b", "queued", "3/8", "", str(tmp_path / "out" / "b")],
    ]
    assert tab.job_choices(queue) == [
        (f"{first.id}: a (queued)", first.id),
        (f"{second.id}: b (queued)", second.id),
    ]


def test_move_up_and_down(queue, tmp_path):
    jobs = [add(queue, tmp_path, name) for name in "abc"]
    assert tab.move_job(queue, jobs[2].id, -1) == f"Job {jobs[2].id} moved to place 2."
    assert names(queue) == ["a", "c", "b"]
    assert tab.move_job(queue, jobs[0].id, 1) == f"Job {jobs[0].id} moved to place 2."
    assert names(queue) == ["c", "a", "b"]
    assert tab.move_job(queue, jobs[2].id, -1) == f"Job {jobs[2].id} moved to place 1."
    assert names(queue) == ["c", "a", "b"]
    queue.cancel(jobs[1].id)
    assert tab.move_job(queue, jobs[1].id, -1) == f"job {jobs[1].id} is cancelled: only a queued job can move"
    assert tab.move_job(queue, None, 1) == "Select a job first (click its row in the table)."


def test_actions_say_what_happened_or_why_not(queue, tmp_path):
    job = add(queue, tmp_path, "a")
    assert tab.run_action(queue, "stop", job.id) == (
        f"job {job.id} is queued, not running: cancel it with `loracraft queue cancel {job.id}`"
    )
    assert tab.run_action(queue, "cancel", job.id) == f"Job {job.id} cancelled."
    assert queue.get(job.id).state == "cancelled"
    assert tab.run_action(queue, "resume", job.id) == (
        f"job {job.id} is cancelled: only a stopped, interrupted or failed job resumes"
    )
    assert tab.run_action(queue, "cancel", 99).startswith("no job 99 in the queue")
    assert tab.run_action(queue, "stop", None) == "Select a job first (click its row in the table)."


def test_duplicate_and_edit_a_copy(queue, tmp_path):
    job = add(queue, tmp_path, "a")
    message = tab.duplicate_job(queue, job.id)
    copy = queue.jobs()[-1]
    assert message == f"Job {job.id} duplicated as job {copy.id}."
    assert copy.output_name == "a-2"

    config_toml, message = tab.edit_copy(queue, job.id)
    assert config_toml == job.config_toml
    assert message == f"Job {job.id}'s config is in the form: edit it, then add it to the queue."
    assert tab.edit_copy(queue, 99)[0] is None


def test_delete_asks_then_keeps_or_removes_outputs(queue, tmp_path):
    kept, removed = add(queue, tmp_path, "a"), add(queue, tmp_path, "b")
    (tmp_path / "out").mkdir()
    for name in ("a", "b"):
        (tmp_path / "out" / f"{name}.safetensors").write_bytes(b"lora")

    assert tab.delete_question(queue, kept.id, False) == (
        f"Delete job {kept.id} (a) (its outputs in {tmp_path / 'out'} are kept)?"
    )
    assert tab.delete_job(queue, kept.id, False) == f"Job {kept.id} deleted; its outputs are kept."
    assert (tmp_path / "out" / "a.safetensors").exists()

    assert (
        tab.delete_question(queue, removed.id, True) == f"Delete job {removed.id} (b) and its output files?"
    )
    assert tab.delete_job(queue, removed.id, True) == f"Job {removed.id} deleted with its output files."
    assert not (tmp_path / "out" / "b.safetensors").exists()
    assert queue.jobs() == []
    assert tab.delete_job(queue, removed.id, False).startswith(f"no job {removed.id} in the queue")


def test_add_the_forms_config(queue, tmp_path):
    assert tab.add_config(queue, None) == (
        "The form's config does not validate yet: fix the field its message names, then add it."
    )
    assert tab.add_config(queue, 'network_dim = "many"\n').startswith("job config: --network_dim:")
    message = tab.add_config(queue, f'output_dir = "{tmp_path / "out"}"\n')
    assert message == f"Added job {queue.jobs()[0].id}."


def test_job_view_values(queue, tmp_path):
    job = add(queue, tmp_path, "a")
    values = tab.job_view_values(queue, job.id)
    assert values[0] == f"Job {job.id} · a · queued"
    assert values[1] == "<span class='job-progress-line'>step 0</span>"
    assert len(values) == 9
    assert tab.job_view_values(queue, None)[0] == "No job selected."
    assert tab.job_view_values(queue, 99)[0].startswith("no job 99 in the queue")


def test_the_tab_builds_inside_blocks(queue, tmp_path):
    add(queue, tmp_path, "a")
    with gr.Blocks(analytics_enabled=False) as demo:
        form_config = gr.State(None)
        handles = tab.jobs_tab(queue, form_config)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    expected = {
        "queue-table",
        "queue-job",
        "queue-add",
        "queue-up",
        "queue-down",
        "queue-stop",
        "queue-resume",
    }
    expected |= {"queue-cancel", "queue-duplicate", "queue-edit-copy", "queue-delete", "queue-delete-confirm"}
    expected |= {
        "job-progress",
        "job-loss",
        "job-lr",
        "job-validation",
        "job-samples",
        "job-log",
        "job-outputs",
    }
    assert expected <= ids
    assert isinstance(handles.edited_copy, gr.State)


@pytest.mark.parametrize(
    ("value", "job_id"), [(None, None), (3, 3), ("3", 3), (" 12: toy (queued)", 12), ("toy", None)]
)
def test_selected_id_reads_a_choice_or_a_typed_id(value, job_id):
    assert tab.selected_id(value) == job_id


def test_served_folders_hold_the_sample_images(queue, tmp_path):
    job = add(queue, tmp_path, "a")
    # Where the run's ProgressFileTracker copies its samples (training/trackers.py).
    sample = job.progress_file.with_name(f"{job.progress_file.stem}-images") / "step00000001-0.png"
    (folder,) = tab.served_folders(queue)
    assert sample.is_relative_to(folder)
