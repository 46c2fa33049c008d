"""Measured training speed, remembered per machine and setting, so `loracraft plan` can say how long a run
will take before it starts.

A finished run appends its seconds per optimizer step (`record_throughput`) under a key of what sets the
speed: the device, the model family, the largest bucket, the batch size, the precision, gradient
checkpointing, what is cached, what trains and the rank. `known_throughput` finds the newest record of
a key. The records live in one JSON file in the user's cache folder (`LORACRAFT_CACHE`, else
~/.cache/loracraft), written atomically; a file that cannot be read counts as no record, so a damaged
cache never stops a run or a plan.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from loracraft.atomic import write_text_atomic
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan

RECORDS_FILE = "throughput.json"
FORMAT_VERSION = 1


def cache_folder() -> Path:
    """The user's loracraft cache folder: $LORACRAFT_CACHE, else ~/.cache/loracraft."""
    configured = os.environ.get("LORACRAFT_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "loracraft"


def device_name(device: torch.device) -> str:
    """The name that identifies this machine's device: the GPU model, else the CPU model and its cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"{_cpu_model()}, {os.cpu_count()} cores, {threads} thread{'s' if threads != 1 else ''}"
    return device.type


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


@dataclass(frozen=True)
class ThroughputKey:
    """What sets a run's seconds per step; two runs with equal keys run at about the same speed."""

    device: str
    family: str
    bucket: str
    """The largest bucket by area, "WxH": the slowest batches."""
    batch_size: int
    precision: str
    """--mixed_precision, with "+fp8" when the base weights are stored in float8."""
    gradient_checkpointing: bool
    latents_cached: bool
    text_encoder: str
    """"trained", "frozen" (encoded every step) or "cached"."""
    network_rank: int
    num_processes: int
    gradient_accumulation_steps: int

    @classmethod
    def for_run(
        cls, config: TrainConfig, plan: DatasetPlan, family: str, device: torch.device
    ) -> ThroughputKey:
        width, height = largest_bucket(plan)
        fp8 = "+fp8" if config.fp8_base or config.fp8_base_unet else ""
        if config.cache_text_encoder_outputs:
            text_encoder = "cached"
        else:
            text_encoder = "trained" if config.train_text_encoder else "frozen"
        return cls(
            device=device_name(device),
            family=family,
            bucket=f"{width}x{height}",
            batch_size=largest_bucket_batch_size(plan),
            precision=config.mixed_precision + fp8,
            gradient_checkpointing=config.gradient_checkpointing,
            latents_cached=config.cache_latents,
            text_encoder=text_encoder,
            network_rank=config.network_rank,
            num_processes=plan.num_processes,
            gradient_accumulation_steps=plan.gradient_accumulation_steps,
        )


def largest_bucket(plan: DatasetPlan) -> tuple[int, int]:
    """The bucket of the most pixels (the first such in plan order): the run's costliest batches."""
    return max(plan.buckets, key=lambda bucket: bucket[0] * bucket[1])


def largest_bucket_batch_size(plan: DatasetPlan) -> int:
    """The batch size of the dataset that holds the largest bucket (datasets may differ)."""
    bucket = largest_bucket(plan)
    return max(dataset.batch_size for dataset in plan.datasets if bucket in dataset.buckets)


@dataclass(frozen=True)
class Throughput:
    """One measurement: seconds per optimizer step, when (Unix time) and over how many steps."""

    seconds_per_step: float
    measured_at: float
    steps: int

    @property
    def date(self) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(self.measured_at))


def _read_records(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        return []
    records = data.get("records")
    return [record for record in records if isinstance(record, dict)] if isinstance(records, list) else []


def known_throughput(key: ThroughputKey, folder: Path | None = None) -> Throughput | None:
    """The newest measurement recorded for `key`, or None."""
    wanted = asdict(key)
    for record in reversed(_read_records((folder or cache_folder()) / RECORDS_FILE)):
        if record.get("key") == wanted:
            try:
                return Throughput(
                    float(record["seconds_per_step"]), float(record["measured_at"]), int(record["steps"])
                )
            except (KeyError, TypeError, ValueError):
                return None
    return None


def record_throughput(
    key: ThroughputKey,
    seconds_per_step: float,
    steps: int,
    *,
    measured_at: float | None = None,
    folder: Path | None = None,
) -> Path:
    """Remember a finished run's seconds per step for `key` (replacing an older record of the same key);
    returns the records file. Raises OSError when the cache folder cannot be written: the caller decides
    whether that matters (a finished run should only warn)."""
    path = (folder or cache_folder()) / RECORDS_FILE
    wanted = asdict(key)
    records = [record for record in _read_records(path) if record.get("key") != wanted]
    records.append(
        {
            "key": wanted,
            "seconds_per_step": seconds_per_step,
            "measured_at": time.time() if measured_at is None else measured_at,
            "steps": steps,
        }
    )
    write_text_atomic(path, json.dumps({"version": FORMAT_VERSION, "records": records}, indent=1))
    return path


def describe_throughput(found: Throughput | None, total_steps: int) -> str:
    """The plan's line about the run's duration."""
    if found is None:
        return "no measured throughput for this device yet: the first run records one"
    return (
        f"about {found.seconds_per_step:.3g} s/step, {duration(found.seconds_per_step * total_steps)} for "
        f"the run's {total_steps} steps (measured on this device on {found.date})"
    )


def duration(seconds: float) -> str:
    """'1 h 05 min', '12 min 30 s' or '42 s'."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
