"""kohya's dataset config (`--dataset_config x.toml`, reference §4.3), typed and resolved against the flags.

    [general]                 keys for every dataset and subset
    [[datasets]]              resolution, batch_size, bucket keys (+ subset keys for its subsets)
      [[datasets.subsets]]    image_dir (required), num_repeats, is_reg, caption and augmentation keys

A value is looked up in the subset, then its dataset, then `[general]`, then the command-line flags
(TrainConfig, which carries the schema defaults), then kohya's defaults for keys that have no flag. Every
table rejects unknown keys, and every error is one line naming the file, the table and the key, e.g.
`x.toml [[datasets]][0].subsets[1]: unknown key 'num_repeat' (did you mean num_repeats?)`.

Relative `image_dir` paths are read from the current folder, as kohya does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from loracraft.config.files import read_table_file
from loracraft.config.schema import TrainConfig
from loracraft.config.suggest import did_you_mean
from loracraft.config.values import parse_resolution
from loracraft.data.augment import AugmentOptions
from loracraft.data.buckets import Size
from loracraft.data.captions import CaptionOptions
from loracraft.data.plan import BucketSettings
from loracraft.errors import UserError

# kohya keys loracraft does not implement: named as such instead of "unknown", so a kohya user knows why.
UNSUPPORTED_KOHYA_KEYS = frozenset({
    "metadata_file", "conditioning_data_dir", "cache_info", "custom_attributes", "validation_split",
    "validation_seed", "network_multiplier", "resize_interpolation", "token_warmup_min", "token_warmup_step",
})  # fmt: skip
# Settings kohya takes only on the command line: a user who puts them in the TOML is told where they go.
FLAG_ONLY_KEYS = frozenset({"prior_loss_weight", "max_token_length", "debug_dataset", "train_batch_size"})
# TOML key -> TrainConfig field, where kohya's flag has another name.
FLAG_FOR_KEY = {"batch_size": "train_batch_size"}
# Keys without a flag: kohya's dataclass defaults.
KEY_DEFAULTS: dict[str, Any] = {"num_repeats": 1, "class_tokens": None, "is_reg": False}


def _optional_resolution(value: Any) -> Any:
    return None if value is None else parse_resolution(value)


def parse_face_crop_range(value: Any) -> tuple[float, float] | None:
    """`"2.0,4.0"` (the flag) or `[2.0, 4.0]` (TOML) -> (2.0, 4.0); lo must be positive and <= hi."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise ValueError(f"face_crop_aug_range {value!r} is not 'LOW,HIGH', e.g. 2.0,4.0") from None
    if not 0 < low <= high:
        raise ValueError(f"face_crop_aug_range needs 0 < LOW <= HIGH, got {low},{high}")
    return low, high


Resolution = Annotated[tuple[int, int] | None, BeforeValidator(_optional_resolution)]
FaceCropRange = Annotated[tuple[float, float] | None, BeforeValidator(parse_face_crop_range)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubsetKeys(_Table):
    """Keys a subset may set and `[general]` or its dataset may set for it (kohya's ascendable keys)."""

    num_repeats: int | None = Field(None, ge=1)
    class_tokens: str | None = None
    caption_extension: str | None = None
    shuffle_caption: bool | None = None
    keep_tokens: int | None = Field(None, ge=0)
    keep_tokens_separator: str | None = None
    caption_separator: str | None = Field(None, min_length=1)
    secondary_separator: str | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float | None = Field(None, ge=0, le=1)
    caption_dropout_every_n_epochs: int | None = Field(None, ge=0)
    caption_tag_dropout_rate: float | None = Field(None, ge=0, le=1)
    enable_wildcard: bool | None = None
    flip_aug: bool | None = None
    color_aug: bool | None = None
    random_crop: bool | None = None
    face_crop_aug_range: FaceCropRange = None


class DatasetKeys(_Table):
    """Keys a dataset may set and `[general]` may set for every dataset."""

    resolution: Resolution = None
    batch_size: int | None = Field(None, ge=1)
    enable_bucket: bool | None = None
    min_bucket_reso: int | None = Field(None, ge=64)
    max_bucket_reso: int | None = Field(None, ge=64)
    bucket_reso_steps: int | None = Field(None, ge=64, multiple_of=64)
    bucket_no_upscale: bool | None = None

    @field_validator("resolution")
    @classmethod
    def _multiple_of_eight(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and any(side % 8 for side in value):
            raise ValueError(f"resolution sides must be multiples of 8, got {value[0]},{value[1]}")
        return value


class GeneralTable(DatasetKeys, SubsetKeys):
    """`[general]`."""


class SubsetTable(SubsetKeys):
    """`[[datasets.subsets]]`: one image folder."""

    image_dir: str = Field(min_length=1)
    is_reg: bool | None = None
    alpha_mask: bool | None = None


class DatasetTable(DatasetKeys, SubsetKeys):
    """`[[datasets]]`."""

    subsets: list[SubsetTable] = Field(min_length=1)


class DatasetConfigFile(_Table):
    general: GeneralTable = GeneralTable()
    datasets: list[DatasetTable] = Field(min_length=1)


@dataclass(frozen=True)
class SubsetBlueprint:
    """A subset with every value resolved, before its folder is scanned."""

    image_dir: Path
    num_repeats: int
    is_reg: bool
    class_tokens: str | None
    caption_extension: str
    captions: CaptionOptions
    augment: AugmentOptions
    label: str


@dataclass(frozen=True)
class DatasetBlueprint:
    """A dataset with every value resolved; `label` names it in messages (`x.toml [[datasets]][0]`)."""

    subsets: tuple[SubsetBlueprint, ...]
    resolution: Size
    batch_size: int
    buckets: BucketSettings
    label: str


def table_label(location: Sequence[str | int]) -> tuple[str, list[str | int]]:
    """A pydantic error location as the TOML table it is in, plus the rest (the key path):
    `("datasets", 0, "subsets", 1, "x")` -> `("[[datasets]][0].subsets[1]", ["x"])`."""
    parts = list(location)
    if parts[:1] == ["general"]:
        return "[general]", parts[1:]
    if len(parts) < 2 or parts[0] != "datasets" or not isinstance(parts[1], int):
        return "", parts
    label, rest = f"[[datasets]][{parts[1]}]", parts[2:]
    if len(rest) >= 2 and rest[0] == "subsets" and isinstance(rest[1], int):
        return f"{label}.subsets[{rest[1]}]", rest[2:]
    return label, rest


def _table_model(table: str) -> type[_Table]:
    if table == "[general]":
        return GeneralTable
    if ".subsets[" in table:
        return SubsetTable
    return DatasetTable if table else DatasetConfigFile


def _misplaced_hint(key: str) -> str | None:
    """Why a kohya key does not belong in this table, or None when it is not a kohya key at all."""
    if key in UNSUPPORTED_KOHYA_KEYS:
        return f"kohya key '{key}' is not supported by loracraft; remove it"
    if key in FLAG_ONLY_KEYS:
        flag = (
            "--train_batch_size (or batch_size in [[datasets]])" if key == "train_batch_size" else f"--{key}"
        )
        return f"'{key}' is a command-line setting, not a dataset key; pass {flag}"
    if key in SubsetTable.model_fields and key not in SubsetKeys.model_fields:
        return f"'{key}' belongs in a [[datasets.subsets]] table"
    if key in DatasetKeys.model_fields:
        return f"'{key}' is a dataset key; put it in [[datasets]] or [general]"
    if key == "subsets":
        return "'subsets' belong in a [[datasets]] table, written [[datasets.subsets]]"
    return None


def describe_error(err: ValidationError, source: str) -> str:
    """The first validation error as one line: `source table: message`. Unknown keys come first: a
    misspelt key (`[[dataset]]`) also shows up as the missing key it was meant to be."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    table, rest = table_label(first.get("loc") or ())
    where = f"{source} {table}".rstrip()
    key = str(rest[0]) if rest else ""
    if first["type"] == "extra_forbidden":
        known = _table_model(table).model_fields
        hint = _misplaced_hint(key)
        return f"{where}: {hint or f'unknown key {key!r}{did_you_mean(key, known)}'}"
    if first["type"] == "missing" and key == "image_dir":
        return f"{where}: missing image_dir; every [[datasets.subsets]] needs the folder of its images"
    if key in ("datasets", "subsets") and first["type"] in ("missing", "too_short"):
        return f"{where}: no [[datasets{'.subsets' if key == 'subsets' else ''}]] table; add one with an image_dir"
    message = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict | list) else ""
    path = ".".join(str(part) for part in rest)
    return f"{where}: {path + ': ' if path else ''}{message}{shown}"


def read_dataset_config(path: str | Path) -> DatasetConfigFile:
    """Parse and validate a dataset config file (TOML, or JSON by its suffix, as kohya accepts)."""
    data = read_table_file(path, "--dataset_config", "[general] and [[datasets]] tables")
    try:
        return DatasetConfigFile.model_validate(data)
    except ValidationError as err:
        raise UserError(describe_error(err, str(path))) from None


def resolve_value(key: str, tables: Sequence[_Table], config: TrainConfig) -> Any:
    """The first value set for `key` in `tables` (innermost first), else the flag's value, else kohya's default."""
    for table in tables:
        value = getattr(table, key, None)
        if value is not None:
            return value
    field = FLAG_FOR_KEY.get(key, key)
    if field not in TrainConfig.model_fields:
        return KEY_DEFAULTS[key]
    value = getattr(config, field)
    if key != "face_crop_aug_range":
        return value
    # The flag is kohya's "LOW,HIGH" text; the options hold the pair.
    try:
        return parse_face_crop_range(value)
    except ValueError as err:
        raise UserError(f"--face_crop_aug_range: {err}") from None


def caption_options(tables: Sequence[_Table], config: TrainConfig) -> CaptionOptions:
    """A subset's caption options; with no tables, the command-line flags' (plain-folder runs)."""
    return CaptionOptions(
        **{f.name: resolve_value(f.name, tables, config) for f in dataclasses.fields(CaptionOptions)}
    )


def augment_options(tables: Sequence[_Table], config: TrainConfig) -> AugmentOptions:
    """A subset's augmentation options; with no tables, the command-line flags' (plain-folder runs)."""
    return AugmentOptions(
        **{f.name: resolve_value(f.name, tables, config) for f in dataclasses.fields(AugmentOptions)}
    )


def _check_buckets(buckets: BucketSettings, label: str) -> None:
    if buckets.min_bucket_reso > buckets.max_bucket_reso:
        raise UserError(
            f"{label}: min_bucket_reso {buckets.min_bucket_reso} is larger than max_bucket_reso "
            f"{buckets.max_bucket_reso}"
        )


def _subset_blueprint(
    subset: SubsetTable, tables: Sequence[_Table], config: TrainConfig, label: str
) -> SubsetBlueprint:
    return SubsetBlueprint(
        image_dir=Path(subset.image_dir),
        num_repeats=resolve_value("num_repeats", tables, config),
        is_reg=resolve_value("is_reg", tables, config),
        class_tokens=resolve_value("class_tokens", tables, config),
        caption_extension=resolve_value("caption_extension", tables, config),
        captions=caption_options(tables, config),
        augment=augment_options(tables, config),
        label=label,
    )


def resolve_datasets(file: DatasetConfigFile, config: TrainConfig, source: str) -> list[DatasetBlueprint]:
    """Every dataset and subset of `file` with the values they get after precedence."""
    blueprints = []
    for d, dataset in enumerate(file.datasets):
        label = f"{source} [[datasets]][{d}]"
        tables = (dataset, file.general)
        buckets = BucketSettings(
            **{f.name: resolve_value(f.name, tables, config) for f in dataclasses.fields(BucketSettings)}
        )
        _check_buckets(buckets, label)
        subsets = tuple(
            _subset_blueprint(subset, (subset, *tables), config, f"{label}.subsets[{s}]")
            for s, subset in enumerate(dataset.subsets)
        )
        blueprints.append(
            DatasetBlueprint(
                subsets=subsets,
                resolution=resolve_value("resolution", tables, config),
                batch_size=resolve_value("batch_size", tables, config),
                buckets=buckets,
                label=label,
            )
        )
    return blueprints


def load_dataset_config(path: str | Path, config: TrainConfig) -> list[DatasetBlueprint]:
    """`--dataset_config` read, validated and resolved against `config`'s flags."""
    return resolve_datasets(read_dataset_config(path), config, str(path))
