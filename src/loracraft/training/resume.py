"""--resume: find the state, and refuse one the run cannot continue exactly.

A resumed run must compute what the interrupted one would have: the settings that shape it (dataset,
network, optimizer, schedule, noise, precision...) must be the ones saved, and so must the dataset and
the number of processes. Settings marked `resume_safe` in the schema (where files go, logging, data
loader workers) may change, and the run says which did.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loracraft.config.fields import flag_infos
from loracraft.config.load import build_config, read_config_file
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan
from loracraft.errors import UserError
from loracraft.training.run_state import CONFIG, RunRecord, read_run_record
from loracraft.training.save_points import state_name

LATEST = "latest"


@dataclass(frozen=True)
class ResumePoint:
    folder: Path
    record: RunRecord


def resume_point(config: TrainConfig) -> ResumePoint | None:
    """The checked state --resume names (a folder, or `latest`), or None without --resume."""
    if not config.resume:
        return None
    if config.resume == LATEST:
        if not config.output_dir:
            raise UserError("--resume latest looks in --output_dir: give --output_dir (and --output_name)")
        return latest_state(Path(config.output_dir), config.output_stem)
    folder = Path(config.resume)
    return ResumePoint(folder, read_run_record(folder))


def latest_state(output_dir: Path, stem: str) -> ResumePoint:
    """The complete state of `stem` in `output_dir` with the most optimizer steps; incomplete or damaged
    ones are passed over (and named when none is left)."""
    pattern = re.compile(rf"{re.escape(stem)}(-\d{{6}}|-step\d{{8}})?-state")
    candidates = sorted(
        path for path in output_dir.glob(state_name(f"{stem}*")) if pattern.fullmatch(path.name)
    )
    found, passed_over = [], []
    for folder in candidates:
        try:
            found.append(ResumePoint(folder, read_run_record(folder, "--resume latest:")))
        except UserError as error:
            passed_over.append(str(error))
    if not found:
        where = f"no complete state of {stem!r} in {output_dir}"
        reasons = f" ({'; '.join(passed_over)})" if passed_over else ""
        raise UserError(
            f"--resume latest: {where}{reasons}; states are saved with --save_state or --save_state_on_train_end"
        )
    return max(found, key=lambda point: point.record.position.step)


def check_resumable(
    point: ResumePoint, config: TrainConfig, plan: DatasetPlan, echo: Callable[[str], None]
) -> None:
    """Refuse, in one line, a state this run cannot continue exactly; say which harmless settings changed."""
    saved = build_config(read_config_file(point.folder / CONFIG), {}, f"{point.folder / CONFIG}: ")
    refused, allowed = changed_settings(saved, config)
    if refused:
        raise UserError(
            f"--resume {point.folder}: these settings differ from the saved run's: {', '.join(refused)}; a resumed "
            "run continues the saved one exactly, so use its settings (or start a new run from a LoRA file "
            "with --network_weights)"
        )
    if allowed:
        echo(f"note: resuming with changed output settings: {', '.join(allowed)}")
    record = point.record
    if record.num_processes != plan.num_processes:
        raise UserError(
            f"--resume {point.folder}: saved by a run of {record.num_processes} process(es), this one has "
            f"{plan.num_processes}; each process's share of the data would differ, so resume with "
            f"{record.num_processes}"
        )
    if record.dataset_fingerprint != dataset_fingerprint(plan):
        raise UserError(
            f"--resume {point.folder}: the dataset changed since the state was saved (images, captions, "
            "repeats or buckets); resume with the dataset as it was, or start a new run with --network_weights"
        )


def changed_settings(saved: TrainConfig, current: TrainConfig) -> tuple[list[str], list[str]]:
    """(settings that would change the run, harmless ones), each as `name (old -> new)`. Secrets are
    never saved with a state, so they are not compared (nor shown)."""
    refused, allowed = [], []
    for name, info in flag_infos(TrainConfig).items():
        old, new = getattr(saved, name), getattr(current, name)
        if name == "resume" or info.secret or _same(old, new):
            continue
        (allowed if info.resume_safe else refused).append(f"{name} ({_shown(old)} -> {_shown(new)})")
    return refused, allowed


def _same(old: Any, new: Any) -> bool:
    # Paths read back from TOML are strings; a folder given as ./img or img is the same folder.
    if isinstance(old, str | Path) and isinstance(new, str | Path):
        return Path(old) == Path(new)
    return old == new


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


def dataset_fingerprint(plan: DatasetPlan) -> str:
    """A digest of what the run trains on, in order: each image (path within its folder, size, caption,
    repeats, bucket), the batch sizes and the number of batches. File contents are not read: hashing a
    dataset of thousands of images at every start would cost more than it saves."""
    digest = hashlib.sha256()
    for image in plan.images:
        record = image.record
        subset = plan.subsets[image.subset_index]
        relative = (
            record.path.relative_to(subset.dir) if record.path.is_relative_to(subset.dir) else record.path
        )
        line = (
            f"{image.subset_index}\t{relative.as_posix()}\t{record.width}x{record.height}\t{record.caption}"
        )
        digest.update(f"{line}\t{image.repeats}\t{image.choice}\n".encode())
    sizes = ",".join(str(dataset.batch_size) for dataset in plan.datasets)
    digest.update(f"batches {plan.batches_per_epoch} sizes {sizes}".encode())
    return digest.hexdigest()
