"""What a LoRA file's `ss_*` metadata says about the run that made it: settings, dataset folders, tags,
buckets, base model.

kohya writes every value as `str(value)` and nested ones as JSON (reference/kohya-sd-scripts.md §3.1;
networks/metadata.py writes the same keys): "None", "True", "(512, 512)", `{"10_mychar": {"n_repeats":
10, "img_count": 25}}`. They are read back into numbers, lists and dicts here. A run with a dataset
config records its datasets in `ss_datasets` (buckets and regularisation folders per dataset); a
plain-folder run at the top level (`ss_bucket_info`, `ss_reg_dataset_dirs`). A value that does not parse
is kept as its text: a file edited by hand is still shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

SETTINGS = (
    ("steps", "ss_steps"), ("max_train_steps", "ss_max_train_steps"), ("epoch", "ss_epoch"),
    ("num_epochs", "ss_num_epochs"), ("batches_per_epoch", "ss_num_batches_per_epoch"),
    ("train_images", "ss_num_train_images"), ("reg_images", "ss_num_reg_images"),
    ("batch_size", "ss_total_batch_size"), ("batch_size_per_device", "ss_batch_size_per_device"),
    ("gradient_accumulation_steps", "ss_gradient_accumulation_steps"), ("optimizer", "ss_optimizer"),
    ("learning_rate", "ss_learning_rate"), ("unet_lr", "ss_unet_lr"), ("text_encoder_lr", "ss_text_encoder_lr"),
    ("lr_scheduler", "ss_lr_scheduler"), ("lr_warmup_steps", "ss_lr_warmup_steps"),
    ("network_module", "ss_network_module"), ("network_dim", "ss_network_dim"),
    ("network_alpha", "ss_network_alpha"), ("network_args", "ss_network_args"),
    ("network_dropout", "ss_network_dropout"), ("resolution", "ss_resolution"), ("clip_skip", "ss_clip_skip"),
    ("max_token_length", "ss_max_token_length"), ("mixed_precision", "ss_mixed_precision"),
    ("full_fp16", "ss_full_fp16"), ("seed", "ss_seed"), ("noise_offset", "ss_noise_offset"),
    ("min_snr_gamma", "ss_min_snr_gamma"), ("base_model", "ss_sd_model_name"),
    ("base_model_hash", "ss_sd_model_hash"), ("base_model_sha256", "ss_new_sd_model_hash"),
    ("vae", "ss_vae_name"), ("base_model_version", "ss_base_model_version"), ("output_name", "ss_output_name"),
    ("training_comment", "ss_training_comment"), ("started_at", "ss_training_started_at"),
    ("finished_at", "ss_training_finished_at"),
)  # fmt: skip
"""(name in loracraft's report, kohya's metadata key), in the order a report shows them."""
_TEXT_SETTINGS = frozenset({
    "optimizer", "lr_scheduler", "network_module", "mixed_precision", "base_model", "base_model_hash",
    "base_model_sha256", "vae", "base_model_version", "output_name", "training_comment",
})  # fmt: skip
"""Settings kept as text even when they look like a number (a hash of digits, a name)."""
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Folder:
    """A dataset folder (kohya subset): `N_name` with N repeats of its images."""

    name: str
    repeats: int | None
    images: int | None
    regularization: bool = False


@dataclass(frozen=True)
class Bucket:
    width: int
    height: int
    count: int
    """Training samples (images x repeats) in the bucket."""
    dataset: int | None = None
    """The dataset's index in ss_datasets; None for a plain-folder run."""


@dataclass(frozen=True)
class TrainingRecord:
    settings: dict[str, object]
    """SETTINGS' names -> values, for the keys the file has."""
    folders: tuple[Folder, ...]
    tags: tuple[tuple[str, int], ...]
    """Every tag over all folders with its count, most frequent first."""
    tags_by_folder: dict[str, dict[str, int]]
    buckets: tuple[Bucket, ...]

    @property
    def clip_skip(self) -> int | None:
        value = self.settings.get("clip_skip")
        return value if isinstance(value, int) else None


def parse_value(text: str) -> object:
    """A kohya metadata value: JSON, a Python tuple like "(512, 512)", None/True/False, a number, or text."""
    stripped = text.strip()
    if stripped in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[stripped]
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    if stripped.startswith("(") and stripped.endswith(")"):
        numbers = _NUMBER.findall(stripped)
        return [_number(item) for item in numbers] if numbers else text
    if _NUMBER.fullmatch(stripped):
        return _number(stripped)
    return text


def _text(text: str) -> str | None:
    return None if text == "None" else text


def _number(text: str) -> int | float:
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def training_record(metadata: Mapping[str, str]) -> TrainingRecord:
    settings = {
        name: _text(metadata[key]) if name in _TEXT_SETTINGS else parse_value(metadata[key])
        for name, key in SETTINGS
        if key in metadata
    }
    datasets = _parsed(metadata, "ss_datasets", list) or []
    tags_by_folder = _parsed(metadata, "ss_tag_frequency", dict) or {}
    return TrainingRecord(
        settings=settings,
        folders=_folders(metadata, datasets),
        tags=_merged_tags(tags_by_folder),
        tags_by_folder=tags_by_folder,
        buckets=_buckets(metadata, datasets),
    )


def _parsed(metadata: Mapping[str, str], key: str, kind: type) -> object:
    value = parse_value(metadata[key]) if key in metadata else None
    return value if isinstance(value, kind) else None


def _folders(metadata: Mapping[str, str], datasets: list) -> tuple[Folder, ...]:
    folders = [
        Folder(name, _int(entry, "n_repeats"), _int(entry, "img_count"), regularization)
        for key, regularization in (("ss_dataset_dirs", False), ("ss_reg_dataset_dirs", True))
        for name, entry in (_parsed(metadata, key, dict) or {}).items()
    ]
    if "ss_reg_dataset_dirs" not in metadata:  # a dataset-config run lists its reg folders per dataset
        folders += [
            Folder(str(subset.get("image_dir")), _int(subset, "num_repeats"), _int(subset, "img_count"), True)
            for dataset in datasets
            if isinstance(dataset, dict)
            for subset in dataset.get("subsets", [])
            if isinstance(subset, dict) and subset.get("is_reg")
        ]
    return tuple(folders)


def _int(entry: object, key: str) -> int | None:
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, int) else None


def _merged_tags(tags_by_folder: Mapping[str, object]) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    for tags in tags_by_folder.values():
        for tag, count in tags.items() if isinstance(tags, dict) else ():
            if isinstance(count, int):
                counts[tag] = counts.get(tag, 0) + count
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _buckets(metadata: Mapping[str, str], datasets: list) -> tuple[Bucket, ...]:
    infos: list[tuple[int | None, object]] = [(None, _parsed(metadata, "ss_bucket_info", dict))]
    infos += [
        (i, dataset.get("bucket_info")) for i, dataset in enumerate(datasets) if isinstance(dataset, dict)
    ]
    buckets = []
    for dataset, info in infos:
        entries = info.get("buckets", {}) if isinstance(info, dict) else {}
        for entry in entries.values() if isinstance(entries, dict) else ():
            resolution = entry.get("resolution") if isinstance(entry, dict) else None
            count = _int(entry, "count")
            if isinstance(resolution, list) and len(resolution) == 2 and count is not None:
                buckets.append(Bucket(int(resolution[0]), int(resolution[1]), count, dataset))
    return tuple(buckets)
