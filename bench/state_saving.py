"""What saving costs: the time and size of a resumable state (`run_state.save_training_state`) and of the
LoRA file saved beside it, for the shipped tiny model's LoRA and for an SD1.5-shaped rank-32 LoRA; the
share of the SHA-256 manifest in a state's time; and what `--save_every_n_steps 100 --save_state` adds to
the tiny model's step.

    python bench/state_saving.py [--rounds 3] [--steps 20] [--warmup 3] [--folder DIR]
    python bench/state_saving.py --rounds 1 --steps 2 --warmup 1 --tiny_only     # smoke run

Both states are written as a run writes them, by `save_training_state` (files staged in a hidden folder,
each fsync'd and hashed, the manifest last, a rename), into `--folder` (default: a temporary folder; give
one on the disk your outputs go to). Each round writes a new state, as step saves do.

- tiny: the demo's run on `loracraft.models.tiny.shipped` (rank 8 on U-Net and text encoder, batch 4 at
  64 px, cached latents, AdamW), set up by the trainer; its step time is measured over `--steps` steps
  after `--warmup`, and the state is the one those steps left (AdamW's moments filled).
- sd15: kohya's default SD1 targets at rank 32 (alpha 16) on SD1.5's U-Net and text encoder, built on the
  meta device from the shipped configs: the base weights are never allocated, only the LoRA's are real
  (random). AdamW takes one step on random gradients so that its two moment buffers exist.

The LoRA file is written with `lora_file.save_lora_file` (fp32, the run's default `--save_precision`,
with its two hashes, atomically) and empty metadata: the ss_* metadata is a few kB. The sha256 column
re-hashes the state's files after the save (from the page cache, as the save itself hashes what it just
wrote): it is part of the state time, not added to it.

The overhead of `--save_every_n_steps 100 --save_state` is an estimate: (state time + LoRA file time) /
100 spread over the steps, against the tiny model's measured step time; for the SD1.5-shaped LoRA it is
given in ms a step, to set against the step time of the machine that trains it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from loracraft.config.load import effective_config_toml
from loracraft.config.schema import TrainConfig
from loracraft.models.config_inference import base_config, model_kwargs
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from loracraft.training.accelerator import make_accelerator
from loracraft.training.loop import Position, TrainingParts
from loracraft.training.optimizer import build_optimizer
from loracraft.training.run_state import RunRecord, save_training_state
from loracraft.training.schedule import build_lr_scheduler
from loracraft.training.state_folder import file_digest, remove_state_folder
from step_timing import timed_demo_run

SAVE_INTERVAL = 100


@dataclass
class Row:
    model: str
    lora_params: int
    state_files: dict[str, int]
    """bytes per file"""
    state_seconds: list[float]
    sha256_seconds: list[float]
    lora_bytes: int
    lora_seconds: list[float]
    step_seconds: float | None = None

    @property
    def state_bytes(self) -> int:
        return sum(self.state_files.values())


def measure_saves(
    name: str,
    folder: Path,
    accelerator,
    network: LoRANetwork,
    parts: TrainingParts,
    config: TrainConfig,
    rounds: int,
) -> Row:
    record = RunRecord(
        position=Position(1, 1, 1),
        seed=0,
        started_at=0.0,
        num_processes=1,
        dataset_fingerprint="0" * 64,
        family="sd1",
    )
    config_toml = effective_config_toml(config)
    row = Row(name, sum(p.numel() for p in network.parameters()), {}, [], [], 0, [])
    for round_ in range(rounds):
        state = folder / f"{name}-step{round_:08d}-state"
        started = time.perf_counter()
        save_training_state(state, accelerator, network, parts, record, config_toml)
        row.state_seconds.append(time.perf_counter() - started)
        row.state_files = {path.name: path.stat().st_size for path in sorted(state.iterdir())}
        started = time.perf_counter()
        for path in state.iterdir():
            file_digest(path)
        row.sha256_seconds.append(time.perf_counter() - started)
        lora = folder / f"{name}-step{round_:08d}.safetensors"
        started = time.perf_counter()
        save_lora_file(network.kohya_state_dict(), lora, {})
        row.lora_seconds.append(time.perf_counter() - started)
        row.lora_bytes = lora.stat().st_size
        remove_state_folder(state)
        lora.unlink()
    return row


def tiny_row(root: Path, folder: Path, args: argparse.Namespace) -> Row:
    """The demo's run on the shipped tiny model: its step time, then its state."""
    run = timed_demo_run(root, args.steps, args.warmup)
    network = run.start.accelerator.unwrap_model(run.setup.parts.model).network
    row = measure_saves(
        "tiny", folder, run.start.accelerator, network, run.setup.parts, run.config, args.rounds
    )
    row.step_seconds = run.step_seconds
    return row


def sd15_row(folder: Path, args: argparse.Namespace) -> Row:
    config = TrainConfig(
        pretrained_model_name_or_path="random-sd1",
        output_dir=str(folder),
        network_dim=32,
        network_alpha=16,
        optimizer_type="AdamW",
        learning_rate=1e-4,
        mixed_precision="no",
        max_train_steps=10_000,
        seed=0,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**model_kwargs(base_config("sd1", "unet")))
        text_encoder = CLIPTextModel(CLIPTextConfig(**model_kwargs(base_config("sd1", "text_encoder"))))
    network = build_lora_network(
        unet, [text_encoder], "sd1", rank=config.network_rank, alpha=config.network_alpha
    )
    optimizer = build_optimizer(
        config, network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lrs)
    )
    lr_scheduler = build_lr_scheduler(config, optimizer, config.max_train_steps, 1)
    accelerator = make_accelerator(config.mixed_precision, 1)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    for parameter in network.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizer.step()
    lr_scheduler.step()
    # A state holds the network, the optimizer and the schedule; the model and the loader play no part.
    parts = TrainingParts(model=network, loader=None, optimizer=optimizer, lr_scheduler=lr_scheduler)
    return measure_saves("sd15-r32", folder, accelerator, network, parts, config, args.rounds)


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f}"


def report(rows: list[Row]) -> None:
    print(
        "| LoRA | parameters | state MB (adapter / optimizer / rest) | state s (median; rounds) "
        "| of it sha256 s | LoRA file MB | LoRA file s |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        files = row.state_files
        rest = row.state_bytes - files["adapter.safetensors"] - files["optimizer.pt"]
        rounds = ", ".join(f"{seconds:.3f}" for seconds in row.state_seconds)
        print(
            f"| {row.model} | {row.lora_params / 1e6:.2f} M | {megabytes(row.state_bytes)} "
            f"({megabytes(files['adapter.safetensors'])} / {megabytes(files['optimizer.pt'])} / "
            f"{rest / 1e3:.1f} kB) | {statistics.median(row.state_seconds):.3f} ({rounds}) "
            f"| {statistics.median(row.sha256_seconds):.3f} | {megabytes(row.lora_bytes)} "
            f"| {statistics.median(row.lora_seconds):.3f} |"
        )
    tiny = next((row for row in rows if row.step_seconds is not None), None)
    if tiny is None:
        return
    print(f"\ntiny model step: {tiny.step_seconds * 1000:.1f} ms")
    for row in rows:
        save = statistics.median(row.state_seconds) + statistics.median(row.lora_seconds)
        per_step = save / SAVE_INTERVAL
        share = f" = {per_step / tiny.step_seconds:.1%} of its step" if row is tiny else ""
        print(
            f"--save_every_n_steps {SAVE_INTERVAL} --save_state, {row.model}: {save:.3f} s a save (state + LoRA "
            f"file) = {per_step * 1000:.2f} ms a step{share}"
        )


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="states written per model")
    parser.add_argument("--steps", type=int, default=20, help="tiny model steps timed")
    parser.add_argument("--warmup", type=int, default=3, help="tiny model steps before the timed ones")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--folder", type=Path, help="where the states are written (default: a temporary folder)"
    )
    parser.add_argument("--tiny_only", action="store_true", help="leave out the SD1.5-shaped LoRA")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "states"
        folder.mkdir(parents=True, exist_ok=True)
        rows = [tiny_row(Path(tmp), folder, args)]
        if not args.tiny_only:
            rows.append(sd15_row(folder, args))
    report(rows)
    return rows


if __name__ == "__main__":
    main()
