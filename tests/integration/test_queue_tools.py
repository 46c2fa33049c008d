"""Tool jobs in the queue: a `loracraft dataset` command runs through the worker as a subprocess (done,
with its console; failed, with the tool's own `error:` line as the reason), a running tool job stops, a
tool job is never resumed (duplicated instead), `loracraft queue add-tool` refuses a bad command in one
line with nothing queued, and a queue made before tool jobs existed gains their column and keeps its jobs."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time

import pytest

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.cli import main
from loracraft.errors import UserError
from loracraft.jobs import worker as worker_module
from loracraft.jobs.progress import log_tail, read_progress
from loracraft.jobs.queue import LOST_TOOL, JobQueue, output_files
from loracraft.jobs.tool_jobs import TOOL_COMMANDS
from loracraft.jobs.worker import Worker, run_queue

# The queue's table as the release before tool jobs created it (its DDL, kept here as the old data).
SCHEMA_BEFORE_TOOL_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER NOT NULL UNIQUE,
    config_toml TEXT NOT NULL,
    workdir TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    output_name TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    exit_reason TEXT,
    exit_code INTEGER,
    pid INTEGER,
    pid_started REAL,
    worker_pid INTEGER,
    worker_started REAL,
    resume_next INTEGER NOT NULL DEFAULT 0
)
"""


@pytest.fixture
def queue(tmp_path, monkeypatch):
    # The tool subprocesses inherit it: one thread is plenty for a dataset command, on shared cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return JobQueue(tmp_path / "queue.sqlite")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(2):
        write_test_image(folder / f"p{index}.png", (64, 64), seed=index)
    return folder


def test_tool_jobs_run_through_the_worker_done_with_their_console_or_failed_with_the_error_line(
    queue, tmp_path, photos
):
    dataset = make_kohya_dataset(tmp_path / "data", reg_count=0)
    check = queue.add_tool(["dataset", "check", str(dataset.train_dir), "--resolution", "64"])
    prepare = queue.add_tool(
        ["dataset", "prepare", "--instance_prompt", "sks", "--train_images", "photos", "--output", "tree"],
        workdir=tmp_path,
    )
    missing = tmp_path / "nowhere"
    broken = queue.add_tool(
        ["dataset", "prepare", "--instance_prompt", "sks", "--train_images", str(missing), "--output", "t2"],
        name="bad folder",
        workdir=tmp_path,
    )
    assert [job.name for job in queue.jobs()] == ["dataset check", "dataset prepare tree", "bad folder"]
    assert [job.output for job in queue.jobs()] == ["", str(tmp_path / "tree"), str(tmp_path / "t2")]
    assert queue.get(prepare.id).tool == "dataset prepare" and queue.get(check.id).config_toml == ""

    assert run_queue(queue, echo=lambda _: None) == 1  # one failed
    done_check, done_prepare, failed = (queue.get(job.id) for job in (check, prepare, broken))
    assert (done_check.state, done_check.exit_reason) == ("done", None)
    console = log_tail(done_check.console_log, lines=400)
    assert console[0].endswith(f"-m loracraft dataset check {dataset.train_dir} --resolution 64")
    assert any("image" in line for line in console[1:])  # the doctor's report, as the tool printed it
    # The relative paths were read from the job's folder of work, where the worker ran the command.
    assert done_prepare.state == "done" and (tmp_path / "tree" / "img" / "40_sks").is_dir()
    assert output_files(done_prepare) == []  # a folder the tool wrote is never a job's file to delete
    assert (failed.state, failed.exit_reason) == (
        "failed",
        f"--train_images {missing} does not exist or is not a folder",
    )
    assert not (tmp_path / "t2").exists()
    page = read_progress(failed)
    assert page.step == 0 and page.files == [] and page.log_tail[-1].startswith("error: --train_images")


def sleeping_tool(job):
    """A stand-in for a long tool command: it sleeps until it is stopped."""
    return [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"]


@pytest.mark.skipif(sys.platform == "win32", reason="stops runs with POSIX signals")
def test_a_running_tool_job_stops_is_not_resumed_and_is_duplicated_to_run_again(
    queue, tmp_path, photos, monkeypatch
):
    monkeypatch.setattr(worker_module, "tool_command", sleeping_tool)
    argv = ["dataset", "prepare", "--instance_prompt", "sks", "--train_images", str(photos), "--output", "t"]
    job = queue.add_tool(argv, workdir=tmp_path)
    worker = Worker(queue, poll_s=0.05, echo=lambda _: None)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while "working" not in log_tail(queue.get(job.id).console_log):
            assert time.monotonic() < deadline, "the tool job never started"
            time.sleep(0.05)
        queue.stop(job.id)
        while (stopped := queue.get(job.id)).exit_reason == "stop requested":
            assert time.monotonic() < deadline + 60, "the stopped tool job never ended"
            time.sleep(0.05)
    finally:
        worker.stop()
    assert (stopped.state, stopped.exit_reason) == ("stopped", "stopped by SIGTERM before it finished")
    with pytest.raises(UserError) as refused:
        queue.resume(job.id)
    assert str(refused.value) == (
        f"job {job.id} runs `loracraft dataset prepare`, which saves no state to resume from; "
        "duplicate it to run it again"
    )
    with pytest.raises(UserError, match=rf"^job {job.id} is stopped, not queued: delete it with "):
        queue.cancel(job.id)
    again = queue.duplicate(job.id)
    assert (again.state, again.tool_argv, again.name) == ("queued", tuple(argv), job.name)


def test_a_lost_tool_job_is_settled_as_interrupted_to_run_again(queue, tmp_path, photos):
    job = queue.add_tool(
        ["dataset", "prepare", "--instance_prompt", "sks", "--train_images", str(photos), "--output", "t"]
    )
    claim = queue.claim_next()
    assert claim.job.id == job.id
    # The claiming worker is this process: pretend it is gone by giving it another start time.
    with sqlite3.connect(queue.path) as db:
        db.execute("UPDATE jobs SET worker_started = 0 WHERE id = ?", (job.id,))
    lost = JobQueue(queue.path).get(job.id)  # a queue that opens settles the jobs lost
    assert (lost.state, lost.exit_reason) == ("interrupted", LOST_TOOL)


def queue_cli(queue_file, *argv):
    return main(["queue", "--queue", str(queue_file), *argv])


def test_add_tool_on_the_command_line_and_its_one_line_refusals(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    queue_file = tmp_path / "q.sqlite"
    argv = ["dataset", "prepare", "--instance_prompt", "sks", "--train_images", "photos", "--output", "out"]
    assert queue_cli(queue_file, "add-tool", "--name", "tree", *argv) == 0
    assert capsys.readouterr().out == f"job 1 (tree) queued at position 1: loracraft {' '.join(argv)}\n"
    refusals = {
        ("add-tool", "resiz", "--model", "a"): "'resiz' is not a tool a job can run (did you mean resize?); "
        f"use one of {', '.join(TOOL_COMMANDS)}",
        ("add-tool", "dataset", "--output", "x"): "loracraft dataset needs an action first: prepare or check",
        (
            "add-tool",
            "dataset",
            "prepare",
            "--help",
        ): "-h only prints the flags of loracraft dataset prepare, "
        "which needs no job: run `loracraft dataset prepare -h`",
        ("add-tool", "dataset", "prepare", "--output", "x"): "dataset prepare: the following arguments are "
        "required: --instance_prompt, --train_images",
        ("add-tool", "dataset", "prepare", *argv[2:], "--repeats", "many"): "dataset prepare: argument "
        "--repeats: invalid int value: 'many'",
        # The same output as a queued job: the second would overwrite what the first writes.
        ("add-tool", *argv): f"job 1 (queued) already writes out in {tmp_path}: choose another output "
        "path, or queue this one when that job is done",
        ("resume", "1"): "job 1 runs `loracraft dataset prepare`, which saves no state to resume from; "
        "duplicate it to run it again",
    }
    for command, message in refusals.items():
        assert queue_cli(queue_file, *command) == 2, command
        assert capsys.readouterr().err == f"error: {message}\n"
    assert [job.id for job in JobQueue(queue_file).jobs()] == [1]
    assert queue_cli(queue_file, "list") == 0
    assert capsys.readouterr().out.splitlines()[1].split() == [
        "1",
        "queued",
        "tree",
        "-",
        str(tmp_path / "out"),
    ]


def test_a_queue_made_before_tool_jobs_gains_their_column_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "queue.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(SCHEMA_BEFORE_TOOL_JOBS)
        db.execute(
            "INSERT INTO jobs (name, state, position, config_toml, workdir, output_dir, output_name, created_at, "
            "finished_at, exit_reason) VALUES ('old', 'done', 1, 'output_name = \"old\"', ?, ?, 'old', 1.0, "
            "2.0, NULL)",
            (str(tmp_path), str(tmp_path / "out")),
        )
    queue = JobQueue(path)
    [old] = queue.jobs()
    assert (old.name, old.state, old.tool_argv, old.tool, old.output) == (
        "old", "done", None, None, str(tmp_path / "out" / "old")
    )  # fmt: skip
    tool_job = queue.add_tool(["dataset", "check", str(tmp_path)])
    assert JobQueue(path).get(tool_job.id).tool_argv == ("dataset", "check", str(tmp_path))  # opened again
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
        stored = db.execute("SELECT tool_argv FROM jobs ORDER BY id").fetchall()
    assert columns.count("tool_argv") == 1
    assert stored == [(None,), (json.dumps(["dataset", "check", str(tmp_path)]),)]


def test_the_worker_reads_a_tool_killed_by_a_signal_as_stopped_only_for_stop_signals():
    outcome = worker_module.exit_outcome
    assert outcome(-signal.SIGTERM, ["working"], tool=True) == (
        "stopped",
        "stopped by SIGTERM before it finished",
    )
    assert outcome(-signal.SIGKILL, ["working"], tool=True) == ("failed", "killed by SIGKILL")
    assert outcome(2, ["error: --model x does not exist"], tool=True) == (
        "failed",
        "--model x does not exist",
    )
    # A training run that dies on SIGTERM did not save its state: failed, as before.
    assert outcome(-signal.SIGTERM, ["step 3"]) == ("failed", "killed by SIGTERM")


def test_a_caption_job_runs_through_the_worker_and_reports_its_images_to_the_job_page(
    queue, tmp_path, photos
):
    """The Captioning page's path: `loracraft caption` queued as a tool job, its subprocess asking an
    endpoint (the fake, in this process) and counting its images into the job's progress file."""
    from fake_openai_server import fake_openai_server

    (photos / "p1.txt").write_text("mine", encoding="utf-8")
    with fake_openai_server() as server:
        argv = ["caption", str(photos), "--endpoint", server.url, "--model", "vlm", "--prefix", "sks,"]
        job = queue.add_tool(argv, workdir=tmp_path)
        assert queue.get(job.id).tool == "caption" and job.name == "caption"
        assert run_queue(queue, echo=lambda _: None) == 0
    done = queue.get(job.id)
    assert done.state == "done"
    assert (photos / "p0.txt").read_text(encoding="utf-8").startswith("sks, 64x64 rgb(")
    assert (photos / "p1.txt").read_text(encoding="utf-8") == "mine"  # kept: no --overwrite
    assert [request.body["model"] for request in server.requests] == ["vlm"]
    progress = read_progress(done)
    assert progress.tool_done == (1, 1, "images")
    assert any(line == "captioned 1 image (1 written)" for line in progress.log_tail)
