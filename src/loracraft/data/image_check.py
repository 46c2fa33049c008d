"""Finding unusable images before training, so a corrupt file stops the run in seconds, not hours in.

Scanning reads only headers. `check_images` decodes every image completely (truncated files fail only
there) through the same code that loads them for training. JPEGs are decoded at 1/8 scale by their
DCT: every byte of the file is still read and entropy-decoded, at a fraction of the cost.
`screen_images` then applies `--skip_bad_images`: drop each bad image with a warning naming it, or
(the default) stop with one error listing them.
"""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from loracraft.data.images import ImageFileError, decode_upright, open_image
from loracraft.data.records import ImageRecord, Subset
from loracraft.errors import UserError

_MAX_LISTED = 3
_SMALLEST = (1, 1)


@dataclass(frozen=True)
class BadImage:
    path: Path
    reason: str


def find_image_problem(path: Path) -> str | None:
    """Why `path` cannot be trained on, or None when it decodes completely."""
    try:
        with open_image(path) as img:
            decode_upright(img, path, at_least=_SMALLEST)
    except ImageFileError as err:
        return err.reason
    return None


def check_images(records: Sequence[ImageRecord], *, progress: bool = True) -> list[BadImage]:
    """Every record whose image fails to decode, in record order."""
    paths = [record.path for record in records]
    # Pillow decodes with the GIL released, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        problems = list(
            tqdm(
                pool.map(find_image_problem, paths),
                total=len(paths),
                desc="checking images",
                unit="img",
                disable=not progress,
            )
        )
    return [BadImage(path, problem) for path, problem in zip(paths, problems, strict=True) if problem]


def _listing(bad: Sequence[BadImage]) -> str:
    shown = "; ".join(f"{item.path} ({item.reason})" for item in bad[:_MAX_LISTED])
    return shown + (f"; and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else "")


def bad_images_message(bad: Sequence[BadImage]) -> str:
    """One line: how many, the first few with their reasons, and the fixes."""
    return (
        f"{len(bad)} image(s) cannot be decoded: {_listing(bad)}. "
        "Re-save or remove them, or pass --skip_bad_images to train without them"
    )


def skipped_image_warning(item: BadImage) -> str:
    return f"skipped image {item.path} ({item.reason}) because of --skip_bad_images"


def drop_images(subsets: Sequence[Subset], paths: set[Path]) -> list[Subset]:
    """The subsets without the images at `paths`; subsets left empty are dropped."""
    kept = []
    for subset in subsets:
        records = tuple(record for record in subset.records if record.path not in paths)
        if records:
            kept.append(replace(subset, records=records))
    return kept


def screen_images(
    subsets: Sequence[Subset], *, skip_bad_images: bool, progress: bool = True
) -> tuple[list[Subset], list[str]]:
    """Decode-check every image: the usable subsets and warnings, or a `UserError` listing the bad ones."""
    bad = check_images([record for subset in subsets for record in subset.records], progress=progress)
    if not bad:
        return list(subsets), []
    if not skip_bad_images:
        raise UserError(bad_images_message(bad))
    kept = drop_images(subsets, {item.path for item in bad})
    if not any(not subset.is_reg for subset in kept):
        raise UserError(f"every training image was skipped as undecodable: {_listing(bad)}; re-save them")
    return kept, [skipped_image_warning(item) for item in bad]
