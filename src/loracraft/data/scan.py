"""Scanning kohya image folders into subsets of image records.

A `--train_data_dir` (or `--reg_data_dir`) holds `N_concept/` folders: N is how often each image is
repeated per epoch, `concept` (everything after the first `_`, underscores kept) is the caption of
images without a caption file. Images are read from the top level of each folder only, in name
order, so the same folder always gives the same dataset. Hidden files (macOS `._a.png`, `.DS_Store`)
and anything without an image extension (caption files, `.npz` caches) are not images. Only headers
are read here, never pixels: `image_check` decodes the images before training. Problems a user can
ignore come back as warning lines for the caller to print; problems that would make the run
meaningless raise `UserError`.
"""

import os
import re
from collections import Counter
from pathlib import Path

from loracraft.data.cache_names import shared_stem_paths
from loracraft.data.caption_files import FALLBACK_EXTENSION, CaptionSource, find_caption
from loracraft.data.image_check import BadImage, skipped_image_warning
from loracraft.data.images import ImageFileError, open_image, upright_size
from loracraft.data.records import ImageRecord, Subset
from loracraft.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SUBSET_DIR_NAME = re.compile(r"^(\d+)_(.+)$")
_MAX_LISTED = 5


def parse_subset_dir_name(name: str) -> tuple[int, str] | None:
    """`"10_sks dog"` -> `(10, "sks dog")`; None when the name is not `N_concept` with N >= 1."""
    match = _SUBSET_DIR_NAME.match(name)
    if match is None or int(match.group(1)) < 1:
        return None
    return int(match.group(1)), match.group(2)


def _is_image_name(name: str) -> bool:
    # Hidden files include macOS `._name.png` resource forks, which carry an image suffix but no image.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_image_file(path: Path) -> bool:
    return _is_image_name(path.name) and path.is_file()


def list_folder(folder: Path) -> tuple[list[Path], set[str]]:
    """The folder's images in name order, and the names of all its files (to find captions without a
    `stat` per candidate: one directory read serves the whole folder)."""
    with os.scandir(folder) as entries:
        files = [entry.name for entry in entries if entry.is_file()]
    return [folder / name for name in sorted(files) if _is_image_name(name)], set(files)


def list_images(folder: Path) -> list[Path]:
    """The folder's images (top level, not hidden) in name order."""
    return list_folder(folder)[0]


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after EXIF orientation, from the header alone.

    Phone photos stored sideways thus get the bucket of the picture the user sees. An unreadable
    header or an image over `images.MAX_IMAGE_PIXELS` raises `ImageFileError`.
    """
    with open_image(path) as img:
        width, height = upright_size(img)
    if width <= 0 or height <= 0:
        raise ImageFileError(path, f"invalid size {width}x{height}")
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


def _folder_notes(folder: Path, paths: list[Path], guessed: list[tuple[Path, str]]) -> list[str]:
    """Warnings about names and encodings that kohya would mishandle and we handle."""
    warnings = []
    if guessed:
        names = [f"{path.name} ({encoding})" for path, encoding in guessed]
        warnings.append(
            f"{folder}: {len(guessed)} caption file(s) are not UTF-8 and were read with a guessed encoding: "
            f"{_listed(names)}; if their words look wrong in the tag list, re-save them as UTF-8"
        )
    shared = sorted(path.name for path in shared_stem_paths(paths))
    if shared:
        warnings.append(
            f"{folder}: images {_listed(shared)} share a name apart from the extension; all of them train, "
            "with the same caption file, and their cache files keep the extension to stay apart"
        )
    return warnings


def _unreadable(folder: Path, bad: list[BadImage], skip_bad_images: bool) -> list[str]:
    """Warnings for skipped unreadable images, or the error that stops the run."""
    if skip_bad_images:
        return [skipped_image_warning(item) for item in bad]
    first = bad[0]
    raise UserError(
        f"{len(bad)} unreadable image(s) in {folder}: {_listed([item.path.name for item in bad])}; re-save "
        f"them as PNG/JPEG, remove them or pass --skip_bad_images ({first.path.name}: {first.reason})"
    )


def scan_subset_dir(
    image_dir: Path,
    *,
    num_repeats: int,
    class_tokens: str,
    is_reg: bool,
    caption_extension: str,
    skip_bad_images: bool = False,
) -> tuple[Subset, list[str]]:
    """Read one image folder into a subset; an empty folder gives an empty subset and a warning.

    Images whose header cannot be read stop the scan with one error per folder, or are skipped with a
    warning each when `skip_bad_images`.
    """
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} does not exist; fix the path or create it")
    records, bad, guessed, sources = [], [], [], Counter()
    paths, file_names = list_folder(image_dir)
    for path in paths:
        try:
            width, height = read_image_size(path)
        except ImageFileError as err:
            bad.append(BadImage(path, err.reason))
            continue
        found = find_caption(path, caption_extension, file_names)
        sources[found.source] += 1
        if found.guessed_encoding:
            guessed.append((found.path, found.guessed_encoding))
        records.append(
            ImageRecord(path, found.text or class_tokens, width, height, is_reg=is_reg, subset=image_dir.name)
        )
    warnings = _unreadable(image_dir, bad, skip_bad_images) if bad else []
    subset = Subset(image_dir, class_tokens, num_repeats, is_reg, tuple(records))
    if not records:
        return subset, [*warnings, f"{image_dir} has no images ({' '.join(IMAGE_EXTENSIONS)}); skipped"]
    return subset, [
        *warnings,
        *_caption_warnings(image_dir, sources, len(records), caption_extension, class_tokens, is_reg),
        *_folder_notes(image_dir, [record.path for record in records], guessed),
    ]


def scan_dreambooth_dir(
    root: Path, *, is_reg: bool, caption_extension: str, skip_bad_images: bool = False
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
            skip_bad_images=skip_bad_images,
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
