"""The dataset plan as text, printed before training so users can check the arithmetic the guides teach:
images x repeats = samples, + reg samples, / batch size = batches, / accumulation = steps, x epochs."""

import math

from loracraft.data.plan import DatasetPlan
from loracraft.data.records import Subset


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    return f"{count} batches" if word == "batch" else f"{count} {word}s"


def _subset_line(plan: DatasetPlan, subset: Subset) -> str:
    images = [image for image in plan.images if image.record.path.parent == subset.dir]
    samples = sum(image.repeats for image in images)
    head = (
        f"  {'reg  ' if subset.is_reg else 'train'}  {subset.name}: {_plural(len(subset.records), 'image')}"
    )
    if not subset.is_reg:
        return f"{head} x {_plural(subset.num_repeats, 'repeat')} = {_plural(samples, 'sample')}"
    unused = len(subset.records) - len(images)
    tail = f" ({_plural(unused, 'image')} unused)" if unused else ""
    return f"{head} x {_plural(subset.num_repeats, 'repeat')}, balanced to {_plural(samples, 'sample')}{tail}"


def _bucket_header(plan: DatasetPlan) -> str:
    size = f"{plan.resolution[0]}x{plan.resolution[1]}"
    if not plan.enable_bucket:
        mode = "bucketing off: every image resized and center-cropped to it"
    elif plan.bucket_no_upscale:
        mode = "bucket_no_upscale: each image's own size, shrunk to the area, floored to the step"
    else:
        mode = "aspect-ratio buckets"
    return f"Buckets (resolution {size}, {mode}; mean aspect-ratio error {plan.mean_img_ar_error:.4f})"


def _step_lines(plan: DatasetPlan) -> list[str]:
    samples = plan.num_train_samples + plan.num_reg_samples
    steps = plan.steps
    lines = [
        f"  {_plural(samples, 'sample')} in batches of {plan.batch_size} = "
        f"{_plural(plan.batches_per_epoch, 'batch')} per epoch"
        + (" (each bucket rounds up on its own)" if len(plan.buckets) > 1 else "")
    ]
    divisor = f"grad accumulation {plan.gradient_accumulation_steps}"
    if plan.num_processes > 1:
        divisor = f"({plan.num_processes} processes x {divisor})"
    lines.append(
        f"  {_plural(plan.batches_per_epoch, 'batch')} / {divisor} = {_plural(steps.steps_per_epoch, 'optimizer step')} per epoch"
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


def format_plan(plan: DatasetPlan) -> str:
    """The multi-line plan: subsets, samples, buckets with counts, batches, steps and epochs."""
    lines = ["Dataset"]
    lines += [_subset_line(plan, subset) for subset in plan.subsets]
    reg = f" + {plan.num_reg_samples} reg" if any(s.is_reg for s in plan.subsets) else ""
    lines.append(
        f"  samples per epoch: {plan.num_train_samples} train{reg} = {plan.num_train_samples + plan.num_reg_samples}"
    )
    lines.append(_bucket_header(plan))
    for bucket, samples in zip(plan.buckets, plan.bucket_samples, strict=True):
        batches = math.ceil(len(samples) / plan.batch_size)
        lines.append(
            f"  {bucket[0]}x{bucket[1]}: {_plural(len(samples), 'sample')} -> {_plural(batches, 'batch')}"
        )
    lines.append("Steps")
    lines += _step_lines(plan)
    return "\n".join(lines)
