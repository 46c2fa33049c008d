"""`loracraft plan`: what a run will do, before it spends hours: the dataset arithmetic, the files it will
write, its peak memory and, when this device has run such a step before, how long it will take; and the
learning-rate curve of every parameter group as `--output_dir/NAME-lr.png`.

It takes exactly `loracraft train`'s flags and starts the run the same way (`trainer.start_run`: the
checks, the dataset scan and plan, the model load, the family's settings) and builds its model with the
LoRA, so a run that would fail stops here with the same one line: it doubles as a dry run. It trains
nothing, fills no cache, and writes nothing but the PNG; an output folder it had to create for that is
removed again when the plan fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loracraft.config.load import updated_config
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan
from loracraft.sampling.prompts import check_sample_prompts
from loracraft.training.accelerator import main_process_echo
from loracraft.training.lr_curve import LRCurve, describe_lr_curve, lr_curve, write_lr_curve
from loracraft.training.memory_estimate import MemoryEstimate, estimate_memory, format_memory
from loracraft.training.run_files import PlannedFile, format_run_files, planned_files
from loracraft.training.throughput_record import (
    Throughput,
    ThroughputKey,
    describe_throughput,
    device_name,
    known_throughput,
)
from loracraft.training.trainer import RunStart, build_model, network_param_groups, start_run


@dataclass(frozen=True)
class RunPlan:
    """What `plan_run` found and printed."""

    plan: DatasetPlan
    files: list[PlannedFile]
    curve: LRCurve
    curve_file: Path
    memory: MemoryEstimate
    throughput: Throughput | None


def lr_curve_path(config: TrainConfig) -> Path:
    """Where the plan draws the learning-rate curve: beside the run's files, as NAME-lr.png."""
    return Path(config.output_dir) / f"{config.output_stem}-lr.png"


def plan_run(config: TrainConfig, echo: Callable[[str], None] = print) -> RunPlan:
    """Start the run as `loracraft train` would, stop before training, and print the plan."""
    created = missing_folders(Path(config.output_dir)) if config.output_dir else []
    try:
        start = start_run(config, echo, sweep_stale_files=False)
        return _plan_started(start, echo)
    except BaseException:
        remove_if_empty(created)
        raise


def _plan_started(start: RunStart, echo: Callable[[str], None]) -> RunPlan:
    config, plan, device = start.config, start.plan, start.accelerator.device
    echo = main_process_echo(start.accelerator, echo)  # under `accelerate launch`, printed once
    steps = plan.steps
    prompts = check_sample_prompts(config)
    resumed_at = start.resume.record.position.step if start.resume is not None else 0
    files = planned_files(config, steps, prompts.prompts if prompts else (), resumed_at)
    echo("\n".join(format_run_files(files, Path(config.output_dir))))

    # The model as the run builds it, without gradient checkpointing so both settings can be measured.
    model = build_model(updated_config(config, {"gradient_checkpointing": False}), start.bundle, echo)
    groups = network_param_groups(model.network, config)
    curve = lr_curve(config, groups, steps.max_train_steps, plan.num_processes)

    memory = estimate_memory(config, plan, start.bundle, model, device)
    echo("\n".join(format_memory(memory, f"{device} ({device_name(device)})", config.optimizer_name)))

    throughput = known_throughput(ThroughputKey.for_run(config, plan, start.bundle.family, device))
    echo(f"Time: {describe_throughput(throughput, steps.max_train_steps - resumed_at)}")

    schedule = config.lr_scheduler_type or config.lr_scheduler
    curve_file = lr_curve_path(config)
    if start.accelerator.is_main_process:
        title = f"{config.output_stem}: learning rate per parameter group ({schedule}, {steps.max_train_steps} steps)"
        write_lr_curve(curve, curve_file, title)
    echo("\n".join([f"Learning rate (drawn in {curve_file})", *describe_lr_curve(curve)]))
    return RunPlan(plan, files, curve, curve_file, memory, throughput)


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed plan created, deepest first, as long as they are empty."""
    for folder in folders:
        if not folder.exists():
            continue
        try:
            folder.rmdir()
        except OSError:
            return
