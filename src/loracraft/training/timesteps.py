"""The noise schedule a step trains under, its SNR per timestep, and the timesteps a step samples.

kohya trains every SD1, SD2 and SDXL model under one DDPM schedule, whatever scheduler config the model
ships: scaled-linear betas from 0.00085 to 0.012 over 1000 steps. `--zero_terminal_snr` rescales it so
the last timestep is pure noise (arXiv 2305.08891, Algorithm 1); diffusers' `rescale_betas_zero_snr` is
that algorithm, step for step as kohya writes it.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from loracraft.config.loss_options import NUM_TRAIN_TIMESTEPS

KOHYA_TRAINING_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "clip_sample": False,
}


def training_noise_scheduler(zero_terminal_snr: bool) -> DDPMScheduler:
    """kohya's training schedule (`train_network.get_noise_scheduler`), rescaled to zero terminal SNR."""
    return DDPMScheduler(**KOHYA_TRAINING_SCHEDULE, rescale_betas_zero_snr=zero_terminal_snr)


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of each timestep, a/(1-a) with a the cumulative alpha product.

    0 at zero terminal SNR's last step; about 1175 at timestep 0 of kohya's schedule."""
    return alphas_cumprod / (1.0 - alphas_cumprod)


def sample_timesteps(low: int, high: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """One timestep per image, uniform in [low, high); all `high` when the range is empty (kohya's rule).

    Drawn on `device`: kohya draws on the CPU and copies, which waits for the GPU every step; on the CPU
    the draws are kohya's."""
    if low < high:
        return torch.randint(low, high, (batch_size,), device=device)
    return torch.full((batch_size,), high, dtype=torch.long, device=device)
