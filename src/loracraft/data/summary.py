"""The dataset plan as text, printed before training so users can check the arithmetic the guides teach:
images x repeats = samples, + reg samples, / batch size = batches, (/ processes,) / accumulation = steps,
x epochs.
With a dataset config every dataset gets its own block, and the batches of all of them add up. Images
held out for the validation loss are counted apart, per folder: what trains, what validates."""

import math

from loracraft.data.plan import DatasetPlan, PlannedDataset
from loracraft.data.records import Subset


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    return f"{count} batches" if word == "batch" else f"{count} {word}s"


def _subset_line(plan: DatasetPlan, index: int) -> str:
    subset = plan.subsets[index]
    images = [image for image in plan.images if image.subset_index == index]
    samples = sum(image.repeats for image in images)
    head = (
        f"  {'reg  ' if subset.is_reg else 'train'}  {subset.name}: {_plural(len(subset.records), 'image')}"
    )
    if not subset.is_reg:
        return f"{head} x {_plural(subset.num_repeats, 'repeat')} = {_plural(samples, 'sample')}"
    unused = len(subset.records) - len(images)
    tail = f" ({_plural(unused, 'image')} unused)" if unused else ""
    return f"{head} x {_plural(subset.num_repeats, 'repeat')}, balanced to {_plural(samples, 'sample')}{tail}"


def _bucket_header(dataset: PlannedDataset) -> str:
    size = f"{dataset.resolution[0]}x{dataset.resolution[1]}"
    if not dataset.enable_bucket:
        mode = "bucketing off: every image resized and center-cropped to it"
    elif dataset.bucket_no_upscale:
        mode = "bucket_no_upscale: each image's own size, shrunk to the area, floored to the step"
    else:
        mode = "aspect-ratio buckets"
    return f"Buckets (resolution {size}, {mode}; mean aspect-ratio error {dataset.mean_img_ar_error:.4f})"


def _dataset_lines(plan: DatasetPlan, dataset: PlannedDataset) -> list[str]:
    lines = [_subset_line(plan, index) for index in dataset.subset_indices]
    has_reg = any(plan.subsets[index].is_reg for index in dataset.subset_indices)
    reg = f" + {dataset.num_reg_samples} reg" if has_reg else ""
    lines.append(
        f"  samples per epoch: {dataset.num_train_samples} train{reg} = "
        f"{dataset.num_train_samples + dataset.num_reg_samples}"
    )
    lines.append(_bucket_header(dataset))
    return lines + _bucket_lines(dataset)


def _bucket_lines(dataset: PlannedDataset) -> list[str]:
    lines = []
    for bucket, samples in zip(dataset.buckets, dataset.bucket_samples, strict=True):
        batches = math.ceil(len(samples) / dataset.batch_size)
        lines.append(
            f"  {bucket[0]}x{bucket[1]}: {_plural(len(samples), 'sample')} -> {_plural(batches, 'batch')}"
        )
    return lines


def _batch_line(dataset: PlannedDataset) -> str:
    samples = dataset.num_train_samples + dataset.num_reg_samples
    return (
        f"{_plural(samples, 'sample')} in batches of {dataset.batch_size} = "
        f"{_plural(dataset.batches_per_epoch, 'batch')}"
    )


def _process_lines(plan: DatasetPlan) -> list[str]:
    """How N processes share an epoch (kohya's arithmetic: each loads ceil(batches / N) of them) and
    how many images one optimizer step learns from."""
    processes, accumulation = plan.num_processes, plan.gradient_accumulation_steps
    per_process = math.ceil(plan.batches_per_epoch / processes)
    repeated = per_process * processes - plan.batches_per_epoch
    padding = (
        f" ({_plural(repeated, 'batch')} from the epoch's start run twice, so every process has as many)"
        if repeated
        else ""
    )
    sizes = sorted({dataset.batch_size for dataset in plan.datasets})
    global_sizes = [size * processes * accumulation for size in sizes]
    return [
        f"  {_plural(plan.batches_per_epoch, 'batch')} / {processes} processes = "
        f"{_plural(per_process, 'batch')} per process per epoch{padding}",
        f"  global batch: batch size {' or '.join(map(str, sizes))} x {processes} processes x grad "
        f"accumulation {accumulation} = {' or '.join(map(str, global_sizes))} images per optimizer step",
    ]


def _step_lines(plan: DatasetPlan) -> list[str]:
    steps = plan.steps
    rounding = " (each bucket rounds up on its own)" if len(plan.buckets) > 1 else ""
    if len(plan.datasets) == 1:
        lines = [f"  {_batch_line(plan.datasets[0])} per epoch{rounding}"]
    else:
        lines = [f"  {dataset.label}: {_batch_line(dataset)}" for dataset in plan.datasets]
        total = " + ".join(str(dataset.batches_per_epoch) for dataset in plan.datasets)
        lines.append(f"  {total} = {_plural(plan.batches_per_epoch, 'batch')} per epoch{rounding}")
    batches = plan.batches_per_epoch
    if plan.num_processes > 1:
        lines += _process_lines(plan)
        batches = math.ceil(plan.batches_per_epoch / plan.num_processes)
    lines.append(
        f"  {_plural(batches, 'batch')} / grad accumulation {plan.gradient_accumulation_steps} = "
        f"{_plural(steps.steps_per_epoch, 'optimizer step')} per epoch"
    )
    if plan.epochs_given:
        lines.append(
            f"  {_plural(steps.num_epochs, 'epoch')} x {steps.steps_per_epoch} = "
            f"{_plural(steps.max_train_steps, 'optimizer step')}"
        )
    else:
        partial = steps.max_train_steps % steps.steps_per_epoch
        lines.append(
            f"  max_train_steps {steps.max_train_steps} / {steps.steps_per_epoch} per epoch = "
            f"{_plural(steps.num_epochs, 'epoch')}"
            + (f" (the last one stops after {_plural(partial, 'step')})" if partial else "")
        )
    return lines


def _held_out_line(plan: DatasetPlan, dataset: PlannedDataset, held_out: Subset) -> str:
    """One folder's split: how many of its images train and how many validate."""
    trained = {
        plan.subsets[index].dir: len(plan.subsets[index].records)
        for planned in plan.datasets
        if planned.label == dataset.label
        for index in planned.subset_indices
    }
    validating = _plural(len(held_out.records), "image")
    if held_out.dir not in trained:
        return f"  {held_out.name}: {validating} validate (is_validation subset: the folder never trains)"
    share = dataset.options.validation_split
    return (
        f"  {held_out.name}: {_plural(trained[held_out.dir], 'image')} train, {validating} validate "
        f"(validation_split {share:g})"
    )


def _validation_lines(plan: DatasetPlan, validation: DatasetPlan) -> list[str]:
    """The held-out images per folder, then their buckets and batches (one epoch, each image once)."""
    lines = ["Validation set (held out, never trained; each image once per evaluation)"]
    for dataset in validation.datasets:
        if len(validation.datasets) > 1:
            lines.append(f"  {dataset.label} (batch size {dataset.batch_size})")
        lines += [_held_out_line(plan, dataset, validation.subsets[i]) for i in dataset.subset_indices]
        lines += _bucket_lines(dataset)
    lines.append(f"  {_plural(validation.batches_per_epoch, 'batch')} per evaluation")
    return lines


def format_plan(plan: DatasetPlan) -> str:
    """The multi-line plan: per dataset its subsets, samples and buckets; then batches, steps and epochs."""
    if len(plan.datasets) == 1:
        label = plan.datasets[0].label
        lines = [f"Dataset {label}".rstrip(), *_dataset_lines(plan, plan.datasets[0])]
    else:
        lines = []
        for number, dataset in enumerate(plan.datasets, start=1):
            lines.append(
                f"Dataset {number} of {len(plan.datasets)}: {dataset.label} "
                f"(resolution {dataset.resolution[0]}x{dataset.resolution[1]}, batch size {dataset.batch_size})"
            )
            lines += _dataset_lines(plan, dataset)
    lines.append("Steps")
    lines += _step_lines(plan)
    if plan.validation is not None:
        lines += _validation_lines(plan, plan.validation)
    return "\n".join(lines)
