"""The SQLite job queue: order, states, one-line refusals, concurrent processes, lost jobs."""

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loracraft.errors import UserError
from loracraft.jobs import paths
from loracraft.jobs.queue import LOST, JobQueue

CONFIG = """pretrained_model_name_or_path = "model.safetensors"
train_data_dir = "img"
output_dir = "out"
output_name = "{name}"
"""

needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="forks worker processes"
)


def config(name: str = "toy") -> str:
    return CONFIG.format(name=name)


@pytest.fixture
def queue(tmp_path) -> JobQueue:
    return JobQueue(tmp_path / "data" / "queue.sqlite")


def test_jobs_are_listed_in_the_order_added_with_their_folder_and_config(queue, tmp_path):
    first = queue.add(config("a"), workdir=tmp_path)
    second = queue.add(config("b"), "second run", workdir=tmp_path)
    assert [(job.id, job.name, job.state, job.position) for job in queue.jobs()] == [
        (first.id, "a", "queued", 1),
        (second.id, "second run", "queued", 2),
    ]
    assert second.output_dir == tmp_path / "out" and second.output_name == "b"
    assert second.folder == tmp_path / "data" / "jobs" / str(second.id)
    assert second.config_file.read_text() == config("b")


def test_a_config_that_does_not_validate_is_refused_naming_its_source(queue):
    with pytest.raises(UserError) as error:
        queue.add(config() + "network_dimm = 4\n", source="run.toml")
    assert str(error.value) == "run.toml: unknown key 'network_dimm' (did you mean network_dim?)"
    with pytest.raises(UserError) as error:
        queue.add(config() + "learning_rate = -1\n", source="run.toml")
    assert str(error.value).startswith("run.toml: --learning_rate: ")
    with pytest.raises(UserError) as error:
        queue.add('train_data_dir = "img"\n', source="run.toml")
    assert str(error.value) == "run.toml: a job needs output_dir (the folder its LoRA files go to)"
    assert queue.jobs() == []


def test_two_waiting_jobs_may_not_write_the_same_files(queue, tmp_path):
    first = queue.add(config(), workdir=tmp_path)
    with pytest.raises(UserError) as error:
        queue.add(config(), workdir=tmp_path)
    assert str(error.value) == (
        f"job {first.id} (queued) already writes toy in {tmp_path / 'out'}: give this one another "
        "output_name or output_dir"
    )
    queue.cancel(first.id)
    assert queue.add(config(), workdir=tmp_path).position == 2


def test_an_unknown_id_is_one_line(queue):
    with pytest.raises(UserError) as error:
        queue.get(7)
    assert str(error.value) == f"no job 7 in the queue {queue.path} (loracraft queue list shows the jobs)"


def test_move_reorders_and_keeps_positions_unique(queue):
    ids = [queue.add(config(name)).id for name in "abcd"]
    queue.move(ids[3], 1)
    assert [job.id for job in queue.jobs()] == [ids[3], ids[0], ids[1], ids[2]]
    queue.move(ids[3], 99)
    assert [(job.id, job.position) for job in queue.jobs()] == list(zip(ids, [1, 2, 3, 4], strict=True))


def test_cancel_takes_a_queued_job_out_of_the_line_and_the_worker_skips_it(queue):
    first, second = queue.add(config("a")), queue.add(config("b"))
    assert queue.cancel(first.id).state == "cancelled"
    assert queue.claim_next().job.id == second.id
    with pytest.raises(UserError) as error:
        queue.cancel(second.id)
    assert str(error.value) == (
        f"job {second.id} is running, not queued: stop it with `loracraft queue stop {second.id}`"
    )
    assert queue.claim_next() is None


def test_stop_and_resume_refuse_jobs_in_other_states_in_one_line(queue, tmp_path):
    job = queue.add(config(), workdir=tmp_path)
    with pytest.raises(UserError) as error:
        queue.stop(job.id)
    assert (
        str(error.value)
        == f"job {job.id} is queued, not running: cancel it with `loracraft queue cancel {job.id}`"
    )
    with pytest.raises(UserError) as error:
        queue.resume(job.id)
    assert str(error.value) == f"job {job.id} is queued: only a stopped, interrupted or failed job resumes"
    queue.claim_next()
    queue.record_exit(job.id, "failed", 2, "boom")
    with pytest.raises(UserError) as error:
        queue.resume(job.id)
    assert str(error.value) == (
        f"job {job.id} has no saved state of 'toy' in {tmp_path / 'out'} to resume from; duplicate it to start "
        "it again"
    )


def test_duplicate_without_edits_writes_under_a_new_name(queue, tmp_path):
    job = queue.add(config(), workdir=tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "toy-2.safetensors").write_bytes(b"someone's file")
    copy = queue.duplicate(job.id)
    assert (copy.output_name, copy.output_dir, copy.position) == ("toy-3", tmp_path / "out", 2)
    edited = queue.duplicate(job.id, config("other"))
    assert edited.output_name == "other" and edited.config_toml == config("other")


def test_delete_removes_the_job_and_its_folder_and_only_when_asked_its_outputs(queue, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lora_files = [
        out / name for name in ("toy.safetensors", "toy-000001.safetensors", "toy-step00000004.safetensors")
    ]
    for path in [*lora_files, out / "toy-other.safetensors"]:
        path.write_bytes(b"x")
    (out / "toy-step00000004-state").mkdir()
    kept, removed = queue.add(config(), workdir=tmp_path), None
    queue.cancel(kept.id)
    queue.delete(kept.id)
    assert not kept.folder.exists() and all(path.exists() for path in lora_files)
    removed = queue.add(config(), workdir=tmp_path)
    queue.cancel(removed.id)
    queue.delete(removed.id, remove_outputs=True)
    assert sorted(path.name for path in out.iterdir()) == ["toy-other.safetensors"]
    assert queue.jobs() == []


def _add_jobs(path: str, worker: int, count: int) -> None:
    queue = JobQueue(Path(path))
    for index in range(count):
        queue.add(config(f"w{worker}-{index}"))


def _claim_all(path: str, claimed) -> None:
    queue = JobQueue(Path(path))
    while (claim := queue.claim_next()) is not None:
        claimed.put(claim.job.id)


@needs_fork
def test_concurrent_adds_from_several_processes_all_land_with_unique_positions(tmp_path):
    path = tmp_path / "queue.sqlite"
    JobQueue(path)
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_add_jobs, args=(str(path), worker, 8)) for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    jobs = JobQueue(path).jobs()
    assert sorted(job.name for job in jobs) == sorted(f"w{w}-{i}" for w in range(4) for i in range(8))
    assert [job.position for job in jobs] == list(range(1, 33))


@needs_fork
def test_two_workers_never_claim_the_same_job(tmp_path):
    path = tmp_path / "queue.sqlite"
    queue = JobQueue(path)
    ids = [queue.add(config(f"j{index}")).id for index in range(24)]
    context = multiprocessing.get_context("fork")
    claimed = context.Queue()
    workers = [context.Process(target=_claim_all, args=(str(path), claimed)) for _ in range(3)]
    for worker in workers:
        worker.start()
    taken = [claimed.get(timeout=60) for _ in ids]
    for worker in workers:
        worker.join(60)
    assert sorted(taken) == ids
    assert {job.state for job in JobQueue(path).jobs()} == {"interrupted"}  # their workers are gone


def test_a_running_job_whose_process_is_gone_is_interrupted_when_a_queue_opens(queue):
    job = queue.add(config())
    queue.claim_next()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    queue.record_process(job.id, ended.pid)
    assert JobQueue(queue.path).get(job.id).state == "running"  # its zombie still holds the pid
    ended.wait()
    settled = JobQueue(queue.path).get(job.id)
    assert (settled.state, settled.exit_reason) == ("interrupted", LOST)


def test_a_running_job_of_a_live_process_stays_running(queue):
    job = queue.add(config())
    queue.claim_next()  # claimed by this process, which is alive: its run is starting
    assert JobQueue(queue.path).get(job.id).state == "running"
    queue.record_process(job.id, os.getpid())
    assert JobQueue(queue.path).get(job.id).state == "running"


def test_the_data_folder_follows_loracraft_data_else_the_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("LORACRAFT_DATA", str(tmp_path))
    assert paths.default_queue_path() == tmp_path / "queue.sqlite"
    monkeypatch.delenv("LORACRAFT_DATA")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.data_folder() == tmp_path / "xdg" / "loracraft"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert paths.data_folder() == tmp_path / "local" / "loracraft"


def test_a_queue_file_that_is_not_a_database_is_one_line(tmp_path):
    path = tmp_path / "queue.sqlite"
    path.write_text("not sqlite " * 100)
    with pytest.raises(UserError) as error:
        JobQueue(path)
    assert str(error.value) == (
        f"queue {path} cannot be opened: file is not a database; choose another with --queue FILE"
    )
