"""The loss of a step as pure functions: the target, the element-wise loss, the mask, the SNR weightings.

Formulas as kohya's `train_util` and `custom_train_functions` compute them (reference §5.4), with two
fixes where kohya's numbers break: a mask's loss is averaged over the mask's area, and every SNR
weighting is finite at SNR 0 (zero terminal SNR's last step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from loracraft.config.loss_options import LossOptions

# kohya caps the SNR at 1000 where a weighting uses it ("if timestep is 0, snr_t is inf"). The floor is
# ours: with zero terminal SNR the last step's SNR is 0, and 1/SNR would make its loss infinite.
SNR_CEILING = 1000.0
SNR_FLOOR = 1e-3


def training_target(
    latents: torch.Tensor, noise: torch.Tensor, alphas_cumprod_t: torch.Tensor, v_parameterization: bool
) -> torch.Tensor:
    """What the U-Net learns to predict: the added noise, or with v-parameterization the velocity
    sqrt(a)*noise - sqrt(1-a)*latents (arXiv 2202.00512), `alphas_cumprod_t` (B,) at each image's timestep."""
    if not v_parameterization:
        return noise
    a = alphas_cumprod_t.to(latents.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * latents


def huber_threshold(
    schedule: str,
    huber_c: float,
    huber_scale: float,
    timesteps: torch.Tensor,
    alphas_cumprod_t: torch.Tensor,
    num_train_timesteps: int,
) -> torch.Tensor:
    """The huber/smooth_l1 threshold c of each image (B,) at its timestep, per `--huber_schedule`.

    snr: (1-c)/(1+sigma_t)^2 + c with sigma_t = sqrt((1-a)/a), from 1 at t=0 down to c at pure noise;
    exponential: huber_scale * c^(t/T); constant: huber_c * huber_scale."""
    if schedule == "snr":
        sigmas = ((1.0 - alphas_cumprod_t) / alphas_cumprod_t) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    if schedule == "exponential":
        alpha = -math.log(huber_c) / num_train_timesteps
        return torch.exp(-alpha * timesteps) * huber_scale
    return torch.full(timesteps.shape, huber_c * huber_scale, device=timesteps.device)


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str, huber_c: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of every element: l2 (d^2), l1 (|d|), huber 2c(sqrt(d^2+c^2)-c) or smooth_l1
    2(sqrt(d^2+c^2)-c), both pseudo-Huber forms with `huber_c` (B,) per image."""
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    c = huber_c.view(-1, *([1] * (prediction.ndim - 1)))
    pseudo_huber = 2 * (torch.sqrt((prediction - target) ** 2 + c**2) - c)
    return c * pseudo_huber if loss_type == "huber" else pseudo_huber


def masked_mean(loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of the loss over the masked area.

    The pixel mask is shrunk to latent size by area averaging. kohya divides by every element, so a
    half-transparent image trains at half strength; dividing by the mask's own area keeps the strength.
    """
    mask = F.interpolate(masks.float(), size=loss.shape[-2:], mode="area")
    weighted = (loss * mask).sum(dim=(1, 2, 3))
    area = mask.sum(dim=(1, 2, 3)) * loss.shape[1]
    return weighted / area.clamp(min=1e-6)


def min_snr_weight(snr_t: torch.Tensor, gamma: float, v_parameterization: bool) -> torch.Tensor:
    """Min-SNR-gamma (arXiv 2303.09556): min(SNR, gamma)/SNR for noise prediction, min(SNR, gamma)/(SNR+1)
    for v. At SNR 0 the noise form is its limit, 1 (kohya's formula gives 0/0 there)."""
    clipped = torch.clamp(snr_t, max=gamma)
    if v_parameterization:
        return clipped / (snr_t + 1)
    return torch.where(snr_t > 0, clipped / snr_t, torch.ones_like(snr_t))


def v_like_noise_scale(snr_t: torch.Tensor) -> torch.Tensor:
    """SNR/(SNR+1), SNR at most 1000: scales a v-prediction loss to a noise-prediction loss's size."""
    capped = torch.clamp(snr_t, max=SNR_CEILING)
    return capped / (capped + 1)


def v_like_loss_factor(snr_t: torch.Tensor, amount: float) -> torch.Tensor:
    """1 + amount*(SNR+1)/SNR: the loss plus `amount` of a v-prediction-like loss (kohya's
    `add_v_prediction_like_loss`); SNR kept within [0.001, 1000] so SNR 0 stays finite."""
    return 1 + amount / v_like_noise_scale(torch.clamp(snr_t, min=SNR_FLOOR))


def debiased_weight(snr_t: torch.Tensor, v_parameterization: bool) -> torch.Tensor:
    """Debiased estimation (arXiv 2310.08442): 1/sqrt(SNR) for noise prediction, 1/(SNR+1) for v, SNR at
    most 1000; the noise form keeps SNR at least 0.001, so SNR 0 stays finite."""
    capped = torch.clamp(snr_t, max=SNR_CEILING)
    if v_parameterization:
        return 1 / (capped + 1)
    return 1 / torch.sqrt(torch.clamp(capped, min=SNR_FLOOR))


def snr_weighted(loss: torch.Tensor, snr_t: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The per-sample loss (B,) with the SNR weightings that are on, in kohya's order (`post_process_loss`):
    min-SNR, v-like scaling, v-like loss, debiased estimation."""
    v_parameterization = options.v_parameterization
    if options.min_snr_gamma:
        loss = loss * min_snr_weight(snr_t, options.min_snr_gamma, v_parameterization)
    if options.scale_v_pred_loss_like_noise_pred:
        loss = loss * v_like_noise_scale(snr_t)
    if options.v_pred_like_loss:
        loss = loss * v_like_loss_factor(snr_t, options.v_pred_like_loss)
    if options.debiased_estimation_loss:
        loss = loss * debiased_weight(snr_t, v_parameterization)
    return loss
