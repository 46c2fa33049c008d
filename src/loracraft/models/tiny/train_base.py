"""Stage 2 of the tiny build: U-Net and text encoder trained together on cached latents.

This is SD's own objective (epsilon prediction under SD1.5's scaled-linear schedule) with a share of empty
captions, so the base model supports classifier-free guidance like SD1.5 does.
"""

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from loracraft.models.tiny.architecture import SD15_SCHEDULER_CONFIG
from loracraft.models.tiny.build_loop import LossLog, warmup_cosine_schedule


def train_base(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    latents: torch.Tensor,
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Callable[[str], None],
    uncond_share: float = 0.1,
    log_every: int = 100,
) -> None:
    """Train both models in place; ``latents`` are already scaled, ``token_ids`` padded to 77 tokens."""
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)
    schedule = warmup_cosine_schedule(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    unet.train()
    text_encoder.train()
    losses = LossLog("unet", "loss", steps, log, log_every)
    for step in range(1, steps + 1):
        index = torch.randint(len(latents), (batch_size,), generator=generator)
        clean, ids = latents[index], token_ids[index].clone()
        # Empty captions teach the unconditional prediction that guidance subtracts.
        ids[torch.rand(batch_size, generator=generator) < uncond_share] = empty_ids
        # Sample a random timestep for each image and apply the forward diffusion process.
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        hidden = text_encoder(ids).last_hidden_state
        prediction = unet(noisy, timesteps, hidden).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.add(step, loss.item(), digits=4)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
