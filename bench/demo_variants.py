"""Demo recipe variants: how well each teaches "zxq" = magenta, and what it does to the other colours.

    python bench/demo_variants.py                 # every variant, one after another (~30 min)
    python bench/demo_variants.py base known3     # the named ones

Each variant trains the demo's LoRA with some settings changed and prints one row of the table in
bench/RESULTS.md ("Demo recipe variants"): rates at LoRA weight 1.0 from the learning test's probe.
"known" variants add a folder `R_shape/` of 12 images of the colours the model already knows, captioned
by name; "magenta" variants use the colour's own (untrained) token as the trigger instead of "zxq";
"mean" variants train on the VAE posterior's mean instead of a random draw from it (kohya's latents);
"seedN" variants train with another seed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from loracraft.models.tiny.palette import BACKGROUNDS, BASE_COLOURS, SHAPES
from loracraft.tools.demo import DemoConcept, probe_lora, train_demo_lora, write_example


def lrs(value: float) -> dict:
    return {"learning_rate": value, "unet_lr": value, "text_encoder_lr": value}


BATCH16 = {"train_batch_size": 16, "epochs": 20, **lrs(3e-3)}
VARIANTS: dict[str, dict] = {
    "base": {},
    "base_seed1": {"seed": 1},
    "base_seed2": {"seed": 2},
    # the VAE posterior's mean instead of kohya's random draw from it
    "mean": {"latent_sampling": "mean"},
    "mean_seed1": {"latent_sampling": "mean", "seed": 1},
    "mean_seed2": {"latent_sampling": "mean", "seed": 2},
    "rank4": {"network_dim": 4, "network_alpha": 4},
    "known3": {"known": 3},
    "known5": {"known": 5},
    "known5_e8": {"known": 5, "epochs": 8},
    "known5_te1e-4": {"known": 5, "text_encoder_lr": 1e-4},
    "known3_24images": {"known": 3, "known_images": 24},
    "known2_b8_e15": {"known": 2, "train_batch_size": 8, "epochs": 15, **lrs(3e-3)},
    "known3_b8_e20": {"known": 3, "train_batch_size": 8, "epochs": 20, **lrs(2e-3)},
    "known3_b16": {"known": 3, **BATCH16},
    "known3_b16_e30": {"known": 3, **BATCH16, "epochs": 30},
    "known3_b16_lr5e-3": {"known": 3, **BATCH16, **lrs(5e-3)},
    "known3_b16_lr5e-3_cosine": {"known": 3, **BATCH16, **lrs(5e-3), "lr_scheduler": "cosine"},
    "known3_b16_unet_only": {"known": 3, **BATCH16, "network_train_unet_only": True},
    "known3_b16_te1e-3": {"known": 3, **BATCH16, "text_encoder_lr": 1e-3},
    "magenta": {"trigger": "magenta"},
    "magenta_known3": {"trigger": "magenta", "known": 3},
    "magenta_known3_b16": {"trigger": "magenta", "known": 3, **BATCH16},
    "only_known": {"known": 10, "concept_images": 0},
}


def add_known_colours(data_dir: Path, repeats: int, count: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    backgrounds = tuple(BACKGROUNDS)
    for i in range(count):
        colour, shape, background = BASE_COLOURS[i % 4], SHAPES[i % 3], backgrounds[(i // 4) % 3]
        write_example(data_dir / f"{repeats}_shape" / f"known{i:03d}", shape, colour, colour, background, rng)


def run(name: str, root: Path) -> str:
    settings = dict(VARIANTS[name])
    known, known_images = settings.pop("known", 0), settings.pop("known_images", 12)
    epochs = settings.pop("epochs", 10)
    concept = DemoConcept(trigger=settings.pop("trigger", "zxq"), images=settings.pop("concept_images", 12))
    add_data = (lambda data_dir: add_known_colours(data_dir, known, known_images)) if known else None
    result, seconds = train_demo_lora(root / name, concept, epochs, add_data, **settings)
    (after,) = probe_lora(concept, result.lora_file, 1.0)
    return (
        f"| {name} | {result.steps} | {seconds:.0f} s | {after.trigger_rate:.2f} | "
        f"{after.control_concept_rate:.2f} | {after.control_rate:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="VARIANT", help=f"any of: {', '.join(VARIANTS)}")
    names = parser.parse_args().variants or list(VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(int(os.environ.get("LORACRAFT_BENCH_THREADS", "1")))
    print("| variant | steps | train time | trigger in magenta | others in magenta | others in own colour |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(run(name, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
