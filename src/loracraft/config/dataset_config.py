"""kohya's dataset config (`--dataset_config x.toml`, reference §4.3), typed and resolved against the flags.

    [general]                 keys for every dataset and subset
    [[datasets]]              resolution, batch_size, bucket keys (+ subset keys for its subsets)
      [[datasets.subsets]]    image_dir (required), num_repeats, is_reg, is_validation, caption and
                              augmentation keys

The tables are derived from the settings' declarations: a `DatasetOptions` field is a dataset key, a
`SubsetOptions` field a subset key (both under their `toml_key`), each with the field's type and checks.
A value is looked up in the subset, then its dataset, then `[general]`, then the command-line flags
(TrainConfig, which carries the schema defaults); the keys that exist only in TOML (`image_dir`,
`num_repeats`, `class_tokens`, `is_reg`) have kohya's defaults. `is_validation = true` is loracraft's: the
folder's images are held out whole for the validation loss and never train. The resolved options then pass the same
rules as the flags. Every error is one line naming the file, the table and the key, e.g.
`x.toml [[datasets]][0].subsets[1]: unknown key 'num_repeat' (did you mean num_repeats?)`.

Relative `image_dir` paths are read from the current folder, as kohya does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.fields import flag_infos
from loracraft.config.files import read_table_file
from loracraft.config.rules import RuleViolation, run_conflict_with_subset
from loracraft.config.schema import TrainConfig
from loracraft.config.subset_options import SubsetOptions
from loracraft.config.suggest import did_you_mean
from loracraft.errors import UserError

# kohya keys loracraft does not implement: named as such instead of "unknown", so a kohya user knows why.
UNSUPPORTED_KOHYA_KEYS = frozenset({
    "metadata_file", "cache_info", "custom_attributes", "network_multiplier", "resize_interpolation",
})  # fmt: skip


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FolderKeys(_Table):
    """Subset keys that exist only in a dataset TOML (a plain folder gets them from its name)."""

    num_repeats: int = Field(1, ge=1)
    class_tokens: str | None = None


def _table_keys(options: type[BaseModel]) -> dict[str, str]:
    """field -> TOML key of an options class."""
    return {name: info.toml_key for name, info in flag_infos(options).items()}


SUBSET_KEYS = _table_keys(SubsetOptions)
DATASET_KEYS = _table_keys(DatasetOptions)
# In a table's messages, its keys are named bare and every other setting as a flag.
TABLE_KEYS = {**SUBSET_KEYS, **DATASET_KEYS}


def _optional_keys(*models: type[BaseModel]) -> dict[str, Any]:
    """The fields of `models` as optional table keys (None = not set here) with the fields' checks."""
    keys: dict[str, Any] = {}
    for model in models:
        for name, field in model.model_fields.items():
            annotation = (
                Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            )
            key = TABLE_KEYS.get(name, name)
            keys[key] = (annotation | None, Field(None, description=field.description))
    return keys


SubsetKeys = create_model("SubsetKeys", __base__=_Table, **_optional_keys(SubsetOptions, FolderKeys))
DatasetKeys = create_model("DatasetKeys", __base__=_Table, **_optional_keys(DatasetOptions))


class GeneralTable(DatasetKeys, SubsetKeys):
    """`[general]`."""


class SubsetTable(SubsetKeys):
    """`[[datasets.subsets]]`: one image folder."""

    image_dir: str = Field(min_length=1)
    is_reg: bool = False
    is_validation: bool = False

    @model_validator(mode="after")
    def _validation_never_regularizes(self) -> SubsetTable:
        if self.is_reg and self.is_validation:
            raise ValueError(
                "is_reg and is_validation exclude each other: validation images are measured, reg images "
                "train; pick one"
            )
        return self


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
    options: SubsetOptions
    label: str
    is_validation: bool = False


@dataclass(frozen=True)
class DatasetBlueprint:
    """A dataset with every value resolved; `label` names it in messages (`x.toml [[datasets]][0]`)."""

    subsets: tuple[SubsetBlueprint, ...]
    options: DatasetOptions
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


def _flag_only_hint(key: str) -> str:
    table_key = TABLE_KEYS.get(key)
    if table_key is not None:  # a table setting under its flag name (train_batch_size)
        return f"'{key}' is written '{table_key}' in a dataset TOML (or pass --{key})"
    return f"'{key}' is a command-line setting, not a dataset key; pass --{key}"


def _misplaced_hint(key: str) -> str | None:
    """Why a kohya key does not belong in this table, or None when it is not a kohya key at all."""
    if key in UNSUPPORTED_KOHYA_KEYS:
        return f"kohya key '{key}' is not supported by loracraft; remove it"
    if key in SubsetTable.model_fields and key not in SubsetKeys.model_fields:
        return f"'{key}' belongs in a [[datasets.subsets]] table"
    if key in DatasetKeys.model_fields:
        return f"'{key}' is a dataset key; put it in [[datasets]] or [general]"
    if key in TrainConfig.model_fields:
        return _flag_only_hint(key)
    if key == "subsets":
        return "'subsets' belong in a [[datasets]] table, written [[datasets.subsets]]"
    return None


def _value_message(error: dict) -> str:
    """A validation error's message; a rule's message in the table's words."""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, RuleViolation):
        return cause.for_table(TABLE_KEYS)
    return error["msg"].removeprefix("Value error, ")


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
    message = _value_message(first)
    if isinstance((first.get("ctx") or {}).get("error"), RuleViolation):
        return f"{where}: {message}"  # a rule's message names its keys itself
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


def _resolved(options: type[BaseModel], tables: Sequence[_Table], config: TrainConfig, label: str) -> Any:
    """`options` with each value from the innermost table that sets it, else from the flags; checked by
    the options' own rules, with a failure named by `label`."""
    values = {name: getattr(config, name) for name in options.model_fields}
    for table in reversed(tables):  # outermost first, so inner tables overwrite
        for name in options.model_fields:
            value = getattr(table, TABLE_KEYS[name], None)
            if value is not None:
                values[name] = value
    try:
        return options.model_validate(values)
    except ValidationError as err:
        raise UserError(f"{label}: {_value_message(err.errors()[0])}") from None


def _folder_key(key: str, tables: Sequence[_Table]) -> Any:
    for table in tables:
        value = getattr(table, key, None)
        if value is not None:
            return value
    return FolderKeys.model_fields[key].default


def _subset_blueprint(
    subset: SubsetTable, tables: Sequence[_Table], config: TrainConfig, label: str
) -> SubsetBlueprint:
    options = _resolved(SubsetOptions, tables, config, label)
    conflict = run_conflict_with_subset(config, options)
    if conflict is not None:
        raise UserError(f"{label}: {conflict.for_table(TABLE_KEYS)}")
    return SubsetBlueprint(
        image_dir=Path(subset.image_dir),
        num_repeats=_folder_key("num_repeats", tables),
        is_reg=subset.is_reg,
        class_tokens=_folder_key("class_tokens", tables),
        options=options,
        label=label,
        is_validation=subset.is_validation,
    )


def resolve_datasets(file: DatasetConfigFile, config: TrainConfig, source: str) -> list[DatasetBlueprint]:
    """Every dataset and subset of `file` with the values they get after precedence."""
    blueprints = []
    for d, dataset in enumerate(file.datasets):
        label = f"{source} [[datasets]][{d}]"
        tables = (dataset, file.general)
        subsets = tuple(
            _subset_blueprint(subset, (subset, *tables), config, f"{label}.subsets[{s}]")
            for s, subset in enumerate(dataset.subsets)
        )
        options = _resolved(DatasetOptions, tables, config, label)
        blueprints.append(DatasetBlueprint(subsets=subsets, options=options, label=label))
    _refuse_trained_validation_folders(blueprints, source)
    return blueprints


def _refuse_trained_validation_folders(blueprints: Sequence[DatasetBlueprint], source: str) -> None:
    """A folder held out as a validation subset must not train elsewhere in the file: its validation
    loss would measure images the LoRA learns."""
    subsets = [subset for blueprint in blueprints for subset in blueprint.subsets]
    trained = {subset.image_dir.resolve(): subset for subset in subsets if not subset.is_validation}
    for subset in subsets:
        other = trained.get(subset.image_dir.resolve()) if subset.is_validation else None
        if other is not None:
            raise UserError(
                f"{subset.label}: image_dir {subset.image_dir} is a validation subset (is_validation = true) "
                f"but also trains as {other.label.removeprefix(source).strip()}; a folder is either held out or "
                "trained, so remove one"
            )


def load_dataset_config(path: str | Path, config: TrainConfig) -> list[DatasetBlueprint]:
    """`--dataset_config` read, validated and resolved against `config`'s flags."""
    return resolve_datasets(read_dataset_config(path), config, str(path))
