"""How a setting is declared once: `flag(...)` carries everything the rest of loracraft derives from it.

A field of `TrainConfig` (or of the subset and dataset options it is made of) is one kohya flag. Its
declaration holds the name (the attribute), the type and sd-scripts' default (the annotation and the
first argument), the description (`--help`, the web UI's tooltip), the `--help` group, and where kohya
records or reads it elsewhere:

- `ss_key`: the `ss_*` metadata key kohya writes the value under in a LoRA file; with
  `ss_folders_only`, kohya writes it only for plain-folder runs (with a dataset config, the per-dataset
  records of `ss_datasets` hold it);
- `in_subset_record`: kohya writes the value, under the field's name, in each subset's record of
  `ss_datasets` (runs with a dataset config);
- `toml_key`: the dataset-TOML key when it is not the flag's name (`train_batch_size` -> `batch_size`);
- `gui_default`: the kohya_ss GUI's default where it differs from sd-scripts' (for the web UI's forms);
- `aliases`: other names kohya accepts for the flag (its old misspellings), read with a note;
- `resume_safe`: changing it between a run and its `--resume` changes nothing the run computes (where
  files go, what is logged, how fast it runs). Every field of the OUTPUT group is; any other field that
  differs from the saved state's config stops a resume (`training/resume.py`);
- `secret`: the value (an API key) is never written anywhere: not in NAME.toml, a state's config, NAME.log,
  a resume note or the trackers' config;
- `invocation_only`: the value belongs to one `loracraft train` call, not to the run's recipe (the job
  queue's progress file): NAME.toml and a state's config leave it out, so that training again or resuming
  from them does not write into a job's files.

Where a setting may be given (run, dataset or subset) is the class that declares it: see
`subset_options.py`, `dataset_options.py` and `schema.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, Field

MODEL = "Model"
DATASET = "Dataset"
CAPTIONS = "Captions and text encoder"
BUCKETS = "Aspect-ratio buckets"
CACHING = "Caching and data loading"
NETWORK = "Network"
OPTIMIZER = "Optimizer and learning rate"
TRAINING = "Training length and precision"
OUTPUT = "Output and logging"
AUGMENT = "Augmentation"
NOISE_AND_LOSS = "Noise, timesteps and loss"
# The order of the groups in `--help` and, later, in the web UI.
GROUPS = (
    MODEL, DATASET, CAPTIONS, AUGMENT, BUCKETS, CACHING, NETWORK, OPTIMIZER, NOISE_AND_LOSS, TRAINING, OUTPUT,
)  # fmt: skip

_NOT_GIVEN = object()
OptionsModel = TypeVar("OptionsModel", bound=BaseModel)


def flag(
    default: Any,
    group: str,
    doc: str,
    *,
    ss_key: str | None = None,
    ss_folders_only: bool = False,
    in_subset_record: bool = False,
    toml_key: str | None = None,
    gui_default: Any = _NOT_GIVEN,
    aliases: tuple[str, ...] = (),
    resume_safe: bool = False,
    secret: bool = False,
    invocation_only: bool = False,
    **constraints: Any,
) -> Any:
    """A pydantic Field for one setting; `constraints` are pydantic's (ge=0, le=1, ...)."""
    extra: dict[str, Any] = {"group": group}
    if ss_key is not None:
        extra["ss_key"] = ss_key
        extra["ss_folders_only"] = ss_folders_only
    if in_subset_record:
        extra["in_subset_record"] = True
    if toml_key is not None:
        extra["toml_key"] = toml_key
    if gui_default is not _NOT_GIVEN:
        extra["gui_default"] = gui_default
    if aliases:
        extra["aliases"] = list(aliases)
    if resume_safe or group == OUTPUT:
        extra["resume_safe"] = True
    if secret:
        extra["secret"] = True
    if invocation_only:
        extra["invocation_only"] = True
    return Field(default, description=doc, json_schema_extra=extra, **constraints)


@dataclass(frozen=True)
class FlagInfo:
    """A field's declaration, read back: what `--help`, the TOML tables and the metadata use."""

    name: str
    group: str
    description: str
    default: Any
    ss_key: str | None
    ss_folders_only: bool
    in_subset_record: bool
    toml_key: str
    has_gui_default: bool
    gui_default: Any
    aliases: tuple[str, ...]
    resume_safe: bool
    secret: bool
    invocation_only: bool

    @property
    def recorded(self) -> bool:
        """Written to the run's config files (NAME.toml, a state's config)."""
        return not (self.secret or self.invocation_only)


def flag_infos(model: type[BaseModel]) -> dict[str, FlagInfo]:
    """Every field of `model` (in declaration order) with its declaration."""
    infos = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        infos[name] = FlagInfo(
            name=name,
            group=str(extra.get("group", "Other")),
            description=field.description or "",
            default=field.default,
            ss_key=extra.get("ss_key"),
            ss_folders_only=bool(extra.get("ss_folders_only")),
            in_subset_record=bool(extra.get("in_subset_record")),
            toml_key=str(extra.get("toml_key", name)),
            has_gui_default="gui_default" in extra,
            gui_default=extra.get("gui_default"),
            aliases=tuple(extra.get("aliases", ())),
            resume_safe=bool(extra.get("resume_safe")),
            secret=bool(extra.get("secret")),
            invocation_only=bool(extra.get("invocation_only")),
        )
    return infos


def alias_names(model: type[BaseModel]) -> dict[str, str]:
    """alias -> field name, for every field of `model` that kohya also reads under another name."""
    return {alias: name for name, info in flag_infos(model).items() for alias in info.aliases}


def alias_note(alias: str, name: str, prefix: str = "") -> str:
    return f"note: {prefix}{alias} is kohya's old spelling of {prefix}{name}; read as {prefix}{name}"


def options_of(model: type[OptionsModel], values: BaseModel) -> OptionsModel:
    """`model`'s fields taken from `values` (e.g. a TrainConfig's subset options), validated again."""
    return model.model_validate({name: getattr(values, name) for name in model.model_fields})


def secret_names(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` whose values are never written anywhere."""
    return tuple(name for name, info in flag_infos(model).items() if info.secret)
