"""Finding and reading an image's caption file, with loracraft's `.txt` fallback.

kohya reads `<stem><caption_extension>` (default `.caption`). Many kohya_ss GUI users keep `.txt`
captions and leave the extension at its default, and kohya then trains every image on its folder
name without a word. We read `<stem>.txt` when the configured file is missing, and the scanner warns
once per folder with the count so the user knows which files were used.
"""

from enum import Enum
from pathlib import Path

from loracraft.errors import UserError

FALLBACK_EXTENSION = ".txt"


class CaptionSource(Enum):
    FILE = "file"
    TXT_FALLBACK = "txt fallback"
    EMPTY = "empty"
    MISSING = "missing"


def read_caption_file(path: Path) -> str:
    """The first line of a UTF-8 caption file, stripped (kohya uses only the first line)."""
    try:
        # utf-8-sig: Windows Notepad writes a byte-order mark that would otherwise start the caption.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"caption file {path} is not UTF-8 text; re-save it with UTF-8 encoding") from err
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def find_caption(image: Path, caption_extension: str) -> tuple[str | None, CaptionSource]:
    """The caption for `image` and where it came from; None when there is no usable caption file."""
    candidates = [(image.with_name(image.stem + caption_extension), CaptionSource.FILE)]
    if caption_extension != FALLBACK_EXTENSION:
        candidates.append((image.with_name(image.stem + FALLBACK_EXTENSION), CaptionSource.TXT_FALLBACK))
    for path, source in candidates:
        if path.is_file():
            caption = read_caption_file(path)
            return (caption, source) if caption else (None, CaptionSource.EMPTY)
    return None, CaptionSource.MISSING
