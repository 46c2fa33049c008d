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
            exif = Image.Exif()
            if "exif" in img.info:
                exif.load(img.info["exif"])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    if width <= 0 or height <= 0:
        return None
    if exif.get(_EXIF_ORIENTATION_TAG) in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown} and {len(names) - _MAX_LISTED} more"


def _caption_warnings(
    folder: Path, sources: Counter, total: int, caption_extension: str, class_tokens: str, is_reg: bool
) -> list[str]:
    warnings = []
    if sources[CaptionSource.TXT_FALLBACK]:
        warnings.append(
            f"{folder}: {sources[CaptionSource.TXT_FALLBACK]} of {total} images have no {caption_extension} "
            f"caption, so their {FALLBACK_EXTENSION} file was used (pass --caption_extension "
            f"{FALLBACK_EXTENSION} to make that explicit)"
        )
    if sources[CaptionSource.EMPTY]:
        warnings.append(
            f"{folder}: {sources[CaptionSource.EMPTY]} of {total} caption files are empty; "
            f"those images use the folder caption '{class_tokens}'"
        )
    # Reg images captioned by their folder name are the normal kohya setup; train images are worth a note.
    if sources[CaptionSource.MISSING] and not is_reg:
        warnings.append(
            f"{folder}: {sources[CaptionSource.MISSING]} of {total} images have no {caption_extension} "
            f"caption file; they use the folder caption '{class_tokens}'"
        )
    return warnings


def scan_subset_dir(
    image_dir: Path, *, num_repeats: int, class_tokens: str, is_reg: bool, caption_extension: str
) -> tuple[Subset, list[str]]:
    """Read one image folder into a subset; an empty folder gives an empty subset and a warning."""
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} does not exist; fix the path or create it")
    records, unreadable, sources = [], [], Counter()
    for path in list_images(image_dir):
        size = read_image_size(path)
        if size is None:
            unreadable.append(path.name)
            continue
        caption, source = find_caption(path, caption_extension)
        sources[source] += 1
        records.append(
            ImageRecord(path, caption or class_tokens, size[0], size[1], is_reg=is_reg, subset=image_dir.name)
        )
    if unreadable:
        raise UserError(
            f"{len(unreadable)} unreadable image(s) in {image_dir}: {_listed(unreadable)}; "
            "re-save them as PNG/JPEG or remove them"
        )
    subset = Subset(image_dir, class_tokens, num_repeats, is_reg, tuple(records))
    if not records:
        return subset, [f"{image_dir} has no images ({' '.join(IMAGE_EXTENSIONS)}); skipped"]
    return subset, _caption_warnings(
        image_dir, sources, len(records), caption_extension, class_tokens, is_reg
    )


def scan_dreambooth_dir(
    root: Path, *, is_reg: bool, caption_extension: str
) -> tuple[list[Subset], list[str]]:
    """All `N_concept/` subsets under `--train_data_dir` (or `--reg_data_dir` when `is_reg`), with warnings."""
    flag = "--reg_data_dir" if is_reg else "--train_data_dir"
    if not root.is_dir():
        raise UserError(f"{flag} {root} does not exist or is not a folder")
    subsets, warnings, misnamed, loose_images = [], [], [], 0
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            loose_images += is_image_file(entry)
            continue
        parsed = parse_subset_dir_name(entry.name)
        if parsed is None:
            misnamed.append(f"'{entry.name}'")
            continue
        subset, subset_warnings = scan_subset_dir(
            entry,
            num_repeats=parsed[0],
            class_tokens=parsed[1],
            is_reg=is_reg,
            caption_extension=caption_extension,
        )
        warnings += subset_warnings
        if subset.records:
            subsets.append(subset)
    if misnamed:
        warnings.append(
            f"{flag} {root}: skipped folder(s) {_listed(misnamed)}: not named N_concept "
            "(N = repeats >= 1, e.g. 10_mychar)"
        )
    if loose_images:
        warnings.append(
            f"{flag} {root}: ignored {loose_images} image(s) lying directly in it; images go in N_concept/ subfolders"
        )
    if not subsets:
        raise UserError(
            f"{flag} {root} has no images in N_concept/ subfolders; "
            f"expected e.g. {root / '10_mychar' / 'image.png'} (+ image.txt), N = repeats per epoch"
        )
    return subsets, warnings
