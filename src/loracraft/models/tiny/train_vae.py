"""Stage 1 of the tiny build: an 8x-downsampling KL autoencoder for 64 px shape images."""

from collections.abc import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from loracraft.models.tiny.architecture import build_vae
from loracraft.models.tiny.build_loop import LossLog, warmup_cosine_schedule

# LDM's autoencoders weight KL by ~1e-6: just enough to keep the latent scale bounded, not to blur.
_KL_WEIGHT = 1e-6


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1], the range SD's VAE works in."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


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
    schedule = warmup_cosine_schedule(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    losses = LossLog("vae", "mse", steps, log, log_every)
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
        losses.add(step, mse.item(), digits=5)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means, unscaled; the U-Net stage trains on these cached once, like kohya's latent cache."""
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(batch_size)])


def scaling_factor(latents: torch.Tensor) -> float:
    """SD's rule: one over the latents' standard deviation, so the U-Net sees unit-variance inputs."""
    return float(1.0 / latents.std())
