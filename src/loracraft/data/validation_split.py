"""Holding images out for the validation loss, before anything is planned: kohya's `validation_split` per
image folder (with its overlap fixed), and dataset-TOML subsets held out whole (`is_validation = true`).

kohya (`train_util.split_train_val`) shuffles a folder's sorted images with `random.seed(validation_seed)`,
trains on the first ceil(n x (1 - split)) and validates on the last round(n x split). Where the two round
the same half image opposite ways, an image is in both sets (n = 3, split 0.5: 2 train and 2 validate),
and the validation loss measures an image the LoRA learns. Here a folder holds out the last
round(n x split) images of the same permutation (kohya's validation images, for the same files and
seed) and trains on all the others, so every image is in exactly one set. The permutation comes from a
`random.Random` of its own: the global generator, whose state kohya swaps, is never touched.

A folder whose share rounds to no image holds one out all the same (a concept needs an image to have a
validation loss); a folder of one image cannot spare it and keeps training, without a validation loss
of its own. Both say so before training. Regularization folders never split. Held-out images count
once (repeats 1).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from loracraft.data.plan import DatasetSpec
from loracraft.data.records import Subset
from loracraft.errors import UserError


def held_out_count(image_count: int, split: float) -> int:
    """How many of a folder's images validate: kohya's round(images x split), at least one, never all."""
    if split == 0 or image_count < 2:
        return 0
    return min(max(round(image_count * split), 1), image_count - 1)


@dataclass(frozen=True)
class SubsetSplit:
    """One folder's images as training and validation subsets; None where a side has no image."""

    train: Subset | None
    validation: Subset | None
    warning: str | None = None


def held_out_whole(subset: Subset) -> Subset:
    """A validation subset: every image, once."""
    return replace(subset, num_repeats=1)


def split_subset(subset: Subset, split: float, seed: int) -> SubsetSplit:
    """Hold out `held_out_count` of a training folder's images, the last ones of a `seed` shuffle."""
    if subset.is_reg or split == 0:
        return SubsetSplit(subset, None)
    count = held_out_count(len(subset.records), split)
    if count == 0:
        warning = (
            f"{subset.dir} has a single image, so validation_split {split:g} cannot hold one out; it trains, "
            "and that concept has no validation loss"
        )
        return SubsetSplit(subset, None, warning)
    warning = None
    if round(len(subset.records) * split) == 0:
        warning = (
            f"validation_split {split:g} of the {len(subset.records)} images in {subset.dir} rounds to none; "
            "one is held out, so that concept has a validation loss"
        )
    order = list(subset.records)
    random.Random(seed).shuffle(order)
    held = set(order[len(order) - count :])
    train = tuple(record for record in subset.records if record not in held)
    validation = tuple(record for record in subset.records if record in held)
    return SubsetSplit(
        replace(subset, records=train), held_out_whole(replace(subset, records=validation)), warning
    )


@dataclass(frozen=True)
class DatasetSplit:
    """One dataset as the part that trains and the part held out (None when nothing is)."""

    train: DatasetSpec
    validation: DatasetSpec | None
    warnings: tuple[str, ...]


def split_dataset(spec: DatasetSpec, held_out_dirs: Collection[Path], run_seed: int) -> DatasetSplit:
    """Split each training folder of `spec` by its `validation_split`, seeded by its `validation_seed`
    (else `run_seed`); the folders in `held_out_dirs` validate whole."""
    split, seed = spec.options.validation_split, spec.options.validation_seed
    seed = run_seed if seed is None else seed
    train, validation, warnings = [], [], []
    for subset in spec.subsets:
        if subset.dir in held_out_dirs:
            validation.append(held_out_whole(subset))
            continue
        parts = split_subset(subset, split, seed)
        train += [parts.train] if parts.train is not None else []
        validation += [parts.validation] if parts.validation is not None else []
        warnings += [parts.warning] if parts.warning is not None else []
    held_out = replace(spec, subsets=tuple(validation)) if validation else None
    prefix = f"{spec.label}: " if spec.label else ""
    return DatasetSplit(
        replace(spec, subsets=tuple(train)), held_out, tuple(prefix + warning for warning in warnings)
    )


@dataclass(frozen=True)
class RunSplit:
    """Every dataset's training part (datasets held out whole are left out) and held-out part."""

    train: tuple[DatasetSpec, ...]
    validation: tuple[DatasetSpec, ...]
    warnings: tuple[str, ...]


def split_datasets(specs: Sequence[DatasetSpec], held_out_dirs: Collection[Path], run_seed: int) -> RunSplit:
    """`split_dataset` over a run's datasets. A run whose every training folder is held out stops here."""
    parts = [split_dataset(spec, held_out_dirs, run_seed) for spec in specs]
    # A dataset that had folders and kept none trains nothing: it leaves the training plan.
    train = tuple(
        part.train for part, spec in zip(parts, specs, strict=True) if part.train.subsets or not spec.subsets
    )
    trained = any(not subset.is_reg for spec in train for subset in spec.subsets)
    if not trained and any(not subset.is_reg for spec in specs for subset in spec.subsets):
        raise UserError(
            "no training images: every training folder is held out for validation (is_validation = true "
            "in the dataset config); leave at least one to train"
        )
    validation = tuple(part.validation for part in parts if part.validation is not None)
    return RunSplit(train, validation, tuple(warning for part in parts for warning in part.warnings))
