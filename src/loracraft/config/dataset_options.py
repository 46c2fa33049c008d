"""The settings one dataset may have of its own: resolution, batch size, aspect-ratio buckets and the
share of its images held out for validation.

Each is a command-line flag for a plain-folder run (which is one dataset), and a key that a dataset
TOML's `[general]` or `[[datasets]]` table may set. The rules here run on the flags and on every
resolved TOML dataset alike.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from loracraft.config.fields import BUCKETS, DATASET, flag
from loracraft.config.rules import RuleViolation
from loracraft.config.values import parse_resolution


def _sides_multiple_of_eight(value: tuple[int, int]) -> tuple[int, int]:
    if any(side % 8 for side in value):
        raise RuleViolation(f"`resolution` sides must be multiples of 8, got {value[0]},{value[1]}")
    return value


# The checks travel with the type, so a dataset TOML's `resolution` key gets them too.
Resolution = Annotated[
    tuple[int, int], BeforeValidator(parse_resolution), AfterValidator(_sides_multiple_of_eight)
]


class DatasetOptions(BaseModel):
    """Resolution, batch size, bucket and validation-split settings of one dataset, in kohya's names and
    defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: Resolution = flag(
        (512, 512),
        DATASET,
        "Training resolution 'SIZE' or 'WIDTH,HEIGHT' in pixels; the bucket area.",
        ss_key="ss_resolution",
        ss_folders_only=True,
    )
    train_batch_size: int = flag(
        1,
        DATASET,
        "Images per batch. A batch holds images of one bucket only, so it can be smaller.",
        ss_key="ss_batch_size_per_device",
        ss_folders_only=True,
        toml_key="batch_size",
        ge=1,
    )
    enable_bucket: bool = flag(
        False,
        BUCKETS,
        "Group images into aspect-ratio buckets instead of square crops.",
        gui_default=True,
        ss_key="ss_enable_bucket",
        ss_folders_only=True,
    )
    min_bucket_reso: int = flag(
        256,
        BUCKETS,
        "Smallest bucket side in pixels.",
        ss_key="ss_min_bucket_reso",
        ss_folders_only=True,
        ge=64,
    )
    max_bucket_reso: int = flag(
        1024,
        BUCKETS,
        "Largest bucket side in pixels.",
        gui_default=2048,
        ss_key="ss_max_bucket_reso",
        ss_folders_only=True,
        ge=64,
    )
    bucket_reso_steps: int = flag(
        64,
        BUCKETS,
        "Bucket side granularity in pixels: a multiple of 64 for SD1/SD2, of 32 for SDXL (kohya's rules).",
        ge=32,
        multiple_of=32,
    )
    bucket_no_upscale: bool = flag(
        False,
        BUCKETS,
        "Never upscale small images: their bucket is their own size, cropped to the step.",
        gui_default=True,
        ss_key="ss_bucket_no_upscale",
        ss_folders_only=True,
    )
    validation_split: float = flag(
        0.0,
        DATASET,
        "Share of each training folder's images held out for the validation loss (never trained): "
        "round(images x share), at least one per folder that has two or more images.",
        ss_key="ss_validation_split",
        ge=0,
        lt=1,
    )
    validation_seed: int | None = flag(
        None,
        DATASET,
        "Seed of the choice of held-out images (per dataset in a dataset TOML) and, as a flag, of the "
        "validation loss's fixed noise. Empty: --seed.",
        ss_key="ss_validation_seed",
        ge=0,
    )

    @model_validator(mode="after")
    def _dataset_rules(self) -> DatasetOptions:
        if self.min_bucket_reso > self.max_bucket_reso:
            raise RuleViolation(
                f"`min_bucket_reso` {self.min_bucket_reso} is larger than `max_bucket_reso` {self.max_bucket_reso}"
            )
        return self
