"""What happens to an image's caption file: kept, written, replaced or appended to, and the text written.

A caption file the user already has is never lost: it is kept unless `--overwrite` (replace it) or
`--append` (add the new text after it) is given. A file with no text in it counts as no caption. The
prefix and suffix (a trigger word, a style tag) are joined with one space, as the kohya_ss GUI's
captioning pages and kohya's `caption_prefix` join them; `--prefix "sks,"` reads as a tag in a tag list.
With `--append`, the new caption's tags that the old one already has are not repeated (kohya's
tagger `--append_tags`). A caption is written on one line (line breaks become spaces): kohya trains on a
caption file's first line only, and a vision-language model's second paragraph would be lost. Files are
written atomically: an interrupted run leaves each caption whole.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from loracraft.atomic import write_text_atomic
from loracraft.data.caption_files import caption_lines, read_caption_file


class Action(Enum):
    WRITE = "written"
    REPLACE = "replaced"
    APPEND = "appended"
    KEEP = "kept"


@dataclass(frozen=True)
class CaptionPolicy:
    overwrite: bool = False
    append: bool = False
    prefix: str = ""
    suffix: str = ""
    separator: str = ", "

    def action_for(self, existing: str | None) -> Action:
        """What to do with a caption file holding `existing` (None: no file, or no text in it)."""
        if existing is None:
            return Action.WRITE
        if self.append:
            return Action.APPEND
        return Action.REPLACE if self.overwrite else Action.KEEP

    def text(self, caption: str, existing: str | None = None) -> str:
        """The file's new text: the caption with the prefix and suffix, after `existing` when appending."""
        caption = _joined(self.prefix, one_line(caption), self.suffix)
        if existing is None or not self.append:
            return caption
        return append_tags(existing, caption, self.separator)


def one_line(text: str) -> str:
    """The caption on one line: kohya trains on a caption file's first line only, so line breaks (and every
    other run of whitespace) become one space; control characters, never text, are dropped."""
    printable = "".join(char for char in text if char.isspace() or unicodedata.category(char) != "Cc")
    return " ".join(printable.split())


def _joined(prefix: str, caption: str, suffix: str) -> str:
    text = caption
    if prefix:
        text = prefix + (text if prefix[-1].isspace() or not text else " " + text)
    if suffix:
        text = (text if suffix[0].isspace() or not text else text + " ") + suffix
    return text


def append_tags(existing: str, new: str, separator: str = ", ") -> str:
    """`existing` followed by the tags of `new` it does not have yet, joined with `separator`."""
    split_on = separator.strip() or separator
    have = {tag.strip() for tag in existing.split(split_on)}
    added = [tag.strip() for tag in new.split(split_on) if tag.strip() and tag.strip() not in have]
    if not added:
        return existing
    return separator.join([existing.rstrip().rstrip(split_on).rstrip(), *dict.fromkeys(added)])


def existing_caption(path: Path) -> str | None:
    """The text of the caption file at `path`, None when there is none or it holds no text."""
    if not path.is_file():
        return None
    text = "\n".join(caption_lines(read_caption_file(path).text))
    return text or None


def write_caption(path: Path, text: str) -> None:
    write_text_atomic(path, text + "\n")
