"""A caption run: each image's caption file decided, the images captioned in batches, the files written.

Images whose caption is kept are not opened. The next batch is decoded (in threads) while the captioner
works on this one. An image that cannot be decoded, or that the captioner fails on, is named in the
summary and the run goes on; a `UserError` from the captioner (an endpoint gone, a model that cannot
run) stops it, keeping every file already written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from loracraft.caption.backend import Captioner
from loracraft.caption.images import caption_path, load_rgb, relative_name
from loracraft.caption.writing import Action, CaptionPolicy, existing_caption, one_line, write_caption
from loracraft.data.file_errors import describe_os_error
from loracraft.errors import UserError
from loracraft.jobs.tool_progress import ToolProgress

_MAX_LISTED = 5


@dataclass(frozen=True)
class CaptionJob:
    """One image to caption: where its caption goes, what that file holds now and what will happen."""

    image: Path
    caption_file: Path
    existing: str | None
    action: Action


@dataclass
class CaptionSummary:
    folder: Path
    actions: dict[Action, int] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def count(self, action: Action) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1

    @property
    def captioned(self) -> int:
        return sum(n for action, n in self.actions.items() if action is not Action.KEEP)

    def lines(self) -> list[str]:
        done = [
            f"{n} {action.value}" for action, n in self.actions.items() if action is not Action.KEEP and n
        ]
        plural = "" if self.captioned == 1 else "s"
        lines = [f"captioned {self.captioned} image{plural}" + (f" ({', '.join(done)})" if done else "")]
        if kept := self.actions.get(Action.KEEP, 0):
            lines.append(
                f"skipped {kept} with a caption already (kept; --overwrite replaces, --append adds to them)"
            )
        if self.failed:
            lines.append(f"failed {len(self.failed)}:")
            lines += [f"  {relative_name(path, self.folder)}: {reason}" for path, reason in self.failed]
        return lines

    def failure_message(self) -> str | None:
        """The run's one error line when images failed (each is listed in the summary above it)."""
        if not self.failed:
            return None
        names = ", ".join(relative_name(path, self.folder) for path, _ in self.failed[:_MAX_LISTED])
        more = f" and {len(self.failed) - _MAX_LISTED} more" if len(self.failed) > _MAX_LISTED else ""
        return (
            f"{len(self.failed)} of {len(self.failed) + self.captioned} images could not be captioned "
            f"({names}{more}); the others were written"
        )


def plan_jobs(
    images: Sequence[Path], caption_extension: str, policy: CaptionPolicy, summary: CaptionSummary
) -> list[CaptionJob]:
    """The images to caption; those whose caption is kept are counted in `summary` and left out."""
    jobs = []
    for image in images:
        caption_file = caption_path(image, caption_extension)
        try:
            existing = existing_caption(caption_file)
        except UserError as error:
            summary.failed.append((image, str(error)))
            continue
        action = policy.action_for(existing)
        if action is Action.KEEP:
            summary.count(action)
        else:
            jobs.append(CaptionJob(image, caption_file, existing, action))
    return jobs


def _load(path: Path) -> Image.Image | Exception:
    try:
        return load_rgb(path)
    except (UserError, OSError) as error:
        return error


def _batches(jobs: list[CaptionJob], size: int) -> Iterator[list[CaptionJob]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and getattr(error, "filename", None):
        problem = describe_os_error(error, Path(error.filename))
        return f"{problem.reason}; {problem.fix}"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text


def caption_images(
    folder: Path,
    jobs: list[CaptionJob],
    captioner: Captioner,
    policy: CaptionPolicy,
    summary: CaptionSummary,
    *,
    workers: int | None = None,
    progress: bool = True,
    on_caption: Callable[[CaptionJob, str], None] | None = None,
) -> CaptionSummary:
    """Caption `jobs` in batches of the captioner's size, writing each file as its caption comes."""
    bar = tqdm(total=len(jobs), unit="image", desc="captioning", disable=not progress, dynamic_ncols=True)
    counter = ToolProgress(len(jobs), "images")
    batches = list(_batches(jobs, max(1, captioner.batch_size)))
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:

        def submit(batch: list[CaptionJob]) -> list[Future]:
            return [pool.submit(_load, job.image) for job in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            loaded = [future.result() for future in pending]
            pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
            _caption_batch(batch, loaded, captioner, policy, summary, on_caption)
            bar.update(len(batch))
            counter.advance(len(batch))
    return summary


def _caption_batch(
    batch: list[CaptionJob],
    loaded: list[Image.Image | Exception],
    captioner: Captioner,
    policy: CaptionPolicy,
    summary: CaptionSummary,
    on_caption: Callable[[CaptionJob, str], None] | None,
) -> None:
    ready = [(job, image) for job, image in zip(batch, loaded, strict=True) if isinstance(image, Image.Image)]
    for job, image in zip(batch, loaded, strict=True):
        if isinstance(image, Exception):
            summary.failed.append((job.image, _reason(image)))
    if not ready:
        return
    try:
        results: list[str | Exception] = captioner.caption([image for _, image in ready])
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a batch's failure is each of its images' failure
        results = [error] * len(ready)
    for (job, _), result in zip(ready, results, strict=True):
        if isinstance(result, Exception):
            summary.failed.append((job.image, _reason(result)))
        elif not one_line(result):
            summary.failed.append((job.image, "the captioner gave no text for it"))
        else:
            _write(job, result, policy, summary)
            if on_caption is not None:
                on_caption(job, result)


def _write(job: CaptionJob, caption: str, policy: CaptionPolicy, summary: CaptionSummary) -> None:
    try:
        write_caption(job.caption_file, policy.text(caption, job.existing))
    except OSError as error:
        problem = describe_os_error(error, job.caption_file)
        summary.failed.append(
            (job.image, f"cannot write {job.caption_file.name} ({problem.reason}); {problem.fix}")
        )
        return
    summary.count(job.action)
