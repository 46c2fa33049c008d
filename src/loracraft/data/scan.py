"""Scanning kohya image folders into subsets of image records.

A `--train_data_dir` (or `--reg_data_dir`) holds `N_concept/` folders: N is how often each image is
repeated per epoch, `concept` (everything after the first `_`, underscores kept) is the caption of
images without a caption file. Images are read from the top level of each folder only, in name
order, so the same folder always gives the same dataset. Problems a user can ignore come back as
warning lines for the caller to print; problems that would make the run meaningless raise `UserError`.
"""

import re
from collections import Counter
from pathlib import Path

from PIL import Image

from loracraft.data.caption_files import FALLBACK_EXTENSION, CaptionSource, find_caption
from loracraft.data.records import ImageRecord, Subset
from loracraft.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SUBSET_DIR_NAME = re.compile(r"^(\d+)_(.+)$")
_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientations 5-8 rotate by 90 degrees, so the stored width is the displayed height.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
_MAX_LISTED = 5


def parse_subset_dir_name(name: str) -> tuple[int, str] | None:
    """`"10_sks dog"` -> `(10, "sks dog")`; None when the name is not `N_concept` with N >= 1."""
    match = _SUBSET_DIR_NAME.match(name)
    if match is None or int(match.group(1)) < 1:
        return None
    return int(match.group(1)), match.group(2)


def is_image_file(path: Path) -> bool:
    # Hidden files include macOS `._name.png` resource forks, which carry an image suffix but no image.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def read_image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as displayed, i.e. after EXIF orientation; None when the header is unreadable.

    Pillow parses only the header here, no pixels. One open gives both the size and the EXIF block
    that `images.load_image_rgb` later transposes by, so phone photos stored sideways get the bucket
    of the picture the user sees.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            exif_bytes = img.info.get("exif")
            orientation = Image.Exif().load(exif_bytes) if False else _orientation(exif_bytes)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    if width <= 0 or height <= 0:
        return None
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)
