"""CPU benchmark: loracraft's training loop against a bare PyTorch loop doing the same math.

Both loops train the same LoRA (rank 8 on U-Net and text encoder) on the same tiny SD1-topology model,
with the same batch of cached latents and captions, AdamW and a cosine schedule. The bare loop is what a
reader would write by hand: no DataLoader, no accelerate, no progress bar. The ratio of the two per-step
times is loracraft's overhead; the target is <= 1.15.

    python bench/cpu_step_overhead.py [--steps 40] [--warmup 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import PNDMScheduler

from loracraft.config.schema import TrainConfig
from loracraft.models.tiny.architecture import (
    SD15_SCHEDULER_CONFIG,
    build_text_encoder,
    build_unet,
    build_vae,
)
from loracraft.models.tiny.shapes import sample_dataset
from loracraft.models.tokenizer_build import build_clip_tokenizer
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.step import diffusion_loss
from loracraft.training.trainer import RunStart, TrainingSetup, setup_training, start_run
from step_timing import TimedLog


def make_model_and_data(root: Path) -> tuple[Path, Path]:
    images = sample_dataset(16, seed=0)
    words = sorted({word for _, caption in images for word in caption.split()})
    tokenizer_dir = build_clip_tokenizer(words, root / "model" / "tokenizer")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    build_unet().save_pretrained(root / "model" / "unet")
    build_vae().save_pretrained(root / "model" / "vae")
    build_text_encoder(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ).save_pretrained(root / "model" / "text_encoder")
    PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG).save_config(root / "model" / "scheduler")
    (root / "model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    folder = root / "data" / "1_shapes"
    folder.mkdir(parents=True)
    for i, (image, caption) in enumerate(images):
        image.save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(caption)
    return root / "model", root / "data"


def config_for(model: Path, data: Path, out: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        pretrained_model_name_or_path=str(model),
        train_data_dir=str(data),
        output_dir=str(out),
        caption_extension=".txt",
        resolution=(64, 64),
        enable_bucket=False,
        cache_latents=True,
        max_data_loader_n_workers=0,  # cached latents: loading in the training process is fastest
        train_batch_size=4,
        max_train_steps=steps,
        learning_rate=1e-4,
        network_dim=8,
        network_alpha=8,
        lr_scheduler="cosine",
        mixed_precision="no",
        seed=0,
    )


def set_up(config: TrainConfig) -> tuple[RunStart, TrainingSetup]:
    start = start_run(config, lambda _: None)
    return start, setup_training(
        config, start.plan, start.bundle, start.accelerator, start.seed, lambda _: None
    )


def loracraft_seconds_per_step(start: RunStart, setup: TrainingSetup, warmup: int) -> float:
    log = TimedLog(start.plan.steps.max_train_steps)
    loss_of = partial(diffusion_loss, setup.step_models, device=start.accelerator.device)
    run_epochs(start.accelerator, setup.parts, loss_of, start.plan.steps, 1.0, log, LoopHooks())
    measured = log.times[warmup - 1 :]
    return (measured[-1] - measured[0]) / (len(measured) - 1)


def bare_seconds_per_step(start: RunStart, setup: TrainingSetup, steps: int, warmup: int) -> float:
    """The same math written out by hand over the run's models, network and optimizer."""
    models = start.accelerator.unwrap_model(setup.parts.model)
    dataset = setup.parts.loader.dataset
    dataset.set_epoch(0)
    batches = [dataset[i] for i in range(len(dataset))]
    optimizer, scheduler = setup.parts.optimizer, setup.parts.lr_scheduler
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    noise_scheduler = setup.step_models.noise_scheduler
    scaling_factor = setup.step_models.vae_scaling_factor
    times = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        latents = batch["latents"] * scaling_factor
        ids = models.tokenizers[0](
            batch["captions"], padding="max_length", truncation=True, max_length=77, return_tensors="pt"
        ).input_ids
        states = models.text_encoders[0](ids).last_hidden_state
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (latents.shape[0],))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = models.unet(noisy, timesteps, states).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    measured = times[warmup - 1 :]
    return (measured[-1] - measured[0]) / (len(measured) - 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = make_model_and_data(root)
        ours, bare = [], []
        for round_ in range(args.rounds):
            config = config_for(model, data, root / f"out{round_}", args.steps)
            ours.append(loracraft_seconds_per_step(*set_up(config), args.warmup))
            bare.append(bare_seconds_per_step(*set_up(config), args.steps, args.warmup))
    ours_s, bare_s = statistics.median(ours), statistics.median(bare)
    print(
        f"loracraft loop: {ours_s * 1000:.1f} ms/step (rounds: {', '.join(f'{t * 1000:.1f}' for t in ours)})"
    )
    print(
        f"bare loop:      {bare_s * 1000:.1f} ms/step (rounds: {', '.join(f'{t * 1000:.1f}' for t in bare)})"
    )
    print(f"ratio: {ours_s / bare_s:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
