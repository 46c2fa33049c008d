"""CPU benchmark: the step time of each non-default training option, relative to the default step.

Every variant trains the same rank-8 LoRA on the same random tiny SD1-topology model and batch as
`cpu_step_overhead.py` (batch 4 at 64 px, cached latents, in-process loading) with one option changed.
Variants run one after another inside each round, so a busy spell of a shared machine hits them alike;
the figure is the median over rounds of ms per step after the warm-up, and the ratio to the default.
An option this machine cannot run (a missing package, no CUDA) is listed with the reason.

    python bench/option_step_cost.py [--steps 24] [--warmup 4] [--rounds 3] [names ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from cpu_step_overhead import config_for, loracraft_seconds_per_step, make_model_and_data, set_up
from loracraft.errors import UserError

VARIANTS: dict[str, dict] = {
    "default": {},
    # optimizers (learning rate 1 for the adaptive ones, as their guides say)
    "AdamW8bit": {"optimizer_type": "AdamW8bit"},
    "Lion": {"optimizer_type": "Lion"},
    "Prodigy": {"optimizer_type": "Prodigy", "learning_rate": 1.0},
    "DAdaptAdam": {"optimizer_type": "DAdaptAdam", "learning_rate": 1.0},
    "AdaFactor": {"optimizer_type": "AdaFactor"},
    "AdamWScheduleFree": {"optimizer_type": "AdamWScheduleFree"},
    "cosine_with_restarts": {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 3},
    # noise, timesteps and loss
    "noise_offset": {"noise_offset": 0.05},
    "multires_noise": {"multires_noise_iterations": 6, "multires_noise_discount": 0.3},
    "ip_noise_gamma": {"ip_noise_gamma": 0.1},
    "min_snr_gamma": {"min_snr_gamma": 5.0},
    "debiased_estimation": {"debiased_estimation_loss": True},
    "huber": {"loss_type": "huber"},
    "v_parameterization": {"v_parameterization": True},
    "zero_terminal_snr": {"v_parameterization": True, "zero_terminal_snr": True},
    # precision and memory
    "bf16": {"mixed_precision": "bf16"},
    "full_bf16": {"mixed_precision": "bf16", "full_bf16": True},
    "fp8_base": {"mixed_precision": "bf16", "fp8_base": True},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    # captions
    "shuffle_caption": {"shuffle_caption": True},
    "token_warmup": {"token_warmup_step": 0.5, "shuffle_caption": True},
}


def step_seconds(model: Path, data: Path, out: Path, steps: int, warmup: int, changes: dict) -> float:
    base = config_for(model, data, out, steps)
    # Validated again with the change, so an unknown option or a broken rule is refused, not ignored.
    config = type(base).model_validate({**base.model_dump(), **changes})
    return loracraft_seconds_per_step(*set_up(config), warmup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    args = parser.parse_args()
    names = ["default", *[name for name in (args.names or VARIANTS) if name != "default"]]
    torch.set_num_threads(2)
    times: dict[str, list[float]] = {name: [] for name in names}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = make_model_and_data(root)
        for round_ in range(args.rounds):
            for name in names:
                if name in skipped:
                    continue
                try:
                    out = root / f"out-{name}-{round_}"
                    times[name].append(
                        step_seconds(model, data, out, args.steps, args.warmup, VARIANTS[name])
                    )
                except (UserError, ValueError, ImportError) as err:
                    skipped[name] = " ".join(str(err).splitlines()[:2])
    default = statistics.median(times["default"])
    print("| option | ms per step (median) | x default | rounds (ms) |")
    print("|---|---|---|---|")
    for name in names:
        if name in skipped:
            print(f"| {name} | not run: {skipped[name]} | | |")
            continue
        median = statistics.median(times[name])
        rounds = ", ".join(f"{t * 1000:.0f}" for t in times[name])
        print(f"| {name} | {median * 1000:.1f} | {median / default:.2f} | {rounds} |")


if __name__ == "__main__":
    main()
