"""`loracraft dataset check DIR_or_TOML [train flags]`: the dataset doctor.

It reads a `--train_data_dir` (or a `dataset prepare` tree with img/ and reg/, or a dataset TOML) the way
training would and reports, without a model: images and caption coverage per subset, files that do not
decode, images with fewer pixels than the training resolution's area (they are enlarged), near-duplicates,
the most frequent tags, and the plan's buckets and step arithmetic. Errors (unreadable files, no images, misnamed folders, a broken
config) make it exit with status 1; warnings alone leave it at 0.

Near-duplicates are found with a 64-bit difference hash (dHash: the image shrunk to 9x8 grey pixels, one
bit per horizontal neighbour pair saying which is brighter). It survives resizing, re-encoding and small
colour changes; two images whose hashes differ in at most `DUPLICATE_DISTANCE` bits are reported.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from loracraft.config.cli_args import add_config_flags, parse_train_flags
from loracraft.config.dataset_config import DatasetBlueprint, SubsetBlueprint, load_dataset_config
from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.fields import options_of
from loracraft.config.load import build_config
from loracraft.config.schema import TrainConfig
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.caption_files import CaptionSource
from loracraft.data.image_check import BadImage
from loracraft.data.images import ImageFileError, decode_upright, open_image
from loracraft.data.metadata import folder_tag_counts
from loracraft.data.plan import DatasetSpec, build_run_plan
from loracraft.data.records import ImageRecord, Subset
from loracraft.data.scan import find_subset_dirs, parse_subset_dir_name
from loracraft.data.summary import format_plan
from loracraft.errors import UserError
from loracraft.tools.tool_parser import ToolParser
from loracraft.training.dataset_setup import scan_planned_subset

# Out of 64 bits: re-saved, resized or lightly edited copies land within it, different pictures far outside.
DUPLICATE_DISTANCE = 4
TOP_TAGS = 20
_HASH_SIZE = (9, 8)
# JPEGs decode at a reduced DCT scale down to this size: every byte is still read, at a fraction of the cost.
_DECODE_AT_LEAST = (64, 64)
_MAX_LISTED = 5


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CheckedImage:
    path: Path
    width: int
    height: int
    dhash: int


def difference_hash(img: Image.Image) -> int:
    """The 64-bit dHash of an image (see the module docstring)."""
    grey = img.convert("L").resize(_HASH_SIZE, Image.Resampling.BOX)
    pixels = list(grey.getdata())
    width = _HASH_SIZE[0]
    bits = 0
    for row in range(_HASH_SIZE[1]):
        for col in range(width - 1):
            left, right = pixels[row * width + col], pixels[row * width + col + 1]
            bits = (bits << 1) | (right > left)
    return bits


def near_duplicates(
    images: Sequence[CheckedImage], max_distance: int = DUPLICATE_DISTANCE
) -> list[tuple[CheckedImage, CheckedImage, int]]:
    """(a, b, distance) for every pair whose hashes differ in at most `max_distance` bits."""
    pairs = ((a, b, (a.dhash ^ b.dhash).bit_count()) for a, b in itertools.combinations(images, 2))
    return [pair for pair in pairs if pair[2] <= max_distance]


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown} and {len(names) - _MAX_LISTED} more"


def _decode(record: ImageRecord) -> CheckedImage | BadImage:
    """Decode the whole file (a truncated one fails here) and hash it, or say why it cannot be used."""
    try:
        with open_image(record.path) as img:
            rgb, _ = decode_upright(img, record.path, at_least=_DECODE_AT_LEAST)
    except ImageFileError as err:
        return BadImage(record.path, err.reason, err.fix)
    return CheckedImage(record.path, record.width, record.height, difference_hash(rgb))


def _bad_image_error(label: str, item: BadImage) -> str:
    return f"{label}: {ImageFileError(item.path, item.reason, item.fix)}"


def _caption_line(sources: Counter, total: int, subset: SubsetBlueprint) -> str:
    own = sources[CaptionSource.FILE]
    parts = [f"{own} of {total} captioned ({subset.options.caption_extension})"]
    if sources[CaptionSource.TXT_FALLBACK]:
        parts.append(f"{sources[CaptionSource.TXT_FALLBACK]} by a .txt fallback")
    uncaptioned = sources[CaptionSource.MISSING] + sources[CaptionSource.EMPTY]
    if uncaptioned:
        parts.append(f"{uncaptioned} use the folder caption '{subset.class_tokens or ''}'")
    return ", ".join(parts)


def check_subset(subset: SubsetBlueprint, report: Report) -> tuple[Subset | None, list[CheckedImage]]:
    """Scan one subset as training does, then decode every image; None when the folder is missing,
    empty or holds no usable image."""
    if not subset.image_dir.is_dir():
        report.errors.append(f"{subset.label}: image folder {subset.image_dir} does not exist")
        return None, []
    scan = scan_planned_subset(subset)
    if not scan.image_count:
        report.errors.append(f"{subset.label}: no images in {subset.image_dir}")
        return None, []
    # Pillow decodes with the GIL released, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(_decode, scan.subset.records))
    checked = [result for result in results if isinstance(result, CheckedImage)]
    bad = [*scan.bad, *(result for result in results if isinstance(result, BadImage))]
    report.errors += [_bad_image_error(subset.label, item) for item in bad]
    report.warnings += scan.notes
    kind = "reg  " if subset.is_reg else "train"
    report.sections.append(
        f"  {kind}  {subset.label}: {scan.image_count} images, repeats {subset.num_repeats}; "
        + _caption_line(scan.caption_sources, len(scan.subset.records), subset)
    )
    decoded = {image.path for image in checked}
    records = tuple(record for record in scan.subset.records if record.path in decoded)
    if not records:
        return None, checked
    return replace(scan.subset, records=records), checked


def _small_images(
    images: Sequence[CheckedImage], resolution: tuple[int, int], label: str, report: Report
) -> None:
    """Images with fewer pixels than the resolution's area: kohya enlarges them (blurry detail)."""
    area = resolution[0] * resolution[1]
    small = [f"{i.path.name} ({i.width}x{i.height})" for i in images if i.width * i.height < area]
    if small:
        report.warnings.append(
            f"{label}: {len(small)} image(s) smaller than the training resolution {resolution[0]}x{resolution[1]} "
            f"(upscaled, or trained smaller with bucket_no_upscale): {_listed(small)}"
        )


def _tag_lines(subsets: Sequence[Subset]) -> list[str]:
    """The tags the LoRA file's `ss_tag_frequency` will record, summed over the training folders."""
    counts: Counter = Counter()
    for subset in subsets:
        if not subset.is_reg:
            counts.update(folder_tag_counts(subset))
    if not counts:
        return []
    top = ", ".join(f"{tag} {count}" for tag, count in counts.most_common(TOP_TAGS))
    return [
        "Most frequent tags (as the LoRA file's ss_tag_frequency counts them, training images only)",
        f"  {top}",
    ]


def check_datasets(datasets: Sequence[DatasetBlueprint], config: TrainConfig, report: Report) -> None:
    specs, all_images = [], []
    report.sections.append("Subsets")
    for dataset in datasets:
        subsets = []
        for planned in dataset.subsets:
            subset, images = check_subset(planned, report)
            all_images += images
            _small_images(images, dataset.options.resolution, planned.label, report)
            if subset is not None:
                subsets.append(subset)
        specs.append(DatasetSpec(tuple(subsets), dataset.options, dataset.label))
    for a, b, distance in near_duplicates(all_images):
        report.warnings.append(f"near-duplicate images (dHash distance {distance}): {a.path} ~ {b.path}")
    report.sections += _tag_lines([s for spec in specs for s in spec.subsets])
    try:
        plan = build_run_plan(
            specs,
            seed=0,
            max_train_epochs=config.max_train_epochs,
            max_train_steps=config.max_train_steps,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
    except UserError as err:
        report.errors.append(str(err))
        return
    report.warnings += list(plan.warnings)
    report.sections.append(format_plan(plan))


def folder_subsets(root: Path, is_reg: bool, config: TrainConfig, report: Report) -> list[SubsetBlueprint]:
    """The `N_concept/` subsets of a kohya image folder; misnamed folders and loose images are errors."""
    if not root.is_dir():
        report.errors.append(f"{root} does not exist or is not a folder")
        return []
    dirs = find_subset_dirs(root)
    for folder in dirs.misnamed:
        report.errors.append(
            f"{folder}: folder name is not N_concept (N = repeats >= 1, e.g. 10_mychar); training skips it"
        )
    if dirs.loose_images:
        report.errors.append(
            f"{root}: {dirs.loose_images} image(s) lie directly in it; kohya reads images only from N_concept/ "
            f"subfolders (e.g. {root / '10_mychar'})"
        )
    options = options_of(SubsetOptions, config)
    return [
        SubsetBlueprint(
            folder, num_repeats, is_reg, class_tokens, options, label=f"{folder.parent.name}/{folder.name}"
        )
        for folder, num_repeats, class_tokens in dirs.folders
    ]


def folder_dataset(root: Path, config: TrainConfig, report: Report) -> DatasetBlueprint:
    """A `--train_data_dir` (with `--reg_data_dir`), or a `dataset prepare` tree holding img/ and reg/."""
    reg_root = Path(config.reg_data_dir) if config.reg_data_dir else None
    if (root / "img").is_dir() and parse_subset_dir_name(root.name) is None:
        reg_root = reg_root or ((root / "reg") if (root / "reg").is_dir() else None)
        root = root / "img"
    subsets = folder_subsets(root, False, config, report)
    if reg_root is not None:
        subsets += folder_subsets(reg_root, True, config, report)
    if not subsets:
        report.errors.append(
            f"{root}: no N_concept/ folders with images (e.g. {root / '10_mychar' / 'a.png'})"
        )
    return DatasetBlueprint(tuple(subsets), options_of(DatasetOptions, config), label="")


def run_check(target: Path, config: TrainConfig) -> Report:
    report = Report()
    if target.is_file():
        try:
            datasets = load_dataset_config(target, config)
        except UserError as err:
            report.errors.append(str(err))
            return report
    elif target.is_dir():
        datasets = [folder_dataset(target, config, report)]
    else:
        report.errors.append(f"{target} does not exist; give a --train_data_dir folder or a dataset TOML")
        return report
    check_datasets(datasets, config, report)
    return report


def format_report(report: Report) -> str:
    lines = list(report.sections)
    lines += [f"error: {message}" for message in report.errors]
    lines += [f"warning: {message}" for message in report.warnings]
    verdict = "problems found" if report.errors else "ready to train"
    lines.append(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s): {verdict}")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft dataset check",
        usage="loracraft dataset check DIR_or_TOML [--resolution 512 --train_batch_size 2 ... any train flag]",
        description="Check a kohya dataset folder or dataset TOML before training. Train flags set the "
        "resolution, buckets, batch size and steps the check plans with.",
    )
    parser.add_argument("target", type=Path, help="--train_data_dir folder, dataset prepare output, or TOML")
    add_config_flags(parser)
    return parser


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    _, flags = parse_train_flags(make_parser(), argv)
    target = flags.pop("target")
    config = build_config({}, flags)
    report = run_check(target, config)
    echo(format_report(report))
    return 1 if report.errors else 0
