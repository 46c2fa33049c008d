"""From TrainConfig to the dataset plan: read the dataset config or scan the kohya folders, hold out the
validation images, then balance, bucket and count steps over every dataset (and plan the held-out
images as one epoch of their own)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from loracraft.config.dataset_config import DatasetBlueprint, SubsetBlueprint, load_dataset_config
from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.fields import options_of
from loracraft.config.schema import TrainConfig
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.image_check import (
    BadImage,
    bad_images_listing,
    bad_images_message,
    check_images,
    drop_images,
    skipped_image_warning,
)
from loracraft.data.plan import DatasetPlan, DatasetSpec, build_run_plan
from loracraft.data.scan import FolderScan, ScanResult, scan_dreambooth_root, scan_subset_dir
from loracraft.data.validation_split import split_datasets
from loracraft.errors import UserError
from loracraft.training.accelerator import shows_progress


def scan_planned_subset(planned: SubsetBlueprint) -> FolderScan:
    """Scan a dataset-config subset's folder; its records carry the subset's resolved options."""
    scan = scan_subset_dir(
        planned.image_dir,
        num_repeats=planned.num_repeats,
        class_tokens=planned.class_tokens or "",
        is_reg=planned.is_reg,
        caption_extension=planned.options.caption_extension,
    )
    return replace(scan, subset=replace(scan.subset, options=planned.options))


def scan_blueprint(blueprint: DatasetBlueprint) -> tuple[DatasetSpec, ScanResult]:
    """Scan every subset folder of one dataset-config dataset; empty folders are left out with a warning.
    The scan result holds the warnings and the images whose header cannot be read."""
    result = ScanResult()
    for planned in blueprint.subsets:
        if not planned.image_dir.is_dir():
            raise UserError(
                f"{planned.label}: image_dir {planned.image_dir} does not exist or is not a folder "
                f"(relative paths are read from the current folder {Path.cwd()}, as in kohya)"
            )
        scan = scan_planned_subset(planned)
        subset = scan.subset
        result += ScanResult((subset,) if subset.records else (), tuple(scan.warnings), scan.bad)
    if not result.subsets and not result.bad:
        result += ScanResult(
            warnings=(f"{blueprint.label}: none of its subsets holds an image; it adds nothing to the run",)
        )
    return DatasetSpec(result.subsets, blueprint.options, blueprint.label), result


def _folder_subsets(config: TrainConfig) -> ScanResult:
    if not config.train_data_dir:
        raise UserError("--train_data_dir or --dataset_config is required: where are the training images?")
    extension = config.caption_extension
    result = scan_dreambooth_root(Path(config.train_data_dir), is_reg=False, caption_extension=extension)
    if config.reg_data_dir:
        result += scan_dreambooth_root(Path(config.reg_data_dir), is_reg=True, caption_extension=extension)
    # Plain folders take their caption and augmentation options from the flags.
    options = options_of(SubsetOptions, config)
    return replace(result, subsets=tuple(replace(subset, options=options) for subset in result.subsets))


@dataclass(frozen=True)
class ScannedDatasets:
    """The run's datasets as scanned, with the scan's warnings, the images whose header cannot be read,
    and the folders the dataset config holds out whole for validation (`is_validation = true`)."""

    specs: list[DatasetSpec]
    warnings: list[str]
    bad: list[BadImage]
    held_out_dirs: frozenset[Path] = frozenset()


def dataset_specs(config: TrainConfig) -> ScannedDatasets:
    """The dataset config's datasets, or one made of the folders, scanned."""
    if not config.dataset_config:
        result = _folder_subsets(config)
        spec = DatasetSpec(result.subsets, options_of(DatasetOptions, config))
        return ScannedDatasets([spec], list(result.warnings), list(result.bad))
    warnings = []
    if config.train_data_dir or config.reg_data_dir:
        warnings.append(
            f"--dataset_config {config.dataset_config} is given, so --train_data_dir and --reg_data_dir are "
            "ignored (as in kohya); list those folders as [[datasets.subsets]] instead"
        )
    blueprints = load_dataset_config(config.dataset_config, config)
    specs, bad = [], []
    for blueprint in blueprints:
        spec, result = scan_blueprint(blueprint)
        specs.append(spec)
        warnings += result.warnings
        bad += result.bad
    held_out = frozenset(
        s.image_dir for blueprint in blueprints for s in blueprint.subsets if s.is_validation
    )
    return ScannedDatasets(specs, warnings, bad, held_out)


def _unique(bad: Iterable[BadImage]) -> list[BadImage]:
    # A folder used by two datasets is scanned twice; its bad images are listed once.
    return list({item.path: item for item in bad}.values())


def screen_datasets(
    specs: list[DatasetSpec], unreadable: Sequence[BadImage], skip_bad_images: bool
) -> tuple[list[DatasetSpec], list[str]]:
    """Decode every readable image once before training, then deal with all bad images together, those
    whose header failed in the scan (`unreadable`) and those that fail to decode: stop with one error
    listing them, or with `--skip_bad_images` drop each with a warning."""
    records = {record.path: record for spec in specs for subset in spec.subsets for record in subset.records}
    bad = _unique([*unreadable, *check_images(list(records.values()), progress=shows_progress())])
    if not bad:
        return specs, []
    if not skip_bad_images:
        raise UserError(bad_images_message(bad))
    paths = {item.path for item in bad}
    kept = [replace(spec, subsets=tuple(drop_images(spec.subsets, paths))) for spec in specs]
    if not any(not subset.is_reg for spec in kept for subset in spec.subsets):
        raise UserError(
            f"no training image is left after --skip_bad_images skipped {len(bad)} image(s): "
            f"{bad_images_listing(bad)}; re-save or replace them"
        )
    return kept, [skipped_image_warning(item) for item in bad]


def validation_plan(config: TrainConfig, specs: Sequence[DatasetSpec], seed: int) -> DatasetPlan | None:
    """The held-out images as one epoch of their datasets' buckets and batch sizes, ordered by the
    validation seed (else the run's). Every process evaluates all of it, so it is planned for one."""
    if not specs:
        return None
    return build_run_plan(
        specs,
        seed=seed if config.validation_seed is None else config.validation_seed,
        max_train_epochs=1,
        max_train_steps=None,
    )


def plan_dataset(
    config: TrainConfig, seed: int, num_processes: int, echo: Callable[[str], None]
) -> DatasetPlan:
    scanned = dataset_specs(config)
    specs, screen_warnings = screen_datasets(scanned.specs, scanned.bad, config.skip_bad_images)
    split = split_datasets(specs, scanned.held_out_dirs, seed)
    plan = build_run_plan(
        split.train,
        seed=seed,
        max_train_epochs=config.max_train_epochs,
        max_train_steps=config.max_train_steps,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_processes=num_processes,
    )
    validation = validation_plan(config, split.validation, seed)
    warnings = [*scanned.warnings, *screen_warnings, *split.warnings, *plan.warnings]
    warnings += [f"validation set: {warning}" for warning in validation.warnings] if validation else []
    for warning in warnings:
        echo(f"warning: {warning}")
    return replace(plan, validation=validation)
