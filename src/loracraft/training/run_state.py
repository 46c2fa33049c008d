"""What a resumable state holds, how it is written and read back.

A state folder (`save_points.state_name`) holds:
- `adapter.safetensors`: the LoRA's weights as they train (float32, and for a schedule-free optimizer
  its training-mode weights, not the evaluation weights the LoRA files get);
- `optimizer.pt`, `lr_scheduler.pt` and, under fp16, `grad_scaler.pt`: their `state_dict`s, read back
  with `torch.load(weights_only=True)`, which runs no code from the file;
- `rng.json`: every process's generators (`rng_state.py`);
- `progress.json`: where the run stands (epoch, batches of it done, optimizer steps), the seed, when it
  started, the number of processes and the dataset's fingerprint;
- `config.toml`: the run's effective config, the same file as `NAME.toml`;
- `manifest.json`: every file's size and SHA-256 (`state_folder.py`).

The data order needs no generator of its own: each epoch's order is drawn from the seed and the epoch
(`data/plan.py` epoch_batches) and each sample's augmentation from the seed, epoch and position, so the
position restores both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from loracraft import __version__
from loracraft.errors import UserError
from loracraft.networks.lora_network import LoRANetwork
from loracraft.training.loop import Position, TrainingParts
from loracraft.training.rng_state import capture_rng, restore_rng
from loracraft.training.state_folder import verify_state_folder, write_state_folder

ADAPTER = "adapter.safetensors"
OPTIMIZER = "optimizer.pt"
LR_SCHEDULER = "lr_scheduler.pt"
GRAD_SCALER = "grad_scaler.pt"
RNG = "rng.json"
PROGRESS = "progress.json"
CONFIG = "config.toml"


@dataclass(frozen=True)
class RunRecord:
    """What a state says about its run besides the weights and the optimizer."""

    position: Position
    seed: int
    started_at: float
    num_processes: int
    dataset_fingerprint: str
    family: str
    loracraft_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        values = json.loads(text)
        return cls(**{**values, "position": Position(**values["position"])})


def save_training_state(
    folder: Path,
    accelerator: Accelerator,
    network: LoRANetwork,
    parts: TrainingParts,
    record: RunRecord,
    config_toml: str,
) -> None:
    """Write the state of the run at `record.position` to `folder`. Every process calls it (each gives
    its generators); the main process writes."""
    rng_states = gather_object([capture_rng()])
    if not accelerator.is_main_process:
        return
    adapter = {key: value.detach().to("cpu").contiguous() for key, value in network.state_dict().items()}
    writers = {
        ADAPTER: lambda path: safetensors.torch.save_file(adapter, str(path)),
        OPTIMIZER: lambda path: torch.save(parts.optimizer.state_dict(), path),
        LR_SCHEDULER: lambda path: torch.save(parts.lr_scheduler.state_dict(), path),
        RNG: lambda path: path.write_text(json.dumps(rng_states), encoding="utf-8"),
        PROGRESS: lambda path: path.write_text(record.to_json(), encoding="utf-8"),
        CONFIG: lambda path: path.write_text(config_toml, encoding="utf-8"),
    }
    if accelerator.scaler is not None:
        writers[GRAD_SCALER] = lambda path: torch.save(accelerator.scaler.state_dict(), path)
    write_state_folder(folder, writers)


def read_run_record(folder: Path, flag: str = "--resume") -> RunRecord:
    """The checked state's progress record: a UserError when the folder is incomplete or damaged."""
    verify_state_folder(folder, flag)
    try:
        return RunRecord.from_json((folder / PROGRESS).read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(
            f"{flag} {folder}: {PROGRESS} is damaged ({error}); resume from another state"
        ) from None


def load_training_state(
    folder: Path, accelerator: Accelerator, network: LoRANetwork, parts: TrainingParts, flag: str = "--resume"
) -> None:
    """Put the saved weights, optimizer, schedule and loss scaler back (the generators come back last,
    with `restore_generators`, right before the first batch)."""
    adapter = safetensors.torch.load_file(str(folder / ADAPTER))
    _check_adapter_shape(adapter, network, folder, flag)
    network.load_state_dict({key: value.to(network_device(network)) for key, value in adapter.items()})
    parts.optimizer.load_state_dict(_load(folder / OPTIMIZER))
    parts.lr_scheduler.load_state_dict(_load(folder / LR_SCHEDULER))
    if accelerator.scaler is not None and (folder / GRAD_SCALER).is_file():
        accelerator.scaler.load_state_dict(_load(folder / GRAD_SCALER))


def restore_generators(folder: Path, accelerator: Accelerator) -> None:
    states = json.loads((folder / RNG).read_text(encoding="utf-8"))
    restore_rng(states[accelerator.process_index])


def network_device(network: LoRANetwork) -> torch.device:
    return next(network.parameters()).device


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_adapter_shape(
    adapter: dict[str, torch.Tensor], network: LoRANetwork, folder: Path, flag: str
) -> None:
    expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    saved = {key: tuple(value.shape) for key, value in adapter.items()}
    if saved == expected:
        return
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or extra:
        example = (missing or extra)[0]
        raise UserError(
            f"{flag} {folder}: the state is of another network ({len(missing)} of this run's weights missing, "
            f"{len(extra)} extra, e.g. {example}); resume with the settings it was saved with"
        )
    key = next(key for key in expected if saved[key] != expected[key])
    raise UserError(
        f"{flag} {folder}: the state is of another network shape ({key} is {list(saved[key])} there, "
        f"{list(expected[key])} here: check --network_dim); resume with the settings it was saved with"
    )
