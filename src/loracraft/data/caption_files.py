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

Caption files are read up to `MAX_CAPTION_BYTES`; the scanner names the longer ones.
"""

import codecs
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from loracraft.data.file_errors import describe_os_error
from loracraft.errors import UserError

FALLBACK_EXTENSION = ".txt"
# A caption trains on at most 225 tokens (kohya's longest --max_token_length), a few thousand characters
# even as a long tag list, and --enable_wildcard files hold a few dozen such lines: 64 KiB holds any real
# caption many times over. A larger file is a mistake (a log or a whole tag dump saved as .txt) whose
# text would be shuffled and tokenized on every step: a 5 MB file made each step take ~35 s.
MAX_CAPTION_BYTES = 64 * 1024


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
    # The file is longer than MAX_CAPTION_BYTES and only its beginning was read.
    truncated: bool = False


@dataclass(frozen=True)
class CaptionFileText:
    """A caption file's decoded text; `guessed_encoding` is set when the file was not Unicode."""

    text: str
    guessed_encoding: str | None = None
    truncated: bool = False


def _decode(data: bytes, encoding: str, complete: bool) -> str:
    # A file cut at MAX_CAPTION_BYTES may end inside a character; the incremental decoder leaves that
    # character out instead of failing (which would make a UTF-8 file look like a guessed encoding).
    return codecs.getincrementaldecoder(encoding)().decode(data, final=complete)


def decode_caption_bytes(data: bytes, *, complete: bool = True) -> tuple[str, str | None]:
    """The text of a caption file and the encoding guessed for it (None when it was Unicode).
    `complete` is False for the beginning of a longer file."""
    # utf-8-sig: Windows Notepad writes a byte-order mark that would otherwise start the caption.
    unicode = ["utf-8-sig"]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        unicode.insert(0, "utf-16")
    for encoding in unicode:
        try:
            return _decode(data, encoding, complete), None
        except UnicodeDecodeError:
            continue
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        # Five bytes are undefined in Windows-1252; Latin-1 maps every byte.
        return data.decode("latin-1"), "latin-1"


def _without_cut_piece(text: str) -> str:
    """A truncated caption up to its last line break or comma, so no half tag trains (unless the cut
    text has neither)."""
    end = max(text.rfind("\n"), text.rfind(","))
    return text[:end] if end > 0 else text


def read_caption_file(path: Path) -> CaptionFileText:
    """The decoded text of a caption file, at most its first MAX_CAPTION_BYTES."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CAPTION_BYTES + 1)
    except OSError as err:
        problem = describe_os_error(err, path)
        raise UserError(f"cannot read caption file {path} ({problem.reason}); {problem.fix}") from err
    if len(data) <= MAX_CAPTION_BYTES:
        return CaptionFileText(*decode_caption_bytes(data))
    text, guessed = decode_caption_bytes(data[:MAX_CAPTION_BYTES], complete=False)
    return CaptionFileText(_without_cut_piece(text), guessed, truncated=True)


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
            read = read_caption_file(path)
            caption = "\n".join(caption_lines(read.text))
            source = source if caption else CaptionSource.EMPTY
            blank_first = starts_with_blank_line(read.text)
            return FoundCaption(
                caption or None, source, path, read.guessed_encoding, blank_first, read.truncated
            )
    return FoundCaption(None, CaptionSource.MISSING)
