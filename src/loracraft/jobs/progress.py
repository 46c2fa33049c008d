"""A job's progress read back from its files, for a running or a finished job: the events its run's
progress-file tracker wrote (`training/trackers.py`, ProgressFileTracker), the tail of its console log and
the LoRA files in its output folder.

A resumed run appends to the same file: a step logged again (the run went back to its saved state)
replaces what the first attempt logged from that step on.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracraft.jobs.queue import Job, output_files

LOG_TAIL_LINES = 40
# The speed is the mean of the last few measurements: recent enough to follow a change, steady enough
# not to jump with each read-back.
SPEED_WINDOW = 5
LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")
OUTCOME_STATES = {"finished": "done", "stopped": "stopped", "failed": "failed"}


@dataclass
class JobProgress:
    step: int = 0
    total_steps: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    eta_s: float | None = None
    seconds_per_step: float | None = None
    loss_points: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, loss, moving average)."""
    epoch_losses: list[tuple[int, float]] = field(default_factory=list)
    lr_points: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Per parameter group (`unet`, `textencoder`, ... as TrainingLog names them): (step, lr)."""
    images_per_s: float | None = None
    memory_gib: float | None = None
    validation_points: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) of the step-time evaluations."""
    epoch_validation_points: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, int | None, Path, str]] = field(default_factory=list)
    """(step, epoch, image file, prompt)."""
    log_tail: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    """The LoRA files in the output folder, final, epoch and step files."""
    log_dir: Path | None = None
    """The run's TensorBoard folder (--logging_dir), when it logs there."""
    outcome: tuple[str, str] | None = None
    """(finished|stopped|failed, why) when the run wrote how it ended."""
    tool_done: tuple[int, int, str] | None = None
    """A tool job's count of its work (done, total, unit: "images"), when the tool reports one."""


def read_events(path: Path) -> list[dict[str, Any]]:
    """The progress file's events; a line a killed run left half-written is passed over."""
    if not path.is_file():
        return []
    events = []
    with path.open(encoding="utf-8", errors="replace") as file:
        for line in file:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events


def run_outcome(path: Path) -> tuple[str, str | None] | None:
    """(job state, reason) of a run whose process ended unseen: its last attempt's end event, else done
    when that attempt wrote its final LoRA file, else None (it was killed)."""
    start, end = None, None
    for event in read_events(path):
        if event["event"] == "start":
            start, end = event, None
        elif event["event"] == "end":
            end = event
    if end is not None:
        return OUTCOME_STATES.get(end["outcome"], "failed"), end.get("detail") or None
    if start is not None:
        final = Path(start["lora_file"])
        if final.is_file() and final.stat().st_mtime >= start["time"]:
            return "done", None
    return None


class _Reader:
    """Folds the events, in order, into a JobProgress."""

    def __init__(self) -> None:
        self.progress = JobProgress()
        self.steps_per_epoch: int | None = None
        self.speeds: deque[float] = deque(maxlen=SPEED_WINDOW)

    def read(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.progress.outcome = None
            if event.get("logging_dir"):
                self.progress.log_dir = Path(event["logging_dir"])
        elif kind == "plan":
            self.progress.total_steps, self.progress.epochs = event["total_steps"], event["epochs"]
            self.steps_per_epoch = event["steps_per_epoch"]
            self._rewind(event["initial_step"] + 1)
        elif kind == "scalars":
            self._scalars(event["step"], event["values"])
        elif kind == "images":
            for image in event["images"]:
                sample = (event["step"], self._epoch_of(event["step"]), Path(image["path"]), image["caption"])
                self.progress.samples.append(sample)
        elif kind == "tool_progress":
            self.progress.tool_done = (event["done"], event["total"], event["unit"])
        elif kind == "end":
            self.progress.outcome = (event["outcome"], event.get("detail", ""))

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        progress = self.progress
        for name, value in values.items():
            if name == "loss/epoch_average":
                progress.epoch_losses = [point for point in progress.epoch_losses if point[0] < step]
                progress.epoch_losses.append((step, value))
            elif name == "loss/validation/step_average":
                progress.validation_points.append((step, value))
            elif name == "loss/validation/epoch_average":
                progress.epoch_validation_points.append((step, value))
            elif name.startswith("lr/"):
                progress.lr_points.setdefault(name.removeprefix("lr/"), []).append((step, value))
            elif name == "throughput/s_per_step" and math.isfinite(value):
                self.speeds.append(value)
            elif name == "throughput/images_per_s":
                progress.images_per_s = value
            elif name == "memory/peak_gib":
                progress.memory_gib = value
        if "loss/current" in values:
            if progress.loss_points and step <= progress.loss_points[-1][0]:
                self._rewind(step)
            progress.loss_points.append((step, values["loss/current"], values.get("loss/average", math.nan)))
            progress.step = step

    def _rewind(self, step: int) -> None:
        """A resumed run starts again at `step`: what was logged from there on is replaced."""
        progress = self.progress
        progress.loss_points = [point for point in progress.loss_points if point[0] < step]
        progress.validation_points = [point for point in progress.validation_points if point[0] < step]
        progress.samples = [sample for sample in progress.samples if sample[0] < step]
        for group, points in progress.lr_points.items():
            progress.lr_points[group] = [point for point in points if point[0] < step]
        progress.step = progress.loss_points[-1][0] if progress.loss_points else max(step - 1, 0)

    def _epoch_of(self, step: int) -> int | None:
        if not self.steps_per_epoch:
            return None
        epoch = max(step - 1, 0) // self.steps_per_epoch + 1
        return min(epoch, self.progress.epochs) if self.progress.epochs else epoch

    def finish(self) -> JobProgress:
        progress = self.progress
        if self.speeds:
            progress.seconds_per_step = sum(self.speeds) / len(self.speeds)
        if progress.total_steps is not None:
            progress.epoch = self._epoch_of(max(progress.step, 1))
            if progress.seconds_per_step is not None and progress.outcome is None:
                progress.eta_s = max(progress.total_steps - progress.step, 0) * progress.seconds_per_step
        elif progress.epoch_losses:
            progress.epoch = progress.epoch_losses[-1][0] + (progress.outcome is None)
        return progress


def read_progress_file(path: Path) -> JobProgress:
    reader = _Reader()
    for event in read_events(path):
        reader.read(event)
    return reader.finish()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a console log, each as a terminal would show it (a progress bar redraws
    its line with carriage returns: only its last drawing is kept)."""
    if not path.is_file():
        return []
    # In binary, lines end at \n only: a bar's redraws stay one line.
    with path.open("rb") as file:
        tail = deque(file, maxlen=lines)
    return [line.decode("utf-8", "replace").rstrip("\r\n").rsplit("\r", 1)[-1] for line in tail]


def read_progress(job: Job) -> JobProgress:
    """Everything the job view shows of `job`, from its files."""
    progress = read_progress_file(job.progress_file)
    progress.log_tail = log_tail(job.console_log)
    progress.files = [path for path in output_files(job) if path.suffix in LORA_SUFFIXES and path.is_file()]
    return progress
