"""Why the learning test's thresholds are what they are: train the demo LoRA with a working trainer, with
a broken target (the U-Net asked to predict fresh noise, unrelated to the noise that was added) and
with a zero learning rate, and measure each with the learning test's probe.

    python bench/learning_controls.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from loracraft.tools.demo import DemoConcept, probe_lora, train_demo_lora
from loracraft.training import step


def unrelated_noise_target(noise: torch.Tensor) -> torch.Tensor:
    """A deliberately broken target: noise the image was never given, so nothing can be learned from it."""
    return torch.randn_like(noise)


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
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | train time | trigger prompts in magenta | prompts without trigger in magenta | "
          "prompts without trigger in their own colour |")  # fmt: skip
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
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
