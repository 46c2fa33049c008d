"""Build loracraft-tiny from nothing: procedural images -> VAE -> U-Net + text encoder -> shipped files.

    python scripts/build_tiny_model.py [--out DIR]

Deterministic (fixed seeds, two torch threads): about 26 minutes on two idle cores, and the file it writes
is byte-identical to the shipped one (models/tiny/README.md has the measured build). On a machine shared
with other work, set OMP_WAIT_POLICY=PASSIVE: it stops idle OpenMP threads from spinning, which there
halved the CPU each step cost, and changes no result. Writes
loracraft-tiny.safetensors (SD's single-file layout, fp16) and loracraft-tiny-tokenizer/ into DIR,
by default the package's models/tiny/weights/, then loads the written file back and reports how many of
its own prompts it draws in the right colour on the right background.
"""

import argparse
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from loracraft.models.loading import load_model_bundle
from loracraft.models.tiny.build import Recipe, build_tiny_model, save_checkpoint
from loracraft.models.tiny.evaluate import evaluate
from loracraft.models.tiny.generate import tiny_pipeline
from loracraft.models.tiny.shipped import WEIGHTS_DIR


def log(message: str) -> None:
    # Wall time next to CPU time: on a shared machine the second shows what the build itself cost.
    print(f"[{time.strftime('%H:%M:%S')} cpu {time.process_time():.0f} s] {message}", flush=True)


def report(what: str, pipeline: StableDiffusionPipeline) -> None:
    result = evaluate(pipeline)
    log(
        f"{what}, own prompts: colour+background right {result.colour_and_background:.0%}, "
        f"shape right {result.shape:.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=WEIGHTS_DIR, help="folder for the checkpoint and tokenizer"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    model = build_tiny_model(args.out, Recipe(), log)
    report("trained fp32 model", tiny_pipeline(model.unet, model.vae, model.text_encoder, model.tokenizer))
    checkpoint = save_checkpoint(model, args.out)
    log(
        f"wrote {checkpoint} ({checkpoint.stat().st_size / 1e6:.1f} MB) after {time.perf_counter() - start:.0f} s"
    )
    bundle = load_model_bundle(checkpoint)
    report("shipped fp16 file", tiny_pipeline(bundle.unet, bundle.vae, bundle.text_encoder, bundle.tokenizer))
    log(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
