"""The epoch plan: which images train how often, in which bucket, in which batches, for how many steps.

Everything here is decided before the first image is decoded, so `loracraft plan` can print the run's
arithmetic and the trainer, the cache pass and the dataset all read the same numbers.
"""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from loracraft.data.balance import balance_reg_repeats
from loracraft.data.buckets import (
    BucketChoice,
    Size,
    adjust_bucket_limits,
    make_bucket_resolutions,
    select_bucket,
    select_bucket_no_upscale,
)
from loracraft.data.records import ImageRecord, Subset
from loracraft.errors import UserError


@dataclass(frozen=True)
class PlannedImage:
    """An image used in this run: how many samples it gives per epoch and where they go."""

    record: ImageRecord
    repeats: int
    choice: BucketChoice


@dataclass(frozen=True)
class StepCount:
    steps_per_epoch: int
    num_epochs: int
    max_train_steps: int


@dataclass(frozen=True)
class DatasetPlan:
    """A run's dataset arithmetic. Batches refer to images by their index in `images`."""

    subsets: tuple[Subset, ...]
    images: tuple[PlannedImage, ...]
    buckets: tuple[Size, ...]
    # Per bucket, each image index once per repeat, in image order; `epoch_batches` shuffles them.
    bucket_samples: tuple[tuple[int, ...], ...]
    resolution: Size
    enable_bucket: bool
    bucket_no_upscale: bool
    batch_size: int
    gradient_accumulation_steps: int
    num_processes: int
    seed: int
    batches_per_epoch: int
    steps: StepCount
    # True when the step count came from --max_train_epochs, False when from --max_train_steps.
    epochs_given: bool
    mean_img_ar_error: float
    warnings: tuple[str, ...]

    @property
    def num_train_samples(self) -> int:
        return sum(image.repeats for image in self.images if not image.record.is_reg)

    @property
    def num_reg_samples(self) -> int:
        """Reg samples per epoch after balancing."""
        return sum(image.repeats for image in self.images if image.record.is_reg)

    @property
    def num_reg_images(self) -> int:
        """kohya's `ss_num_reg_images`: reg images times their folder repeats, before balancing."""
        return sum(subset.num_repeats * len(subset.records) for subset in self.subsets if subset.is_reg)

    @property
    def unused_reg_images(self) -> int:
        used = sum(1 for image in self.images if image.record.is_reg)
        return sum(len(subset.records) for subset in self.subsets if subset.is_reg) - used


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


def assign_repeats(subsets: Sequence[Subset]) -> tuple[list[tuple[ImageRecord, int]], list[str]]:
    """Train images with their folder repeats, then the balanced reg images that are used at all."""
    train = [(record, s.num_repeats) for s in subsets if not s.is_reg for record in s.records]
    if not train:
        raise UserError(
            "no training images: every image folder given is a regularization folder (--reg_data_dir)"
        )
    reg_records = [(record, s.num_repeats) for s in subsets if s.is_reg for record in s.records]
    reg_repeats = balance_reg_repeats(sum(r for _, r in train), [r for _, r in reg_records])
    reg = [
        (record, repeats) for (record, _), repeats in zip(reg_records, reg_repeats, strict=True) if repeats
    ]
    warnings = []
    if len(reg) < len(reg_records):
        warnings.append(
            f"{len(reg_records) - len(reg)} of {len(reg_records)} regularization images are unused: kohya balancing "
            f"stops at as many reg samples as train samples ({sum(r for _, r in train)})"
        )
    return train + reg, warnings


def build_epoch_plan(
    subsets: Sequence[Subset],
    *,
    resolution: Size,
    batch_size: int,
    seed: int,
    max_train_epochs: int | None,
    max_train_steps: int | None,
    gradient_accumulation_steps: int = 1,
    num_processes: int = 1,
    enable_bucket: bool = False,
    min_bucket_reso: int = 256,
    max_bucket_reso: int = 1024,
    bucket_reso_steps: int = 64,
    bucket_no_upscale: bool = False,
) -> DatasetPlan:
    """Repeats, reg balancing, bucket assignment, batch count and step count for `subsets`."""
    repeated, warnings = assign_repeats(subsets)
    # Without --enable_bucket the one bucket is the resolution; --bucket_no_upscale makes buckets per image.
    buckets = [resolution]
    if enable_bucket and not bucket_no_upscale:
        min_reso, max_reso, limit_warnings = adjust_bucket_limits(
            resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps
        )
        warnings += limit_warnings
        buckets = make_bucket_resolutions(resolution, min_reso, max_reso, bucket_reso_steps)
    images = []
    for record, repeats in repeated:
        if enable_bucket and bucket_no_upscale:
            choice = select_bucket_no_upscale(
                record.width, record.height, resolution[0] * resolution[1], bucket_reso_steps
            )
        else:
            choice = select_bucket(record.width, record.height, buckets)
        if 0 in choice.bucket:
            raise UserError(
                f"image {record.path} is {record.width}x{record.height}, smaller than --bucket_reso_steps "
                f"{bucket_reso_steps}; remove it or turn off --bucket_no_upscale"
            )
        images.append(PlannedImage(record, repeats, choice))
    used_buckets = sorted({image.choice.bucket for image in images})
    bucket_samples = tuple(
        tuple(
            i for i, image in enumerate(images) if image.choice.bucket == bucket for _ in range(image.repeats)
        )
        for bucket in used_buckets
    )
    batches_per_epoch = sum(math.ceil(len(samples) / batch_size) for samples in bucket_samples)
    steps = count_steps(
        batches_per_epoch,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_processes=num_processes,
        max_train_epochs=max_train_epochs,
        max_train_steps=max_train_steps,
    )
    return DatasetPlan(
        subsets=tuple(subsets),
        images=tuple(images),
        buckets=tuple(used_buckets),
        bucket_samples=bucket_samples,
        resolution=resolution,
        enable_bucket=enable_bucket,
        bucket_no_upscale=enable_bucket and bucket_no_upscale,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_processes=num_processes,
        seed=seed,
        batches_per_epoch=batches_per_epoch,
        steps=steps,
        epochs_given=max_train_epochs is not None,
        mean_img_ar_error=sum(abs(image.choice.ar_error) for image in images) / len(images),
        warnings=tuple(warnings),
    )


def epoch_batches(plan: DatasetPlan, epoch: int) -> list[tuple[int, ...]]:
    """The batches of one epoch as tuples of image indices, the same for the same seed and epoch.

    Like kohya: each bucket's samples are shuffled and cut into `batch_size` chunks (the last chunk of
    a bucket may be short; a batch never mixes buckets), then the order of all chunks is shuffled.
    """
    rng = random.Random(plan.seed + epoch)
    batches = []
    for samples in plan.bucket_samples:
        order = list(samples)
        rng.shuffle(order)
        batches += [tuple(order[i : i + plan.batch_size]) for i in range(0, len(order), plan.batch_size)]
    rng.shuffle(batches)
    return batches
