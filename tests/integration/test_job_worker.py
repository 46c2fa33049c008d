"""The worker runs queued jobs as `loracraft train` subprocesses on the tiny model: a job finishes with its
LoRA and progress read back; a stopped job saved a state and resumes to the end; a job whose worker and
process were killed is interrupted at the next open and resumes; N workers run N jobs at once, one per
GPU."""

import os
import signal
import sys
import time

import pytest
import tomli_w

from data_helpers import make_kohya_dataset
from loracraft.errors import UserError
from loracraft.jobs import worker as worker_module
from loracraft.jobs.progress import read_events, read_progress
from loracraft.jobs.queue import LOST, JobQueue
from loracraft.jobs.worker import Worker, run_queue, slot_devices

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
    # The run's recipe leaves the job's progress file out: training again from it writes elsewhere.
    recipe = (tmp_path / "out" / "toy.toml").read_text(encoding="utf-8")
    assert "progress_file" not in recipe and 'output_name = "toy"' in recipe


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


def fake_gpus(monkeypatch, count: int) -> None:
    """A machine that shows `count` CUDA devices to the worker (the runs below never touch them)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_n_workers_take_one_gpu_each_or_are_refused_with_the_count_visible(monkeypatch):
    fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slot_devices(1) == [None]  # one worker leaves the GPUs as the environment says
    assert slot_devices(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    assert slot_devices(2) == ["3", "5"]
    with pytest.raises(UserError) as refused:
        slot_devices(4)
    assert str(refused.value) == (
        "--workers 4 runs each job on a GPU of its own, and 3 are visible: use --workers 3 or fewer"
    )
    with pytest.raises(UserError, match=r"^--workers 0: give 1 or more$"):
        slot_devices(0)


def test_two_workers_run_two_jobs_at_once_each_on_its_own_gpu(monkeypatch, tmp_path):
    """Three queued jobs on two slots: two run together, each told its GPU, and the third takes the
    first slot that frees. The runs are a stand-in for `loracraft train` that records its device and
    waits until both first jobs have started, so it only ends if they really run at the same time."""
    fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen = tmp_path / "seen"
    seen.mkdir()
    stand_in = (
        "import os, pathlib, sys, time\n"
        "seen = pathlib.Path(sys.argv[1])\n"
        "(seen / sys.argv[2]).write_text(os.environ.get('CUDA_VISIBLE_DEVICES', 'none'))\n"
        "deadline = time.monotonic() + 60\n"
        "while len(list(seen.iterdir())) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "sys.exit(0 if len(list(seen.iterdir())) >= 2 else 1)\n"
    )
    monkeypatch.setattr(
        worker_module,
        "train_command",
        lambda claim: [sys.executable, "-c", stand_in, str(seen), str(claim.job.id)],
    )
    queue = JobQueue(tmp_path / "queue.sqlite")
    out = (tmp_path / "out").as_posix()
    jobs = [queue.add(f'output_dir = "{out}"\noutput_name = "job{index}"\n') for index in range(3)]
    assert run_queue(queue, workers=2, echo=lambda _: None) == 0
    assert [queue.get(job.id).state for job in jobs] == ["done"] * 3
    devices = {path.name: path.read_text() for path in seen.iterdir()}
    assert sorted(devices[str(job.id)] for job in jobs[:2]) == ["0", "1"]
    assert devices[str(jobs[2].id)] in ("0", "1")
