"""The epoch plan: which images train how often, in which bucket, in which batches, for how many steps.

Everything here is decided before the first image is decoded, so `loracraft plan` can print the run's
arithmetic and the trainer, the cache pass and the dataset all read the same numbers.

A run has one or more datasets (a dataset TOML's `[[datasets]]` entries; plain folders make one). Each
has its own resolution, buckets and batch size and balances its own reg images; kohya's epoch is the
batches of every dataset together, shuffled with one seed.
"""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from loracraft.config.dataset_options import DatasetOptions
from loracraft.data.balance import balance_reg_repeats
from loracraft.data.buckets import (
    BucketChoice,
    Size,
    adjust_bucket_limits,
    fits_one_step,
    make_bucket_resolutions,
    select_bucket,
    select_bucket_no_upscale,
    shrinks_below_one_step,
)
from loracraft.data.records import ImageRecord, Subset
from loracraft.errors import UserError

_MAX_LISTED = 5
# An image whose bucket keeps less than this share of it trains on a strip of itself, which is rarely
# what its owner meant (a 20000x20 banner keeps 0.4% of itself in a 1024x256 bucket).
_LEAST_KEPT_AREA = 0.5


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to plan: its scanned subsets and the settings they share.

    `label` names it in messages and the printed plan, e.g. `x.toml [[datasets]][1]`; empty for a
    plain-folder run, which has exactly one dataset.
    """

    subsets: tuple[Subset, ...]
    options: DatasetOptions = DatasetOptions()
    label: str = ""


@dataclass(frozen=True)
class PlannedImage:
    """An image used in this run: how many samples it gives per epoch and where they go.

    `subset_index` points into `DatasetPlan.subsets`, where the image's caption and augmentation
    options live (a folder can appear in two datasets, so the folder name is not enough).
    """

    record: ImageRecord
    repeats: int
    choice: BucketChoice
    subset_index: int = 0


@dataclass(frozen=True)
class PlannedDataset:
    """One dataset's share of the plan. Sample indices point into `DatasetPlan.images`."""

    label: str
    subset_indices: tuple[int, ...]
    options: DatasetOptions
    buckets: tuple[Size, ...]
    # Per bucket, each image index once per repeat, in image order; `epoch_batches` shuffles them.
    bucket_samples: tuple[tuple[int, ...], ...]
    num_train_samples: int
    num_reg_samples: int
    mean_img_ar_error: float

    @property
    def resolution(self) -> Size:
        return self.options.resolution

    @property
    def batch_size(self) -> int:
        return self.options.train_batch_size

    @property
    def enable_bucket(self) -> bool:
        return self.options.enable_bucket

    @property
    def bucket_no_upscale(self) -> bool:
        return self.options.enable_bucket and self.options.bucket_no_upscale

    @property
    def batches_per_epoch(self) -> int:
        # A batch never mixes buckets, so every bucket's last batch may be short.
        return sum(math.ceil(len(samples) / self.batch_size) for samples in self.bucket_samples)


@dataclass(frozen=True)
class StepCount:
    steps_per_epoch: int
    num_epochs: int
    max_train_steps: int


@dataclass(frozen=True)
class DatasetPlan:
    """A run's dataset arithmetic over all its datasets. Batches refer to images by index in `images`."""

    datasets: tuple[PlannedDataset, ...]
    subsets: tuple[Subset, ...]
    images: tuple[PlannedImage, ...]
    gradient_accumulation_steps: int
    num_processes: int
    seed: int
    batches_per_epoch: int
    steps: StepCount
    # True when the step count came from --max_train_epochs, False when from --max_train_steps.
    epochs_given: bool
    warnings: tuple[str, ...]
    # The images held out for the validation loss, planned as one epoch of the same datasets' settings
    # (`data/validation_split.py`); None when nothing is held out.
    validation: "DatasetPlan | None" = None

    @property
    def buckets(self) -> tuple[Size, ...]:
        """Every dataset's buckets in dataset order (a size repeats when two datasets use it)."""
        return tuple(bucket for dataset in self.datasets for bucket in dataset.buckets)

    @property
    def bucket_samples(self) -> tuple[tuple[int, ...], ...]:
        """Aligned with `buckets`."""
        return tuple(samples for dataset in self.datasets for samples in dataset.bucket_samples)

    @property
    def num_train_samples(self) -> int:
        return sum(dataset.num_train_samples for dataset in self.datasets)

    @property
    def num_reg_samples(self) -> int:
        """Reg samples per epoch after balancing."""
        return sum(dataset.num_reg_samples for dataset in self.datasets)

    @property
    def num_reg_images(self) -> int:
        """kohya's `ss_num_reg_images`: reg images times their folder repeats, before balancing."""
        return sum(subset.num_repeats * len(subset.records) for subset in self.subsets if subset.is_reg)

    @property
    def unused_reg_images(self) -> int:
        used = sum(1 for image in self.images if image.record.is_reg)
        return sum(len(subset.records) for subset in self.subsets if subset.is_reg) - used

    @property
    def mean_img_ar_error(self) -> float:
        return sum(abs(image.choice.ar_error) for image in self.images) / len(self.images)


def count_steps(
    batches_per_epoch: int,
    *,
    gradient_accumulation_steps: int,
    num_processes: int,
    max_train_epochs: int | None,
    max_train_steps: int | None,
) -> StepCount:
    """kohya's step formula (reference §5.1). Each process runs its share of the batches and one
    optimizer step per `gradient_accumulation_steps` of them; `max_train_epochs` overrides the steps."""
    steps_per_epoch = math.ceil(batches_per_epoch / (num_processes * gradient_accumulation_steps))
    if max_train_epochs is not None:
        return StepCount(steps_per_epoch, max_train_epochs, max_train_epochs * steps_per_epoch)
    if max_train_steps is None:
        raise ValueError("count_steps needs max_train_epochs or max_train_steps")
    return StepCount(steps_per_epoch, math.ceil(max_train_steps / steps_per_epoch), max_train_steps)


def assign_repeats(
    subsets: Sequence[Subset], first_subset_index: int = 0
) -> tuple[list[tuple[ImageRecord, int, int]], list[str]]:
    """(record, repeats, subset index): train images with their folder repeats, then the balanced reg
    images that are used at all. Without train images no reg image is used, as in kohya."""
    indexed = list(enumerate(subsets, start=first_subset_index))
    train = [(r, s.num_repeats, i) for i, s in indexed if not s.is_reg for r in s.records]
    reg_records = [(r, s.num_repeats, i) for i, s in indexed if s.is_reg for r in s.records]
    num_train = sum(repeats for _, repeats, _ in train)
    reg_repeats = balance_reg_repeats(num_train, [repeats for _, repeats, _ in reg_records])
    reg = [
        (record, repeats, i)
        for (record, _, i), repeats in zip(reg_records, reg_repeats, strict=True)
        if repeats
    ]
    warnings = []
    if train and len(reg) < len(reg_records):
        warnings.append(
            f"{len(reg_records) - len(reg)} of {len(reg_records)} regularization images are unused: kohya balancing "
            f"stops at as many reg samples as train samples ({num_train})"
        )
    return train + reg, warnings


def _bucket_list(resolution: Size, settings: DatasetOptions) -> tuple[list[Size], list[str]]:
    """The dataset's candidate buckets; `--bucket_no_upscale` makes them per image instead."""
    if not settings.enable_bucket or settings.bucket_no_upscale:
        return [resolution], []
    min_reso, max_reso, warnings = adjust_bucket_limits(
        resolution, settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps
    )
    return make_bucket_resolutions(resolution, min_reso, max_reso, settings.bucket_reso_steps), warnings


def _choose_bucket(record: ImageRecord, spec: DatasetSpec, buckets: Sequence[Size]) -> BucketChoice:
    settings = spec.options
    if settings.enable_bucket and settings.bucket_no_upscale:
        max_area = settings.resolution[0] * settings.resolution[1]
        return select_bucket_no_upscale(record.width, record.height, max_area, settings.bucket_reso_steps)
    return select_bucket(record.width, record.height, buckets)


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown} and {len(items) - _MAX_LISTED} more"


def _refuse_images_under_one_step(records: Sequence[ImageRecord], steps: int) -> None:
    """`--bucket_no_upscale` never enlarges, so an image under one step on a side has no bucket."""
    small = [
        f"{r.path} ({r.width}x{r.height})" for r in records if not fits_one_step(r.width, r.height, steps)
    ]
    if small:
        raise UserError(
            f"{len(small)} image(s) are smaller than --bucket_reso_steps {steps} on a side, so "
            f"--bucket_no_upscale has no bucket for them: {_listed(small)}; enlarge or remove them, or turn "
            "off --bucket_no_upscale to have them enlarged"
        )


def _narrow_image_warnings(records: Sequence[ImageRecord], resolution: Size, steps: int) -> list[str]:
    """Name the images kohya's `--bucket_no_upscale` rounding would shrink below one step, and their bucket."""
    max_area = resolution[0] * resolution[1]
    shown = []
    for r in records:
        if shrinks_below_one_step(r.width, r.height, max_area, steps):
            choice = select_bucket_no_upscale(r.width, r.height, max_area, steps)
            (rw, rh), (bw, bh) = choice.resized_size, choice.bucket
            shown.append(f"{r.path} ({r.width}x{r.height} -> {rw}x{rh}, cropped to {bw}x{bh})")
    if not shown:
        return []
    return [
        f"{len(shown)} image(s) would shrink to under --bucket_reso_steps {steps} on a side to fit the area "
        f"of --resolution {resolution[0]}x{resolution[1]} (kohya stops on them with ZeroDivisionError); each "
        f"trains in the smallest bucket of its shape instead, one step on the short side: {_listed(shown)}"
    ]


def _no_upscale_checks(records: Sequence[ImageRecord], spec: DatasetSpec) -> list[str]:
    options = spec.options
    if not (options.enable_bucket and options.bucket_no_upscale):
        return []
    _refuse_images_under_one_step(records, options.bucket_reso_steps)
    return _narrow_image_warnings(records, options.resolution, options.bucket_reso_steps)


def _share(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.01 else "under 1%"


def _crop_loss_warnings(images: Sequence[PlannedImage], options: DatasetOptions) -> list[str]:
    """Name the images the centre crop cuts to less than half: one line each for the first few."""
    lossy = [image for image in images if image.choice.kept_area < _LEAST_KEPT_AREA]
    if options.enable_bucket:
        why, fix = (
            "no bucket comes near its aspect ratio",
            "crop the image to the part that matters or remove it",
        )
    else:
        width, height = options.resolution
        why = f"without --enable_bucket every image trains at {width}x{height}"
        fix = "pass --enable_bucket, or crop the image to the part that matters"
    lines = [
        f"{i.record.path} ({i.record.width}x{i.record.height}) lands in bucket {i.choice.bucket[0]}x"
        f"{i.choice.bucket[1]}, whose centre crop keeps {_share(i.choice.kept_area)} of it: {why}; {fix}"
        for i in lossy[:_MAX_LISTED]
    ]
    if len(lossy) > _MAX_LISTED:
        lines.append(
            f"{len(lossy) - _MAX_LISTED} more image(s) lose over half of their area to the centre crop"
        )
    return lines


def _plan_one_dataset(
    spec: DatasetSpec, first_subset_index: int, images: list[PlannedImage]
) -> tuple[PlannedDataset, list[str]]:
    """Plan `spec`, appending its images to `images` (so sample indices are global)."""
    repeated, warnings = assign_repeats(spec.subsets, first_subset_index)
    if spec.subsets and all(s.is_reg for s in spec.subsets):
        warnings.append(
            "no training images, so its regularization images are unused "
            "(kohya balances reg images within each dataset)"
        )
    try:
        buckets, limit_warnings = _bucket_list(spec.options.resolution, spec.options)
        limit_warnings += _no_upscale_checks([record for record, _, _ in repeated], spec)
        start = len(images)
        for record, repeats, subset_index in repeated:
            images.append(PlannedImage(record, repeats, _choose_bucket(record, spec, buckets), subset_index))
        limit_warnings += _crop_loss_warnings(images[start:], spec.options)
    except UserError as err:
        # A dataset config can hold several datasets: say which one the setting belongs to.
        raise UserError(f"{spec.label}: {err}" if spec.label else str(err)) from None
    warnings = [f"{spec.label}: {w}" if spec.label else w for w in warnings + limit_warnings]
    own = range(start, len(images))
    used_buckets = sorted({images[i].choice.bucket for i in own})
    bucket_samples = tuple(
        tuple(i for i in own if images[i].choice.bucket == bucket for _ in range(images[i].repeats))
        for bucket in used_buckets
    )
    errors = [abs(images[i].choice.ar_error) for i in own]
    planned = PlannedDataset(
        label=spec.label,
        subset_indices=tuple(range(first_subset_index, first_subset_index + len(spec.subsets))),
        options=spec.options,
        buckets=tuple(used_buckets),
        bucket_samples=bucket_samples,
        num_train_samples=sum(images[i].repeats for i in own if not images[i].record.is_reg),
        num_reg_samples=sum(images[i].repeats for i in own if images[i].record.is_reg),
        mean_img_ar_error=sum(errors) / len(errors) if errors else 0.0,
    )
    return planned, warnings


def build_run_plan(
    datasets: Sequence[DatasetSpec],
    *,
    seed: int,
    max_train_epochs: int | None,
    max_train_steps: int | None,
    gradient_accumulation_steps: int = 1,
    num_processes: int = 1,
) -> DatasetPlan:
    """Repeats, reg balancing and buckets per dataset; the batch and step count of all of them together."""
    images: list[PlannedImage] = []
    planned, warnings, subsets = [], [], []
    for spec in datasets:
        dataset, dataset_warnings = _plan_one_dataset(spec, len(subsets), images)
        planned.append(dataset)
        warnings += dataset_warnings
        subsets += spec.subsets
    if not any(dataset.num_train_samples for dataset in planned):
        raise UserError(
            "no training images: every image folder given is a regularization folder "
            "(--reg_data_dir, or is_reg = true in the dataset config)"
        )
    batches_per_epoch = sum(dataset.batches_per_epoch for dataset in planned)
    steps = count_steps(
        batches_per_epoch,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_processes=num_processes,
        max_train_epochs=max_train_epochs,
        max_train_steps=max_train_steps,
    )
    return DatasetPlan(
        datasets=tuple(planned),
        subsets=tuple(subsets),
        images=tuple(images),
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_processes=num_processes,
        seed=seed,
        batches_per_epoch=batches_per_epoch,
        steps=steps,
        epochs_given=max_train_epochs is not None,
        warnings=tuple(warnings),
    )


def build_epoch_plan(
    subsets: Sequence[Subset],
    *,
    seed: int,
    max_train_epochs: int | None,
    max_train_steps: int | None,
    gradient_accumulation_steps: int = 1,
    num_processes: int = 1,
    **dataset_options: object,
) -> DatasetPlan:
    """The plan of a run with one dataset (plain folders); `dataset_options` are DatasetOptions fields."""
    return build_run_plan(
        [DatasetSpec(tuple(subsets), DatasetOptions(**dataset_options))],
        seed=seed,
        max_train_epochs=max_train_epochs,
        max_train_steps=max_train_steps,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_processes=num_processes,
    )


def epoch_batches(plan: DatasetPlan, epoch: int) -> list[tuple[int, ...]]:
    """The batches of one epoch as tuples of image indices, the same for the same seed and epoch.

    Like kohya: each bucket's samples are shuffled and cut into chunks of its dataset's batch size (the
    last chunk of a bucket may be short; a batch never mixes buckets or datasets), then the order of
    all chunks of all datasets is shuffled.
    """
    rng = random.Random(plan.seed + epoch)
    batches = []
    for dataset in plan.datasets:
        size = dataset.batch_size
        for samples in dataset.bucket_samples:
            order = list(samples)
            rng.shuffle(order)
            batches += [tuple(order[i : i + size]) for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches
