"""The worker: takes queued jobs one by one (or N at once) and runs each as
`python -m loracraft train --config_file JOB.toml --progress_file ...` in a process of its own session,
so a run outlives the worker, the web UI or the terminal that started it. The worker waits for its runs
and records how each ended: exit 0 done, 130/143 (Ctrl-C, SIGTERM: a state was saved) stopped, anything
else failed with the run's last `error:` line. A run whose worker died is settled by the next queue that
opens (`JobQueue.settle_lost_jobs`).

A tool job runs as `python -m loracraft TOOL ARGV...` the same way. A tool saves no state: the signal
`stop` sends ends it at once (stopped); its outputs, written atomically, are never left half-written.

With `workers` N > 1 on a CUDA machine, each slot runs its jobs on its own GPU (CUDA_VISIBLE_DEVICES set
to one of the visible GPUs); one worker leaves the GPUs as the environment says.

Windows (untested): runs start in their own process group, and `stop` sends CTRL_BREAK, which ends the
run without the state a SIGTERM saves on POSIX.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from loracraft.errors import UserError
from loracraft.jobs.progress import log_tail
from loracraft.jobs.queue import Claim, Job, JobQueue
from loracraft.jobs.tool_progress import PROGRESS_FILE_VARIABLE

POLL_S = 1.0
# The exit statuses of a run stopped by Ctrl-C or SIGTERM after saving a state (128 + the signal).
STOPPED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


@dataclass
class Running:
    claim: Claim
    process: subprocess.Popen


def slot_devices(workers: int) -> list[str | None]:
    """The GPU each of `workers` slots runs on (None: as the environment says)."""
    if workers < 1:
        raise UserError(f"--workers {workers}: give 1 or more")
    if workers == 1:
        return [None]
    import torch

    if not torch.cuda.is_available():
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(index) for index in range(torch.cuda.device_count())]
    if workers > len(devices):
        raise UserError(
            f"--workers {workers} runs each job on a GPU of its own, and {len(devices)} "
            f"{'is' if len(devices) == 1 else 'are'} visible: use --workers {len(devices)} or fewer"
        )
    return devices[:workers]


def train_command(claim: Claim) -> list[str]:
    job = claim.job
    command = [sys.executable, "-m", "loracraft", "train", "--config_file", str(job.config_file)]
    command += ["--progress_file", str(job.progress_file)]
    return command + (["--resume", "latest"] if claim.resume else [])


def tool_command(job: Job) -> list[str]:
    return [sys.executable, "-m", "loracraft", *job.tool_argv]


def exit_outcome(code: int, console_lines: list[str], tool: bool = False) -> tuple[str, str | None]:
    """(job state, reason) of a run (or, with `tool`, a tool command) that exited with `code`, from what
    it printed last."""
    if code == 0:
        return "done", None
    last = next((line for line in reversed(console_lines) if line.strip()), "")
    if code in STOPPED_CODES:
        return "stopped", last or None
    if tool and -code in (signal.SIGINT, signal.SIGTERM):
        # Python's default handlers end the process on the signal itself: no line says it stopped.
        return "stopped", f"stopped by {signal.Signals(-code).name} before it finished"
    error = next((line for line in reversed(console_lines) if line.startswith("error: ")), None)
    if error is not None:
        return "failed", error.removeprefix("error: ")
    if code < 0:
        return "failed", f"killed by {signal.Signals(-code).name}"
    return "failed", f"exit status {code}: {last}" if last else f"exit status {code}"


class Worker:
    """Runs the queue's jobs, `workers` at a time, in a background thread (`start`/`stop`) or in the
    caller's thread (`run`). Without `watch`, `run` returns once nothing is queued or running."""

    def __init__(
        self,
        queue: JobQueue,
        workers: int = 1,
        *,
        watch: bool = True,
        poll_s: float = POLL_S,
        echo: Callable[[str], None] = print,
    ):
        self.queue = queue
        self.devices = slot_devices(workers)
        self.watch = watch
        self.poll_s = poll_s
        self.echo = echo
        self.slots: list[Running | None] = [None] * workers
        self.finished: list[Job] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self.run, name="loracraft-queue-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking jobs; the runs in progress go on, and the next queue that opens records them."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run(self) -> None:
        while not self._stopping.is_set():
            self._reap()
            self.queue.settle_lost_jobs()
            started = self._fill_slots()
            if not self.watch and not started and not any(self.slots):
                return
            self._stopping.wait(self.poll_s)

    @property
    def running(self) -> list[Job]:
        return [slot.claim.job for slot in self.slots if slot is not None]

    def _fill_slots(self) -> bool:
        started = False
        for index, slot in enumerate(self.slots):
            if slot is not None:
                continue
            claim = self.queue.claim_next()
            if claim is None:
                break
            self.slots[index] = self._launch(claim, self.devices[index])
            started = True
        return started

    def _launch(self, claim: Claim, device: str | None) -> Running | None:
        job = claim.job
        command = train_command(claim) if job.tool_argv is None else tool_command(job)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        if job.tool_argv is not None:
            env[PROGRESS_FILE_VARIABLE] = str(job.progress_file)
        # Its own session (process group on Windows): a Ctrl-C in the worker's terminal, or the worker's
        # end, does not reach the run.
        if sys.platform == "win32":
            detach = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        else:
            detach = {"start_new_session": True}
        began = time.strftime("%Y-%m-%d %H:%M:%S")
        gpu = f" on GPU {device}" if device is not None else ""
        try:
            with job.console_log.open("ab") as console:
                console.write(f"==== {began} job {job.id}{gpu}: {' '.join(command)}\n".encode())
                console.flush()
                process = subprocess.Popen(
                    command, cwd=claim.workdir, env=env, stdin=subprocess.DEVNULL, stdout=console,
                    stderr=subprocess.STDOUT, **detach,
                )  # fmt: skip
        except OSError as error:
            self.finished.append(self.queue.record_exit(job.id, "failed", None, f"could not start: {error}"))
            return None
        self.queue.record_process(job.id, process.pid)
        doing = f"loracraft {job.tool}" if job.tool else "resuming" if claim.resume else "training"
        self.echo(f"job {job.id} ({job.name}) started{gpu}: {doing}")
        return Running(claim, process)

    def _reap(self) -> None:
        for index, slot in enumerate(self.slots):
            if slot is None or slot.process.poll() is None:
                continue
            job = slot.claim.job
            code = slot.process.returncode
            state, reason = exit_outcome(code, log_tail(job.console_log), tool=job.tool_argv is not None)
            ended = self.queue.record_exit(job.id, state, code, reason)
            self.finished.append(ended)
            self.echo(f"job {job.id} ({job.name}) {state}" + (f": {reason}" if reason else ""))
            self.slots[index] = None


def run_queue(
    queue: JobQueue, watch: bool = False, workers: int = 1, echo: Callable[[str], None] = print
) -> int:
    """`loracraft queue run`: work through the queue in this process; 0 when every job it ran is done."""
    worker = Worker(queue, workers, watch=watch, echo=echo)
    try:
        worker.run()
    except KeyboardInterrupt:
        running = ", ".join(str(job.id) for job in worker.running)
        if running:
            echo(
                f"interrupted: job(s) {running} keep running; the queue records how they end when it next opens"
            )
        return 130
    return 0 if all(job.state == "done" for job in worker.finished) else 1
