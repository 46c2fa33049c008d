"""A folder's caption files as a bulk edit sees them: read, changes planned, shown, then written.

Each image of the folder (found as training and `loracraft caption` find them) has its caption in
`<stem><caption_extension>` beside it, as kohya reads it. The files are read with the training reader's
encoding fallbacks (UTF-8, UTF-16 with a byte-order mark, then Windows-1252) and changed files are
written back as UTF-8, each atomically.

The plan and the writing are two steps (the web UI shows the plan, the command prints it for
`--dry_run`). A caption changed on disk in between (by the user's editor, another tool) is never
overwritten with an edit of its old text: the writing checks every file first and refuses, in one line
naming the file, before it writes any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from loracraft.atomic import write_text_atomic
from loracraft.caption.images import caption_path, find_images, relative_name
from loracraft.caption.tag_edits import TagEdits, edit_caption
from loracraft.data.caption_files import MAX_CAPTION_BYTES, read_caption_file
from loracraft.data.file_errors import describe_os_error
from loracraft.errors import UserError


@dataclass(frozen=True)
class CaptionFile:
    """An image and its caption file's text ("" when it has none; `exists` tells an empty file from
    none)."""

    image: Path
    caption_file: Path
    text: str
    exists: bool = True


@dataclass(frozen=True)
class CaptionChange:
    """A caption file's text before and after an edit; `before` is "" for a file the edit creates."""

    caption_file: Path
    before: str
    after: str


def read_caption_folder(
    folder: Path, caption_extension: str = ".txt", recursive: bool = False
) -> list[CaptionFile]:
    """Every image of `folder` (with `recursive`, of its subfolders too) and its caption, in order."""
    return [_read(image, caption_path(image, caption_extension)) for image in find_images(folder, recursive)]


def _read(image: Path, path: Path) -> CaptionFile:
    if not path.is_file():
        return CaptionFile(image, path, "", exists=False)
    return CaptionFile(image, path, _current_text(path))


def _current_text(path: Path) -> str:
    """The whole text of the caption file at `path`; "" when there is none."""
    if not path.exists():
        return ""
    read = read_caption_file(path)
    if read.truncated:
        # Editing the first 64 KiB and writing them back would lose the rest of the file.
        raise UserError(
            f"{path} is longer than {MAX_CAPTION_BYTES // 1024} KiB, more than any caption; "
            "move it out of the image folder or shorten it"
        )
    return read.text


def plan_changes(
    files: Sequence[CaptionFile], edits: TagEdits, create_missing: bool = False
) -> list[CaptionChange]:
    """The caption files `edits` change, with their new text. An image without a caption file gets one
    only with `create_missing` (and when the edits give it tags)."""
    changes = []
    for file in files:
        if not file.exists and not create_missing:
            continue
        after = edit_caption(file.text, edits)
        if not file.exists and after:
            after += "\n"
        if after != file.text:
            changes.append(CaptionChange(file.caption_file, file.text, after))
    return changes


def apply_changes(changes: Sequence[CaptionChange]) -> None:
    """Write every change, after checking that no caption file changed since it was read (else nothing
    is written)."""
    for change in changes:
        if _current_text(change.caption_file) != change.before:
            raise UserError(
                f"{change.caption_file} changed on disk since the captions were read; nothing was written, "
                "run the edit again"
            )
    for written, change in enumerate(changes):
        try:
            write_text_atomic(change.caption_file, change.after)
        except OSError as error:
            problem = describe_os_error(error, change.caption_file)
            raise UserError(
                f"cannot write {change.caption_file} ({problem.reason}) after {written} of {len(changes)} "
                f"caption files; {problem.fix}"
            ) from error


def diff_lines(changes: Sequence[CaptionChange], folder: Path) -> list[str]:
    """Each change as its file's name and, per line that changes, the line before ("-") and after ("+")."""
    lines = []
    for change in changes:
        name = relative_name(change.caption_file, folder)
        lines.append(name if change.caption_file.exists() else f"{name} (new file)")
        before, after = change.before.splitlines(), change.after.splitlines()
        for old, new in zip_longest(before, after, fillvalue=""):
            if old != new:
                lines += [f"  - {old}"] * bool(old) + [f"  + {new}"] * bool(new)
    return lines
