"""Why the learning test's thresholds are what they are: train the demo LoRA with a working trainer, with
a broken target (the U-Net asked to predict fresh noise, unrelated to the noise that was added) and
with a zero learning rate, and measure each with the learning test's probe.

    python bench/learning_controls.py [--epochs 5] [--optimizers]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from loracraft.tools.demo import DemoConcept, probe_lora, train_demo_lora
from loracraft.training import step


def unrelated_noise_target(
    latents: torch.Tensor, noise: torch.Tensor, alphas_cumprod_t: torch.Tensor, v_parameterization: bool
) -> torch.Tensor:
    """A deliberately broken target: noise the image was never given, so nothing can be learned from it."""
    return torch.randn_like(noise)


# The learning test's optimizer variants (tests/integration/test_learning.py), each with one learning rate
# for every part; --optimizers measures them with a constant rate and with cosine_with_restarts.
OPTIMIZERS = {
    name: {"optimizer_type": name, **dict.fromkeys(("learning_rate", "unet_lr", "text_encoder_lr"), lr)}
    for name, lr in (("Prodigy", 1.0), ("Lion", 5e-4), ("AdamW8bit", 2e-3))
}
RESTARTS = {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 2}


def run(name: str, root: Path, epochs: int, **overrides) -> str:
    concept = DemoConcept()
    result, seconds = train_demo_lora(root / name, concept, epochs, **overrides)
    before, after = probe_lora(concept, result.lora_file, 0.0, 1.0)
    return (
        f"| {name} | {seconds:.0f} s | {before.trigger_rate:.2f} -> {after.trigger_rate:.2f} | "
        f"{before.control_concept_rate:.2f} -> {after.control_concept_rate:.2f} | "
        f"{before.control_rate:.2f} -> {after.control_rate:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--optimizers", action="store_true", help="measure the learning test's optimizer variants instead"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | train time | trigger prompts in magenta | prompts without trigger in magenta | "
          "prompts without trigger in their own colour |")  # fmt: skip
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.optimizers:
            for name, overrides in OPTIMIZERS.items():
                print(run(name, root, args.epochs, **overrides), flush=True)
                restarts = run(f"{name} cosine_with_restarts", root, args.epochs, **overrides, **RESTARTS)
                print(restarts, flush=True)
            return
        print(run("working trainer", root, args.epochs), flush=True)
        original = step.training_target
        step.training_target = unrelated_noise_target
        try:
            print(run("broken target (unrelated noise)", root, args.epochs), flush=True)
        finally:
            step.training_target = original
        # kohya drops a group whose lr is 0; a tiny lr keeps the groups and trains nothing measurable.
        print(run("learning rate ~0 (1e-12)", root, args.epochs, learning_rate=1e-12, unet_lr=1e-12,
                  text_encoder_lr=1e-12), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
