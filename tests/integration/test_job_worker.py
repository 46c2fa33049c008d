"""The worker runs queued jobs as `loracraft train` subprocesses on the tiny model: a job finishes with its
LoRA and progress read back; a stopped job saved a state and resumes to the end; a job whose worker and
process were killed is interrupted at the next open and resumes."""

import os
import signal
import sys
import time

import pytest
import tomli_w

from data_helpers import make_kohya_dataset
from loracraft.jobs.progress import read_events, read_progress
from loracraft.jobs.queue import LOST, JobQueue
from loracraft.jobs.worker import Worker, run_queue

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="stops runs with POSIX signals")


@pytest.fixture
def job_config(tiny_sd1, tmp_path, monkeypatch):
    # The runs inherit it: one thread is as fast on the tiny model, and faster on shared cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset = make_kohya_dataset(tmp_path / "data", reg_count=0)

    def config(**values) -> str:
        return tomli_w.dumps(
            {
                "pretrained_model_name_or_path": str(tiny_sd1.single_file),
                "train_data_dir": str(dataset.train_dir),
                "output_dir": str(tmp_path / "out"),
                "output_name": "toy",
                "caption_extension": ".txt",
                "resolution": "64,64",
                "mixed_precision": "no",
                "seed": 0,
                "max_data_loader_n_workers": 0,
                "network_dim": 4,
                **values,
            }
        )

    return config


def wait_until(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    return found


def has_logged_a_step(job) -> bool:
    return any(event["event"] == "scalars" for event in read_events(job.progress_file))


def test_a_job_goes_queued_running_done_with_its_lora_and_progress(job_config, tmp_path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    job = queue.add(job_config(max_train_steps=4))
    assert job.state == "queued"
    worker = Worker(queue, poll_s=0.1, echo=lambda _: None)
    worker.start()
    try:
        wait_until(lambda: queue.get(job.id).state == "running", "running job")
        finished = wait_until(lambda: (j := queue.get(job.id)).state != "running" and j, "end of the job")
    finally:
        worker.stop()
    assert (finished.state, finished.exit_reason) == ("done", None)
    progress = read_progress(finished)
    assert progress.files == [tmp_path / "out" / "toy.safetensors"]
    assert [point[0] for point in progress.loss_points] == [1, 2, 3, 4] and progress.step == 4
    assert progress.lr_points.keys() == {"unet", "textencoder"}
    assert any("loracraft" in line and "train --config_file" in line for line in progress.log_tail)


@pytest.mark.slow
def test_a_stopped_job_saves_a_state_and_resumes_to_the_end(job_config, tmp_path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    job = queue.add(job_config(max_train_steps=30))
    worker = Worker(queue, poll_s=0.1, echo=lambda _: None)
    worker.start()
    try:
        wait_until(lambda: has_logged_a_step(queue.get(job.id)), "first progress line")
        assert queue.stop(job.id).state == "stopped"
        stopped = wait_until(
            lambda: (j := queue.get(job.id)).exit_reason != "stop requested" and j, "end of the stopped run"
        )
        assert stopped.state == "stopped", stopped.exit_reason
        assert stopped.exit_reason.startswith("stopped by SIGTERM at step ")
        step = int(stopped.exit_reason.split()[5])
        assert (tmp_path / "out" / f"toy-step{step:08d}-state").is_dir()
        assert queue.resume(job.id).state == "queued"
        done = wait_until(
            lambda: (j := queue.get(job.id)).state in ("done", "failed") and j, "resumed run's end"
        )
    finally:
        worker.stop()
    assert done.state == "done", done.exit_reason
    progress = read_progress(done)
    assert [point[0] for point in progress.loss_points] == list(range(1, 31))
    assert (tmp_path / "out" / "toy.safetensors").is_file()


@pytest.mark.slow
def test_a_job_killed_with_its_worker_is_interrupted_at_the_next_open_and_resumes(job_config, tmp_path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    job = queue.add(job_config(max_train_steps=20, save_every_n_steps=5, save_state=True))
    worker = Worker(queue, poll_s=0.1, echo=lambda _: None)
    worker.start()
    wait_until(lambda: (tmp_path / "out" / "toy-step00000005-state").is_dir(), "first state")
    worker.stop()  # a worker that stops leaves its runs running
    run = worker.slots[0].process
    assert run.poll() is None
    os.kill(run.pid, signal.SIGKILL)  # as a machine restart would end it
    run.wait()

    reopened = JobQueue(queue.path)
    assert (reopened.get(job.id).state, reopened.get(job.id).exit_reason) == ("interrupted", LOST)
    reopened.resume(job.id)
    assert run_queue(reopened, echo=lambda _: None) == 0
    done = reopened.get(job.id)
    assert done.state == "done", done.exit_reason
    assert read_progress(done).step == 20
    assert (tmp_path / "out" / "toy.safetensors").is_file()
