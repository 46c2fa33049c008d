"""Finding unusable images before training, so a corrupt file stops the run in seconds, not hours in.

Scanning reads only headers and returns the images whose header fails. `check_images` decodes every
other image completely (truncated files fail only there) through the same code that loads them for
training. JPEGs are decoded at 1/8 scale by their DCT: every byte of the file is still read and
entropy-decoded, at a fraction of the cost. The run (`training.dataset_setup.screen_datasets`) then
applies `--skip_bad_images` to both kinds together: drop each bad image with a warning naming it, or
(the default) stop with one error listing them all.
"""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from loracraft.data.images import RESAVE_FIX, ImageFileError, decode_upright, open_image
from loracraft.data.records import ImageRecord, Subset

_MAX_LISTED = 3
_SMALLEST = (1, 1)


@dataclass(frozen=True)
class BadImage:
    """An image that cannot be trained on: the short cause, and what the user can do about it."""

    path: Path
    reason: str
    fix: str = RESAVE_FIX


def find_image_problem(path: Path) -> BadImage | None:
    """Why `path` cannot be trained on, or None when it decodes completely."""
    try:
        with open_image(path) as img:
            decode_upright(img, path, at_least=_SMALLEST)
    except ImageFileError as err:
        return BadImage(path, err.reason, err.fix)
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
    return [problem for problem in problems if problem is not None]


def _described(item: BadImage) -> str:
    # The closing advice of a listing fits corrupt files; other causes (a broken link, no permission,
    # too many pixels) carry their own fix.
    return (
        f"{item.path} ({item.reason})"
        if item.fix == RESAVE_FIX
        else f"{item.path} ({item.reason}: {item.fix})"
    )


def bad_images_listing(bad: Sequence[BadImage]) -> str:
    """The first few bad images with their reasons (and fixes other than re-saving), and how many more."""
    shown = "; ".join(_described(item) for item in bad[:_MAX_LISTED])
    return shown + (f"; and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else "")


def bad_images_message(bad: Sequence[BadImage]) -> str:
    """One line: how many, the first few with their reasons, and the fixes."""
    return (
        f"{len(bad)} image(s) cannot be decoded: {bad_images_listing(bad)}. "
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
