"""loracraft-tiny-vpred: the tiny model's U-Net fine-tuned to v-prediction under zero terminal SNR.

An epsilon model turned into a v-prediction, zero-terminal-SNR one by further training (the kind of model
NoobAI-XL v-pred is), at the tiny model's scale: the same VAE, text encoder and tokenizer, and a U-Net
trained further on the base model's kind of images with the v target (sqrt(a)*noise - sqrt(1-a)*latents)
under kohya's schedule rescaled to zero terminal SNR. A LoRA for it trains with `--v_parameterization
--zero_terminal_snr`; it samples with `architecture.VPRED_SCHEDULER_CONFIG`. `scripts/build_tiny_vpred.py`
runs the recipe.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from loracraft.models.bundle import ModelBundle
from loracraft.models.checkpoint_file import write_checkpoint
from loracraft.models.config_metadata import config_metadata
from loracraft.models.ldm_convert import to_ldm_checkpoint
from loracraft.models.tiny.architecture import (
    MAX_TOKENS,
    TEXT_ENCODER_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
)
from loracraft.models.tiny.build_loop import LossLog, warmup_cosine_schedule
from loracraft.models.tiny.palette import BASE_COLOURS
from loracraft.models.tiny.shapes import caption_for, draw, sample_specs
from loracraft.models.tiny.train_vae import encode_latents, to_tensor
from loracraft.training.losses import training_target
from loracraft.training.timesteps import training_noise_scheduler

CHECKPOINT_NAME = "loracraft-tiny-vpred.safetensors"


@dataclass(frozen=True)
class VPredRecipe:
    """The shipped file's recipe (models/tiny/README.md has its build log)."""

    seed: int = 10
    images: int = 6000
    steps: int = 300
    batch: int = 64
    lr: float = 1e-3
    uncond_share: float = 0.1


def _text_states(bundle: ModelBundle, captions: list[str]) -> torch.Tensor:
    ids = bundle.tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return torch.cat([bundle.text_encoder(chunk).last_hidden_state for chunk in ids.split(512)])


def finetune_to_vpred(bundle: ModelBundle, recipe: VPredRecipe, log: Callable[[str], None]) -> None:
    """Train `bundle.unet` in place (fp32) to predict v under zero terminal SNR; the rest stays frozen."""
    generator = torch.Generator().manual_seed(recipe.seed)
    specs = sample_specs(recipe.images, recipe.seed + 1, colours=BASE_COLOURS)
    latents = (
        encode_latents(bundle.vae, to_tensor([draw(s) for s in specs])) * bundle.vae.config.scaling_factor
    )
    states = _text_states(bundle, [caption_for(s.shape, s.colour, s.background) for s in specs])
    empty_state = _text_states(bundle, [""])[0]
    scheduler = training_noise_scheduler(zero_terminal_snr=True)
    unet: UNet2DConditionModel = bundle.unet.float().requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=1e-2)
    schedule = warmup_cosine_schedule(optimizer, recipe.steps)
    losses = LossLog("unet v", "loss", recipe.steps, log, every=50)
    for step in range(1, recipe.steps + 1):
        index = torch.randint(len(latents), (recipe.batch,), generator=generator)
        clean, hidden = latents[index], states[index].clone()
        # Empty captions keep the unconditional prediction that guidance subtracts.
        hidden[torch.rand(recipe.batch, generator=generator) < recipe.uncond_share] = empty_state
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (recipe.batch,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        target = training_target(clean, noise, scheduler.alphas_cumprod[timesteps], v_parameterization=True)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, hidden).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.add(step, loss.item(), digits=4)
    unet.eval().requires_grad_(False)


def save_vpred_checkpoint(bundle: ModelBundle, out_dir: Path) -> Path:
    """The SD single file in fp16, like the base model's, marked as v-prediction in its metadata."""
    checkpoint = out_dir / CHECKPOINT_NAME
    tensors = {
        key: value.half() if value.is_floating_point() else value
        for key, value in to_ldm_checkpoint(bundle.unet, bundle.vae, bundle.text_encoder).items()
    }
    configs = {
        "unet": UNET_CONFIG,
        "vae": {**VAE_CONFIG, "scaling_factor": bundle.vae.config.scaling_factor},
        "text_encoder": TEXT_ENCODER_CONFIG,
    }
    metadata = {
        **config_metadata(configs),
        "loracraft.model": "loracraft-tiny-vpred",
        "modelspec.prediction_type": "v",
    }
    write_checkpoint(checkpoint, tensors, metadata)
    return checkpoint
