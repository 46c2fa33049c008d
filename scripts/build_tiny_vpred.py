"""Build loracraft-tiny-vpred from the shipped loracraft-tiny: its U-Net fine-tuned to v-prediction.

    python scripts/build_tiny_vpred.py [--out DIR]

Deterministic (fixed seeds, two torch threads); writes loracraft-tiny-vpred.safetensors (SD's single-file
layout, fp16, sharing loracraft-tiny's tokenizer) into DIR, by default the package's models/tiny/weights/,
then loads the written file back and reports how many of the tiny model's own prompts it draws in the right
colour on the right background when sampled as a v-prediction, zero-terminal-SNR model.
"""

import argparse
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from loracraft.models.loading import load_model_bundle
from loracraft.models.tiny import shipped
from loracraft.models.tiny.evaluate import evaluate
from loracraft.models.tiny.generate import tiny_pipeline
from loracraft.models.tiny.vpred import (
    VPRED_SCHEDULER_CONFIG,
    VPredRecipe,
    finetune_to_vpred,
    save_vpred_checkpoint,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} cpu {time.process_time():.0f} s] {message}", flush=True)


def report(what: str, path: Path) -> None:
    bundle = load_model_bundle(path, tokenizer_path=shipped.TOKENIZER_DIR)
    pipeline = tiny_pipeline(bundle.unet, bundle.vae, bundle.text_encoder, bundle.tokenizer)
    pipeline.scheduler = DDIMScheduler.from_config(VPRED_SCHEDULER_CONFIG)
    result = evaluate(pipeline)
    log(
        f"{what} sampled as v-prediction, own prompts: colour+background right "
        f"{result.colour_and_background:.0%}, shape right {result.shape:.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=shipped.WEIGHTS_DIR, help="folder for the checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    report("loracraft-tiny (epsilon)", shipped.CHECKPOINT)
    bundle = load_model_bundle(shipped.CHECKPOINT, tokenizer_path=shipped.TOKENIZER_DIR)
    finetune_to_vpred(bundle, VPredRecipe(), log)
    checkpoint = save_vpred_checkpoint(bundle, args.out)
    log(
        f"wrote {checkpoint} ({checkpoint.stat().st_size / 1e6:.1f} MB) after {time.perf_counter() - start:.0f} s"
    )
    report("shipped fp16 file", checkpoint)
    log(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
