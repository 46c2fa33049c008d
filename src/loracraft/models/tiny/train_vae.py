"""Stage 1 of the tiny build: an 8x-downsampling KL autoencoder for 64 px shape images."""

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from loracraft.models.tiny.architecture import build_vae

# LDM's autoencoders weight KL by ~1e-6: just enough to keep the latent scale bounded, not to blur.
_KL_WEIGHT = 1e-6


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1], the range SD's VAE works in."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to zero, so short runs still end converged."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(
    images: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Callable[[str], None],
    log_every: int = 100,
) -> AutoencoderKL:
    """Reconstruction MSE + a tiny KL term, AdamW with warm-up + cosine; returns the VAE in eval mode."""
    torch.manual_seed(seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, steps // 20))
    generator = torch.Generator().manual_seed(seed)
    start, running = time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        mse = torch.nn.functional.mse_loss(reconstruction, batch)
        loss = mse + _KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += mse.item()
        if step % log_every == 0 or step == steps:
            count = log_every if step % log_every == 0 else step % log_every
            log(f"vae step {step}/{steps} mse {running / count:.5f} ({time.perf_counter() - start:.0f} s)")
            running = 0.0
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means, unscaled; the U-Net stage trains on these cached once, like kohya's latent cache."""
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(batch_size)])


def scaling_factor(latents: torch.Tensor) -> float:
    """SD's rule: one over the latents' standard deviation, so the U-Net sees unit-variance inputs."""
    return float(1.0 / latents.std())
