"""Finding and reading an image's caption file, with loracraft's `.txt` and text-encoding fallbacks.

kohya reads `<stem><caption_extension>` (default `.caption`). Many kohya_ss GUI users keep `.txt`
captions and leave the extension at its default, and kohya then trains every image on its folder
name without a word. We read `<stem>.txt` when the configured file is missing, and the scanner warns
once per folder with the count so the user knows which files were used.

kohya needs UTF-8 and stops on anything else. Captions written by older Windows tools are often in
the ANSI code page, so we decode in this order: UTF-8 (with or without the byte-order mark Notepad
writes), UTF-16 when the file starts with its byte-order mark (Notepad's "Unicode"), then Windows-1252
and finally Latin-1, which accepts any byte. The last two are guesses: the scanner warns with the file
names so the user can check the words and re-save the files as UTF-8.

Empty lines are dropped: a caption is the file's non-empty lines, stripped. kohya takes the first line as
it is, so a file starting with a blank line (`\nzxq, cat`) trains on an empty caption there (without
`--enable_wildcard`, which drops empty lines too). A stray leading newline silently erasing a caption is
a trap, so we train on the first non-empty line and the scanner names such files in a warning. A file
with no text at all gives the folder caption (kohya: an empty caption, or an assertion error when the
file has no bytes).
"""

import codecs
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from loracraft.errors import UserError

FALLBACK_EXTENSION = ".txt"


class CaptionSource(Enum):
    FILE = "file"
    TXT_FALLBACK = "txt fallback"
    EMPTY = "empty"
    MISSING = "missing"


@dataclass(frozen=True)
class FoundCaption:
    """An image's caption (None when there is no usable file) and how it was read."""

    text: str | None
    source: CaptionSource
    path: Path | None = None
    # Set when the file was not Unicode and its encoding was guessed ("cp1252" or "latin-1").
    guessed_encoding: str | None = None
    # The first line is blank and a later one is not, where kohya's caption would be empty.
    blank_first_line: bool = False


def decode_caption_bytes(data: bytes) -> tuple[str, str | None]:
    """The text of a caption file and the encoding guessed for it (None when it was Unicode)."""
    # utf-8-sig: Windows Notepad writes a byte-order mark that would otherwise start the caption.
    unicode = ["utf-8-sig"]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        unicode.insert(0, "utf-16")
    for encoding in unicode:
        try:
            return data.decode(encoding), None
        except UnicodeDecodeError:
            continue
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        # Five bytes are undefined in Windows-1252; Latin-1 maps every byte.
        return data.decode("latin-1"), "latin-1"


def read_caption_file(path: Path) -> tuple[str, str | None]:
    """The decoded text of a caption file, and the guessed encoding when the file was not Unicode."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read caption file {path} ({err}); check its permissions") from err
    return decode_caption_bytes(data)


def caption_lines(text: str) -> list[str]:
    """The non-empty lines of a caption file, stripped. Training uses the first, or with --enable_wildcard
    a random one (`captions.process_caption`), as kohya does."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def starts_with_blank_line(text: str) -> bool:
    """Whether kohya's `lines[0].strip()` is empty although the file holds a caption further down."""
    lines = text.splitlines()
    return bool(lines) and not lines[0].strip() and any(line.strip() for line in lines)


def find_caption(
    image: Path, caption_extension: str, folder_files: Collection[str] | None = None
) -> FoundCaption:
    """The caption for `image` from `<stem><caption_extension>`, else `<stem>.txt`.

    `folder_files`, the names of the files in the image's folder, saves a `stat` per candidate when a
    caller scans a whole folder; without it each candidate is looked up on disk.
    """
    candidates = [(image.stem + caption_extension, CaptionSource.FILE)]
    if caption_extension != FALLBACK_EXTENSION:
        candidates.append((image.stem + FALLBACK_EXTENSION, CaptionSource.TXT_FALLBACK))
    for name, source in candidates:
        exists = (name in folder_files) if folder_files is not None else image.with_name(name).is_file()
        if exists:
            path = image.with_name(name)
            text, guessed = read_caption_file(path)
            caption = "\n".join(caption_lines(text))
            source = source if caption else CaptionSource.EMPTY
            return FoundCaption(caption or None, source, path, guessed, starts_with_blank_line(text))
    return FoundCaption(None, CaptionSource.MISSING)
