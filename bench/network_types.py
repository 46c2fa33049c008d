"""CPU benchmark: each network type's training step, memory and file against plain LoRA at the same rank.

Every type trains the demo's run on the shipped tiny SD1 model (rank 8, alpha 8 on the U-Net and the text
encoder, batch 4 at 64 px, cached latents, AdamW, one torch thread as the tests and the demo run it), set
up by the trainer as `step_timing.py` does, with only --network_module / --network_args changed. Each
LyCORIS type trains its own default targets (LyCORIS' "full" preset: also conv_in, conv_out and the time
embedding), kohya's LoRA and LoCon theirs. Each (type, round) runs in a fresh process, the types
alternating inside each round, so a busy spell of a shared machine hits them alike and no run inherits
another's freed memory. Per run:

- step time: the median of the per-step times after the warm-up;
- peak memory: the process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs once the
  base model is loaded) minus its resident set at that moment, so it counts what the type adds: the
  network, its gradients and optimizer state, the activations of a step (and the latent cache, the same
  for every type);
- the file: the trained network saved by loracraft's LoRA writer in fp16 (the kohya_ss GUI's default save
  precision; without the run's metadata, the same few kB for every type).

The table gives the median over rounds and each figure's ratio to plain LoRA's.

    OMP_NUM_THREADS=1 python bench/network_types.py [--steps 30] [--warmup 5] [--rounds 3] [names ...]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from loracraft.config.load import updated_config
from loracraft.networks.lora_file import save_lora_file
from loracraft.tools.demo import DemoConcept, demo_config, make_demo_dataset
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.progress import TrainingLog
from loracraft.training.step import diffusion_loss
from loracraft.training.trainer import setup_training, start_run

LYCORIS = "lycoris.kohya"
# The same rank everywhere: --network_dim 8 and, for the types with convolution adapters, conv_dim 8
# (LyCORIS' default conv_dim is --network_dim; kohya's LoCon needs it given). IA3, Diag-OFT and full have
# no rank: IA3 trains one scale per channel, Diag-OFT rotates blocks of --network_dim channels, full trains
# the weights themselves.
TYPES: dict[str, dict] = {
    "LoRA": {},
    "Kohya LoCon": {"network_args": ["conv_dim=8", "conv_alpha=8"]},
    "LyCORIS LoCon": {"network_module": LYCORIS, "network_args": ["algo=locon"]},
    "LoHa": {"network_module": LYCORIS, "network_args": ["algo=loha"]},
    "LoKr": {"network_module": LYCORIS, "network_args": ["algo=lokr", "factor=4"]},
    "IA3": {"network_module": LYCORIS, "network_args": ["algo=ia3"]},
    "DyLoRA": {"network_module": LYCORIS, "network_args": ["algo=dylora"]},
    "GLoRA": {"network_module": LYCORIS, "network_args": ["algo=glora"]},
    "Diag-OFT": {"network_module": LYCORIS, "network_args": ["algo=diag-oft"]},
    "full": {"network_module": LYCORIS, "network_args": ["algo=full"]},
    "DoRA": {"network_module": LYCORIS, "network_args": ["algo=locon", "dora_wd=True"]},
}


class StepClock(TrainingLog):
    """The real progress log, also noting when each optimizer step finished (whatever else the loop
    reports with a step, so a new argument of the loop's does not break the benchmark)."""

    def __init__(self, total_steps: int):
        super().__init__(total_steps, show_bar=False)
        self.times: list[float] = []

    def step(self, *args, **kwargs) -> bool:
        flushed = super().step(*args, **kwargs)
        self.times.append(time.perf_counter())
        return flushed


def resident_kib(field: str) -> int:
    """VmRSS or VmHWM of this process, in KiB."""
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")
    return int(found[1])


def reset_peak_resident() -> None:
    """Start VmHWM again from the current resident set (Linux 4.0 or newer)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(name: str, steps: int, warmup: int) -> dict:
    """Train type `name` for `warmup + steps` steps in this process; its figures."""
    quiet = lambda _: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir = make_demo_dataset(root / "dataset", DemoConcept(), seed=0)
        config = updated_config(
            demo_config(data_dir, root / "out", seed=0, epochs=1),
            {
                "logging_dir": None,
                "save_every_n_epochs": None,
                "max_train_epochs": None,
                "max_train_steps": warmup + steps,
                **TYPES[name],
            },
        )
        start = start_run(config, quiet)
        reset_peak_resident()
        resident_before = resident_kib("VmRSS")
        setup = setup_training(config, start.plan, start.bundle, start.accelerator, start.seed, quiet)
        log = StepClock(start.plan.steps.max_train_steps)
        loss_of = partial(diffusion_loss, setup.step_models, device=start.accelerator.device)
        run_epochs(start.accelerator, setup.parts, loss_of, start.plan.steps, 1.0, log, LoopHooks())
        peak_increase = resident_kib("VmHWM") - resident_before
        network = start.accelerator.unwrap_model(setup.parts.model).network
        lora_file = root / "lora.safetensors"
        save_lora_file(network.kohya_state_dict(), lora_file, None, torch.float16)
        measured = log.times[warmup - 1 :]
        return {
            "step_s": statistics.median(b - a for a, b in zip(measured, measured[1:], strict=False)),
            "peak_kib": peak_increase,
            "file_bytes": lora_file.stat().st_size,
            "parameters": sum(p.numel() for p in network.parameters() if p.requires_grad),
        }


def measure_in_child(name: str, steps: int, warmup: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", name, "--steps", str(steps), "--warmup", str(warmup)]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def network_flags(name: str) -> str:
    settings = TYPES[name]
    return " ".join([settings.get("network_module", "networks.lora"), *settings.get("network_args", [])])


def table(names: list[str], runs: dict[str, list[dict]]) -> list[str]:
    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    lines = [
        "| type | network args | trained parameters | ms per step (median) | x LoRA | peak memory increase "
        "(MiB) | x LoRA | file, fp16 (KiB) | x LoRA | rounds (ms per step) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {key: median("LoRA", key) for key in ("step_s", "peak_kib", "file_bytes")}
    for name in names:
        args = network_flags(name)
        errors = [run["error"] for run in runs[name] if "error" in run]
        if errors:
            lines.append(f"| {name} | `{args}` | not run: {errors[0]} | | | | | | | |")
            continue
        step, peak, size = (median(name, key) for key in ("step_s", "peak_kib", "file_bytes"))
        rounds = ", ".join(f"{run['step_s'] * 1000:.0f}" for run in runs[name])
        lines.append(
            f"| {name} | `{args}` | {runs[name][0]['parameters']:,} | {step * 1000:.1f} | "
            f"{step / base['step_s']:.2f} | {peak / 1024:.1f} | {peak / base['peak_kib']:.2f} | "
            f"{size / 1024:.0f} | {size / base['file_bytes']:.2f} | {rounds} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tests and demo use 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=f"types to run (default: all): {', '.join(TYPES)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.warmup)))
        return
    unknown = sorted(set(args.names) - set(TYPES))
    if unknown:
        parser.error(f"unknown type {unknown[0]}; the types: {', '.join(TYPES)}")
    names = ["LoRA", *[name for name in (args.names or TYPES) if name != "LoRA"]]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(measure_in_child(name, args.steps, args.warmup, args.threads))
    print("\n".join(table(names, runs)))


if __name__ == "__main__":
    main()
