"""From TrainConfig to the dataset plan: read the dataset config or scan the kohya folders, then balance,
bucket and count steps over every dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from loracraft.config.dataset_config import (
    DatasetBlueprint,
    augment_options,
    caption_options,
    load_dataset_config,
)
from loracraft.config.schema import TrainConfig
from loracraft.data.image_check import bad_images_message, check_images, drop_images, skipped_image_warning
from loracraft.data.plan import BucketSettings, DatasetPlan, DatasetSpec, build_run_plan
from loracraft.data.records import Subset
from loracraft.data.scan import scan_dreambooth_dir, scan_subset_dir
from loracraft.errors import UserError


def scan_blueprint(
    blueprint: DatasetBlueprint, skip_bad_images: bool = False
) -> tuple[DatasetSpec, list[str]]:
    """Scan every subset folder of one dataset-config dataset; empty folders are left out with a warning."""
    subsets, warnings = [], []
    for planned in blueprint.subsets:
        if not planned.image_dir.is_dir():
            raise UserError(
                f"{planned.label}: image_dir {planned.image_dir} does not exist or is not a folder "
                f"(relative paths are read from the current folder {Path.cwd()}, as in kohya)"
            )
        subset, subset_warnings = scan_subset_dir(
            planned.image_dir,
            num_repeats=planned.num_repeats,
            class_tokens=planned.class_tokens or "",
            is_reg=planned.is_reg,
            caption_extension=planned.caption_extension,
            skip_bad_images=skip_bad_images,
        )
        warnings += subset_warnings
        if subset.records:
            subsets.append(replace(subset, captions=planned.captions, augment=planned.augment))
    if not subsets:
        warnings.append(f"{blueprint.label}: none of its subsets holds an image; it adds nothing to the run")
    spec = DatasetSpec(
        tuple(subsets), blueprint.resolution, blueprint.batch_size, blueprint.buckets, blueprint.label
    )
    return spec, warnings


def check_cache_rules(blueprints: list[DatasetBlueprint], config: TrainConfig) -> None:
    """The flag schema's caching rules, per subset: a TOML subset can turn on what the flags left off."""
    for subset in (s for blueprint in blueprints for s in blueprint.subsets):
        if config.cache_latents and (subset.augment.color_aug or subset.augment.random_crop):
            key = "color_aug" if subset.augment.color_aug else "random_crop"
            raise UserError(
                f"{subset.label}: {key} changes the pixels every epoch, so latents cannot be cached; "
                f"remove {key} or set --cache_latents false"
            )
        if config.cache_text_encoder_outputs and not subset.captions.is_static:
            raise UserError(
                f"{subset.label}: --cache_text_encoder_outputs needs captions that never change, but this "
                "subset shuffles, drops or wildcards them; turn those off or drop the cache flag"
            )


def _folder_subsets(config: TrainConfig) -> tuple[list[Subset], list[str]]:
    if not config.train_data_dir:
        raise UserError("--train_data_dir or --dataset_config is required: where are the training images?")
    options = {"caption_extension": config.caption_extension, "skip_bad_images": config.skip_bad_images}
    subsets, warnings = scan_dreambooth_dir(Path(config.train_data_dir), is_reg=False, **options)
    if config.reg_data_dir:
        reg_subsets, reg_warnings = scan_dreambooth_dir(Path(config.reg_data_dir), is_reg=True, **options)
        subsets += reg_subsets
        warnings += reg_warnings
    # Plain folders take their caption and augmentation options from the flags.
    captions, augment = caption_options((), config), augment_options((), config)
    return [replace(subset, captions=captions, augment=augment) for subset in subsets], warnings


def dataset_specs(config: TrainConfig) -> tuple[list[DatasetSpec], list[str]]:
    """The run's datasets, scanned, with warnings: the dataset config's, or one made of the folders."""
    if not config.dataset_config:
        subsets, warnings = _folder_subsets(config)
        settings = BucketSettings(
            config.enable_bucket,
            config.min_bucket_reso,
            config.max_bucket_reso,
            config.bucket_reso_steps,
            config.bucket_no_upscale,
        )
        return [DatasetSpec(tuple(subsets), config.resolution, config.train_batch_size, settings)], warnings
    warnings = []
    if config.train_data_dir or config.reg_data_dir:
        warnings.append(
            f"--dataset_config {config.dataset_config} is given, so --train_data_dir and --reg_data_dir are "
            "ignored (as in kohya); list those folders as [[datasets.subsets]] instead"
        )
    blueprints = load_dataset_config(config.dataset_config, config)
    check_cache_rules(blueprints, config)
    specs = []
    for blueprint in blueprints:
        spec, scan_warnings = scan_blueprint(blueprint, config.skip_bad_images)
        specs.append(spec)
        warnings += scan_warnings
    return specs, warnings


def screen_datasets(specs: list[DatasetSpec], skip_bad_images: bool) -> tuple[list[DatasetSpec], list[str]]:
    """Decode every image once before training: stop on the undecodable ones, or drop them with
    `--skip_bad_images` (the plan then says if a dataset is left without training images)."""
    bad = check_images([record for spec in specs for subset in spec.subsets for record in subset.records])
    if not bad:
        return specs, []
    if not skip_bad_images:
        raise UserError(bad_images_message(bad))
    paths = {item.path for item in bad}
    kept = [replace(spec, subsets=tuple(drop_images(spec.subsets, paths))) for spec in specs]
    return kept, [skipped_image_warning(item) for item in bad]


def plan_dataset(
    config: TrainConfig, seed: int, num_processes: int, echo: Callable[[str], None]
) -> DatasetPlan:
    specs, warnings = dataset_specs(config)
    specs, screen_warnings = screen_datasets(specs, config.skip_bad_images)
    warnings += screen_warnings
    plan = build_run_plan(
        specs,
        seed=seed,
        max_train_epochs=config.max_train_epochs,
        max_train_steps=config.max_train_steps,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_processes=num_processes,
    )
    for warning in [*warnings, *plan.warnings]:
        echo(f"warning: {warning}")
    return plan
