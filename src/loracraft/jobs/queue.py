"""The job queue: training runs and tool commands stored in one SQLite file, shared by every process that
opens it.

Each change is one `BEGIN IMMEDIATE` transaction on a WAL-mode database with a busy timeout, so two
processes adding jobs at the same moment both land, and two workers never claim the same job. Beside the
database, `jobs/<id>/` holds each job's files: job.toml (its config as given), console.log (what the run
printed) and progress.jsonl (what the run's progress-file tracker wrote, read by `progress.py`).

A job marked running whose process is gone (a machine restart, a killed worker) is settled whenever a
queue opens: from its progress file's end event when the run wrote one, else as `interrupted`, which
`resume` continues from the run's last saved state.

A tool job (`tool_jobs.py`) stores a `loracraft` tool command's argv instead of a config; it has no
progress file and no saved state, so it is never resumed: it is run again as a new job.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from loracraft.atomic import write_text_atomic
from loracraft.config.load import build_config, read_config_file
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.jobs.paths import default_queue_path
from loracraft.jobs.queue_table import JOB_COLUMNS, create_or_update_table
from loracraft.jobs.tool_jobs import check_tool_call, command_words, default_job_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

JOB_STATES = ("queued", "running", "done", "failed", "stopped", "interrupted", "cancelled")
RESUMABLE = ("stopped", "interrupted", "failed")
# While a job is queued or running, no other job may write the same files.
ACTIVE = ("queued", "running")
JOB_CONFIG, CONSOLE_LOG, PROGRESS_FILE = "job.toml", "console.log", "progress.jsonl"
LOST = "its process ended while no worker watched it (a restart or a killed worker); resume it"
LOST_TOOL = "its process ended while no worker watched it (a restart or a killed worker); run it again"
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    state: str
    position: int
    config_toml: str
    output_dir: Path
    output_name: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_reason: str | None
    pid: int | None
    folder: Path
    """The job's own folder: job.toml, progress.jsonl, console.log."""
    tool_argv: tuple[str, ...] | None = None
    """A tool job's `loracraft` argv (command words first); None for a training run."""

    @property
    def tool(self) -> str | None:
        """A tool job's command words (`resize`, `dataset check`); None for a training run."""
        return command_words(self.tool_argv) if self.tool_argv is not None else None

    @property
    def output(self) -> str:
        """What the job writes: a run's output folder and name, a tool's output path ("" when none)."""
        if self.tool_argv is not None and not self.output_name:
            return ""
        return str(self.output_dir / self.output_name)

    @property
    def config_file(self) -> Path:
        return self.folder / JOB_CONFIG

    @property
    def console_log(self) -> Path:
        return self.folder / CONSOLE_LOG

    @property
    def progress_file(self) -> Path:
        return self.folder / PROGRESS_FILE


@dataclass(frozen=True)
class Claim:
    """A job a worker took: what it needs to launch the run."""

    job: Job
    workdir: Path
    resume: bool


def process_identity(pid: int) -> float:
    """The process's start time: with its id, it names one process (ids are reused)."""
    return psutil.Process(pid).create_time()


def is_alive(pid: int | None, started: float | None) -> bool:
    """The process `pid` that started at `started` still runs (a zombie, not yet reaped by its parent,
    still counts: its parent will record its exit)."""
    if pid is None or started is None:
        return False
    try:
        return abs(process_identity(pid) - started) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def validated_config(config_toml: str, source: str) -> TrainConfig:
    """The TOML text checked as `loracraft train --config_file` checks a file; errors name `source`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / JOB_CONFIG
        path.write_text(config_toml, encoding="utf-8")
        try:
            config = build_config(read_config_file(path), {}, f"{source}: ")
        except UserError as error:
            raise UserError(str(error).replace(str(path), source)) from None
    if not config.output_dir:
        raise UserError(f"{source}: a job needs output_dir (the folder its LoRA files go to)")
    return config


class JobQueue:
    """The queue in the SQLite file `path` (default: the user's data folder, `paths.py`)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else default_queue_path()
        self.root = self.path.parent
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._connection() as db:
                db.execute("PRAGMA journal_mode=WAL")
            with self._transaction() as db:
                create_or_update_table(db)
        except (OSError, sqlite3.DatabaseError) as error:
            raise UserError(
                f"queue {self.path} cannot be opened: {error}; choose another with --queue FILE"
            ) from None
        self.settle_lost_jobs()

    # Reading.

    def jobs(self) -> list[Job]:
        """Every job, in queue order."""
        with self._connection() as db:
            rows = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY position").fetchall()
        return [self._job(row) for row in rows]

    def get(self, job_id: int) -> Job:
        with self._connection() as db:
            return self._get(db, job_id)

    # Changing (each change one transaction).

    def add(self, config_toml: str, name: str | None = None, *, workdir: Path | None = None,
            source: str = "job config") -> Job:  # fmt: skip
        """Queue a run of `config_toml` (checked like a --config_file; its relative paths are read from
        `workdir`, default the current folder) at the end of the line."""
        config = validated_config(config_toml, source)
        workdir = (workdir or Path.cwd()).resolve()
        output_dir = workdir / config.output_dir
        with self._transaction() as db:
            self._refuse_same_outputs(db, output_dir, config.output_stem)
            cursor = db.execute(
                "INSERT INTO jobs (name, state, position, config_toml, workdir, output_dir, output_name, "
                "created_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (name or config.output_stem, self._end_of_line(db), config_toml, str(workdir),
                 str(output_dir), config.output_stem, time.time()),
            )  # fmt: skip
            job = self._get(db, cursor.lastrowid)
            job.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(job.config_file, config_toml)
        return job

    def add_tool(self, argv: list[str], name: str | None = None, *, workdir: Path | None = None) -> Job:
        """Queue the tool command `argv` (`["resize", "--model", ...]`, checked by the tool's parser; its
        relative paths are read from `workdir`, default the current folder) at the end of the line."""
        workdir = (workdir or Path.cwd()).resolve()
        call = check_tool_call(argv, workdir)
        output_dir, output_name = (call.output.parent, call.output.name) if call.output else (workdir, "")
        with self._transaction() as db:
            if output_name:
                fix = "choose another output path, or queue this one when that job is done"
                self._refuse_same_outputs(db, output_dir, output_name, fix)
            cursor = db.execute(
                "INSERT INTO jobs (name, state, position, config_toml, workdir, output_dir, output_name, "
                "created_at, tool_argv) VALUES (?, 'queued', ?, '', ?, ?, ?, ?, ?)",
                (name or default_job_name(call), self._end_of_line(db), str(workdir), str(output_dir),
                 output_name, time.time(), json.dumps(call.argv)),
            )  # fmt: skip
            job = self._get(db, cursor.lastrowid)
            job.folder.mkdir(parents=True, exist_ok=True)
        return job

    def move(self, job_id: int, position: int) -> None:
        """Put a queued job at `position` (1 is the top of the list; past the end is the end)."""
        with self._transaction() as db:
            job = self._get(db, job_id)
            if job.state != "queued":
                raise UserError(f"job {job_id} is {job.state}: only a queued job can move")
            ids = [row[0] for row in db.execute("SELECT id FROM jobs ORDER BY position")]
            ids.remove(job_id)
            ids.insert(min(max(position, 1), len(ids) + 1) - 1, job_id)
            self._renumber(db, ids)

    def cancel(self, job_id: int) -> Job:
        """Take a queued job out of the line (it stays listed as cancelled)."""
        with self._transaction() as db:
            job = self._get(db, job_id)
            if job.state != "queued":
                raise UserError(f"job {job_id} is {job.state}, not queued: {self._what_to_do(job)}")
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ?", (time.time(), job_id)
            )
            return self._get(db, job_id)

    def stop(self, job_id: int) -> Job:
        """Ask a running job to stop: SIGTERM (CTRL_BREAK on Windows), on which the run saves a state and a
        LoRA file before it exits; `resume` continues it."""
        with self._transaction() as db:
            job = self._get(db, job_id)
            if job.state != "running":
                raise UserError(f"job {job_id} is {job.state}, not running: {self._what_to_do(job)}")
            pid, started = db.execute("SELECT pid, pid_started FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if not is_alive(pid, started):
                raise UserError(f"job {job_id} is starting its process: stop it again in a moment")
            send_stop_signal(pid)
            db.execute(
                "UPDATE jobs SET state = 'stopped', exit_reason = 'stop requested' WHERE id = ?", (job_id,)
            )
            return self._get(db, job_id)

    def resume(self, job_id: int) -> Job:
        """Queue a stopped, interrupted or failed job again, to continue from its last saved state."""
        from loracraft.training.resume import latest_state

        with self._transaction() as db:
            job = self._get(db, job_id)
            if job.tool is not None:
                raise UserError(
                    f"job {job_id} runs `loracraft {job.tool}`, which saves no state to resume from; "
                    "duplicate it to run it again"
                )
            if job.state not in RESUMABLE:
                raise UserError(
                    f"job {job_id} is {job.state}: only a stopped, interrupted or failed job resumes"
                )
            pid, started = db.execute("SELECT pid, pid_started FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if is_alive(pid, started):
                raise UserError(f"job {job_id} is still saving its state: resume it in a moment")
            try:
                latest_state(job.output_dir, job.output_name)
            except UserError:
                raise UserError(
                    f"job {job_id} has no saved state of {job.output_name!r} in {job.output_dir} to resume "
                    "from; duplicate it to start it again"
                ) from None
            db.execute(
                "UPDATE jobs SET state = 'queued', resume_next = 1, position = ?, exit_reason = NULL, "
                "exit_code = NULL, finished_at = NULL, pid = NULL, pid_started = NULL WHERE id = ?",
                (self._end_of_line(db), job_id),
            )
            return self._get(db, job_id)

    def duplicate(self, job_id: int, config_toml: str | None = None) -> Job:
        """A new queued job from `job_id`'s config, or from `config_toml` (the edited copy). Without edits,
        the copy writes its files under a new output_name (NAME-2, NAME-3, ...) so nothing is overwritten."""
        job = self.get(job_id)
        with self._connection() as db:
            workdir = Path(db.execute("SELECT workdir FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
        if job.tool_argv is not None:
            # A tool refuses to replace its output unless told: the copy runs the same command.
            return self.add_tool(list(job.tool_argv), job.name, workdir=workdir)
        if config_toml is None:
            import tomli_w

            values = tomllib.loads(job.config_toml)
            values["output_name"] = self._free_output_name(job)
            config_toml = tomli_w.dumps(values)
        return self.add(config_toml, workdir=workdir, source=f"copy of job {job_id}")

    def delete(self, job_id: int, remove_outputs: bool = False) -> None:
        """Remove the job and its folder; with `remove_outputs` also its LoRA files and saved states."""
        with self._transaction() as db:
            job = self._get(db, job_id)
            if job.state == "running":
                raise UserError(f"job {job_id} is running: stop it first (loracraft queue stop {job_id})")
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._renumber(db, [row[0] for row in db.execute("SELECT id FROM jobs ORDER BY position")])
        shutil.rmtree(job.folder, ignore_errors=True)
        if remove_outputs:
            for path in output_files(job):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    # The worker's side.

    def claim_next(self) -> Claim | None:
        """Mark the first queued job running for the calling process, or None when none waits."""
        worker = os.getpid()
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, workdir, resume_next FROM jobs WHERE state = 'queued' ORDER BY position LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, finished_at = NULL, exit_reason = NULL, "
                "exit_code = NULL, pid = NULL, pid_started = NULL, worker_pid = ?, worker_started = ?, "
                "resume_next = 0 WHERE id = ?",
                (time.time(), worker, process_identity(worker), row[0]),
            )
            return Claim(self._get(db, row[0]), Path(row[1]), bool(row[2]))

    def record_process(self, job_id: int, pid: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET pid = ?, pid_started = ? WHERE id = ?", (pid, process_identity(pid), job_id)
            )

    def record_exit(self, job_id: int, state: str, exit_code: int | None, reason: str | None) -> Job:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, exit_reason = ?, finished_at = ? WHERE id = ?",
                (state, exit_code, reason, time.time(), job_id),
            )
            return self._get(db, job_id)

    def settle_lost_jobs(self) -> list[Job]:
        """Jobs marked running whose process (or, before it started, whose worker) is gone: finished as
        their progress file says, else interrupted. Returns them."""
        from loracraft.jobs.progress import run_outcome

        settled = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, pid, pid_started, worker_pid, worker_started FROM jobs WHERE state = 'running'"
            ).fetchall()
            for job_id, pid, pid_started, worker_pid, worker_started in rows:
                if is_alive(pid, pid_started) or (pid is None and is_alive(worker_pid, worker_started)):
                    continue
                job = self._get(db, job_id)
                lost = ("interrupted", LOST if job.tool_argv is None else LOST_TOOL)
                state, reason = run_outcome(job.progress_file) or lost
                db.execute(
                    "UPDATE jobs SET state = ?, exit_reason = ?, finished_at = ? WHERE id = ?",
                    (state, reason, time.time(), job_id),
                )
                settled.append(self._get(db, job_id))
        return settled

    # Helpers.

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # One connection per operation: a queue object is shared by the UI's threads and its worker's.
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            # IMMEDIATE takes the write lock at once: two read-then-write changes never interleave.
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _get(self, db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UserError(f"no job {job_id} in the queue {self.path} (loracraft queue list shows the jobs)")
        return self._job(row)

    def _job(self, row: tuple) -> Job:
        (job_id, name, state, position, config_toml, output_dir, output_name, created_at, started_at,
         finished_at, exit_reason, pid, tool_argv) = row  # fmt: skip
        return Job(
            job_id, name, state, position, config_toml, Path(output_dir), output_name, created_at,
            started_at, finished_at, exit_reason, pid, self.root / "jobs" / str(job_id),
            tuple(json.loads(tool_argv)) if tool_argv is not None else None,
        )  # fmt: skip

    @staticmethod
    def _end_of_line(db: sqlite3.Connection) -> int:
        return db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM jobs").fetchone()[0]

    @staticmethod
    def _renumber(db: sqlite3.Connection, ids: list[int]) -> None:
        # Through negative numbers: positions are unique at every moment of the update.
        for position, job_id in enumerate(ids, 1):
            db.execute("UPDATE jobs SET position = ? WHERE id = ?", (-position, job_id))
        db.execute("UPDATE jobs SET position = -position WHERE position < 0")

    @staticmethod
    def _refuse_same_outputs(
        db: sqlite3.Connection,
        output_dir: Path,
        stem: str,
        fix: str = "give this one another output_name or output_dir",
    ) -> None:
        row = db.execute(
            f"SELECT id, state FROM jobs WHERE output_dir = ? AND output_name = ? AND state IN {ACTIVE}",
            (str(output_dir), stem),
        ).fetchone()
        if row is not None:
            raise UserError(f"job {row[0]} ({row[1]}) already writes {stem} in {output_dir}: {fix}")

    def _free_output_name(self, job: Job) -> str:
        taken = {other.output_name for other in self.jobs() if other.output_dir == job.output_dir}
        number = 2
        while f"{job.output_name}-{number}" in taken or any(
            job.output_dir.glob(f"{job.output_name}-{number}.*")
        ):
            number += 1
        return f"{job.output_name}-{number}"

    @staticmethod
    def _what_to_do(job: Job) -> str:
        if job.tool_argv is not None and job.state not in ACTIVE:
            return f"delete it with `loracraft queue delete {job.id}`"
        return {
            "queued": f"cancel it with `loracraft queue cancel {job.id}`",
            "running": f"stop it with `loracraft queue stop {job.id}`",
        }.get(job.state, f"resume it with `loracraft queue resume {job.id}`" if job.state in RESUMABLE
              else f"delete it with `loracraft queue delete {job.id}`")  # fmt: skip


def send_stop_signal(pid: int) -> None:
    """The signal on which a run saves a state and stops: SIGTERM; on Windows, where the worker starts
    each run in its own process group, CTRL_BREAK."""
    import signal

    os.kill(pid, signal.CTRL_BREAK_EVENT if sys.platform == "win32" else signal.SIGTERM)


def output_files(job: Job) -> list[Path]:
    """The job's LoRA files (final, per epoch, per step) and saved states in its output folder; a tool
    job's output file when it wrote one (a folder it wrote may hold the user's other files: never listed)."""
    if job.tool_argv is not None:
        written = job.output_dir / job.output_name
        return [written] if job.output_name and written.is_file() else []
    stem = job.output_name
    patterns = (
        f"{stem}.*",
        f"{stem}-[0-9][0-9][0-9][0-9][0-9][0-9].*",
        f"{stem}-step[0-9]*.*",
        f"{stem}*-state",
    )
    found = {path for pattern in patterns for path in job.output_dir.glob(pattern)}
    lora = (".safetensors", ".ckpt", ".pt")
    return sorted(path for path in found if path.suffix in lora or path.name.endswith("-state"))
