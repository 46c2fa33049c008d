"""What the job page shows, computed from a job and its progress: plain values the Gradio wiring
hands to its components (text, tables for the plots, gallery items), testable without a browser.

A running job and a finished one read the same way: `read_progress` gathers both from the job's files.
"""

from __future__ import annotations

import html
import math
import shlex
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from loracraft.training.throughput_record import duration

if TYPE_CHECKING:
    from pathlib import Path

    from loracraft.jobs.progress import JobProgress
    from loracraft.jobs.queue import Job

FINISHED_STATES = ("done", "failed", "stopped", "interrupted", "cancelled")


@dataclass(frozen=True)
class JobPage:
    """Everything the job page shows for one job, in the order of its components."""

    headline: str
    progress: str
    speed: str
    loss: pd.DataFrame | None
    lr: pd.DataFrame | None
    validation: pd.DataFrame | None
    samples: list[tuple[str, str]]
    log: str
    outputs: str


def job_page(job: Job, progress: JobProgress) -> JobPage:
    return JobPage(
        headline=headline(job),
        progress=progress_bar(progress) if job.tool_argv is None else tool_command_line(job, progress),
        speed=speed_line(progress),
        loss=loss_table(progress),
        lr=lr_table(progress),
        validation=validation_table(progress),
        samples=sample_gallery(progress),
        log="\n".join(progress.log_tail),
        outputs=output_lines(job, progress),
    )


def headline(job: Job) -> str:
    reason = f": {job.exit_reason}" if job.exit_reason and job.state in FINISHED_STATES else ""
    return f"Job {job.id} · {job.name} · {job.state}{reason}"


def progress_line(progress: JobProgress) -> str:
    """ "step 120/400 (30%) · epoch 2/10 · ETA 3 min 12 s", the parts that are known so far."""
    if progress.total_steps:
        percent = 100 * progress.step / progress.total_steps
        parts = [f"step {progress.step}/{progress.total_steps} ({percent:.0f}%)"]
    else:
        parts = [f"step {progress.step}"]
    if progress.epoch:
        parts.append(
            f"epoch {progress.epoch}/{progress.epochs}" if progress.epochs else f"epoch {progress.epoch}"
        )
    if progress.eta_s is not None:
        parts.append(f"ETA {duration(progress.eta_s)}")
    return " · ".join(parts)


def progress_bar(progress: JobProgress) -> str:
    """The progress line under a bar of the steps done (HTML; no bar while the step count is unknown)."""
    line = f"<span class='job-progress-line'>{html.escape(progress_line(progress))}</span>"
    if not progress.total_steps:
        return line
    bar = f"<progress value='{progress.step}' max='{progress.total_steps}'></progress>"
    return bar + line


def tool_command_line(job: Job, progress: JobProgress | None = None) -> str:
    """A tool job's place of the progress bar: the command it runs, under a bar of its work when the tool
    counts it (captioning: images)."""
    command = html.escape(f"loracraft {shlex.join(job.tool_argv)}")
    line = f"<span class='job-progress-line'>{command}</span>"
    if progress is None or progress.tool_done is None:
        return line
    done, total, unit = progress.tool_done
    percent = f" ({100 * done / total:.0f}%)" if total else ""
    count = html.escape(f"{done}/{total} {unit}{percent}")
    bar = f"<progress value='{done}' max='{max(total, 1)}'></progress>"
    return f"{bar}<span class='job-progress-line'>{count}</span> {line}"


def speed_line(progress: JobProgress) -> str:
    parts = []
    if progress.images_per_s is not None:
        parts.append(f"{progress.images_per_s:.2f} images/s")
    if progress.memory_gib is not None:
        parts.append(f"{progress.memory_gib:.2f} GiB peak memory")
    return " · ".join(parts)


def loss_table(progress: JobProgress) -> pd.DataFrame | None:
    """Long form (step, loss, curve) that gr.LinePlot draws as one line a curve: the step's loss, its
    moving average and the epochs' averages (at the epoch's last step)."""
    curves = {
        "loss": [(step, loss) for step, loss, _ in progress.loss_points],
        "average": [(step, average) for step, _, average in progress.loss_points],
        "epoch average": progress.epoch_losses,
    }
    return _long_table(curves, "loss", "curve")


def lr_table(progress: JobProgress) -> pd.DataFrame | None:
    return _long_table(progress.lr_points, "lr", "parameters")


def validation_table(progress: JobProgress) -> pd.DataFrame | None:
    curves = {"validation": progress.validation_points, "epoch average": progress.epoch_validation_points}
    return _long_table(curves, "validation loss", "curve")


def _long_table(curves: dict[str, list[tuple[int, float]]], value: str, series: str) -> pd.DataFrame | None:
    # A NaN (an average not yet known) would break the line; leave the point out.
    rows = [(step, y, name) for name, points in curves.items() for step, y in points if not math.isnan(y)]
    if not rows:
        # No table at all: a plot drawn from an empty table keeps that table's (empty) curves and axis
        # types when the points arrive, so a job watched from its start showed no lines.
        return None
    return pd.DataFrame(rows, columns=["step", value, series])


def sample_gallery(progress: JobProgress) -> list[tuple[str, str]]:
    """The sample images oldest first, so the gallery reads by step/epoch; each caption gives both and the
    prompt."""
    ordered = sorted(progress.samples, key=lambda sample: (sample[0], str(sample[2])))
    return [(str(path), f"{_when(step, epoch)}: {prompt}") for step, epoch, path, prompt in ordered]


def _when(step: int, epoch: int | None) -> str:
    return f"step {step} · epoch {epoch}" if epoch is not None else f"step {step}"


def output_lines(job: Job, progress: JobProgress) -> str:
    """Where the job's results are (Markdown): its LoRA files as download links (served by the JSON API,
    so a UI on another machine hands them over too), its TensorBoard folder and its own folder."""
    if progress.files:
        links = [f"[{_markdown_text(path.name)}]({file_url(job, path)})" for path in progress.files]
        lines = [f"**LoRA files** (in `{job.output_dir}`): " + " · ".join(links)]
    else:
        lines = [f"**LoRA files**: none yet in `{job.output_dir}`"]
    if progress.log_dir is not None:
        lines.append(f"**TensorBoard**: `tensorboard --logdir {progress.log_dir}`")
    lines.append(f"**Job folder**: `{job.folder}`")
    return "\n\n".join(lines)


def file_url(job: Job, path: Path) -> str:
    """The download link of one of the job's LoRA files, relative to the page (http_api.py serves it)."""
    return f"api/jobs/{job.id}/files/{urllib.parse.quote(path.name)}"


def _markdown_text(text: str) -> str:
    return "".join(f"\\{char}" if char in "\\`*_[]()<>#!|" else char for char in text)
