"""Run settings: the noise a step adds, the timesteps it samples, what the U-Net learns and the loss.

kohya applies them in this order (reference §5.2-5.4), and so does `training/step.py`: Gaussian noise,
plus offset noise, then multires noise; timesteps in [min_timestep, max_timestep); input perturbation
of the noisy latents only; the target (the noise, or v); the element-wise loss (l2, l1, huber,
smooth_l1); the mask; the per-sample mean; the reg-image weight; then the SNR weightings: min-SNR,
v-like scaling, v-like loss, debiased estimation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from loracraft.config.fields import NOISE_AND_LOSS, flag
from loracraft.config.rules import RuleViolation

FIRST_TIMESTEP = 0
NUM_TRAIN_TIMESTEPS = 1000


class LossOptions(BaseModel):
    """Noise, timesteps, the training target and the loss with its weightings, in kohya's names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v_parameterization: bool = flag(
        False,
        NOISE_AND_LOSS,
        "Train the v-prediction target (sqrt(a)*noise - sqrt(1-a)*latents) instead of the noise, for "
        "v-prediction base models (SD2 768-v, NoobAI-XL v-pred). The file records it (ss_base_model_version "
        "sd_v1_v / sd_v2_v, modelspec.prediction_type v).",
    )
    zero_terminal_snr: bool = flag(
        False,
        NOISE_AND_LOSS,
        "Rescale the noise schedule so the last timestep is pure noise (SNR 0, arXiv 2305.08891), for models "
        "trained that way (with v_parameterization). The SNR loss weightings (min_snr_gamma, "
        "debiased_estimation_loss, ...) use this schedule's SNR; kohya keeps the unrescaled schedule's SNR "
        "for them, which no longer matches the noise.",
        ss_key="ss_zero_terminal_snr",
    )
    noise_offset: float | None = flag(
        None,
        NOISE_AND_LOSS,
        "Offset noise: add noise_offset * N(0,1) per image and channel to the noise, so the model learns "
        "darker darks and brighter brights; about 0.05-0.1. Empty or 0: off.",
        ss_key="ss_noise_offset",
        ge=0,
    )
    noise_offset_random_strength: bool = flag(
        False,
        NOISE_AND_LOSS,
        "Scale noise_offset by a uniform random factor in [0, 1) each step (one factor per batch, as kohya).",
        ss_key="ss_noise_offset_random_strength",
    )
    adaptive_noise_scale: float | None = flag(
        None,
        NOISE_AND_LOSS,
        "Add adaptive_noise_scale * |mean of the latents| (per image and channel) to noise_offset, clamped "
        "at 0. Needs noise_offset.",
        ss_key="ss_adaptive_noise_scale",
    )
    multires_noise_iterations: int | None = flag(
        None,
        NOISE_AND_LOSS,
        "Multires (pyramid) noise: add this many layers of upsampled low-resolution noise, then rescale to "
        "unit std; about 6-10. With noise_offset both apply, offset first (kohya's order), so the rescale "
        "shrinks the offset too. Empty or 0: off.",
        ss_key="ss_multires_noise_iterations",
        ge=0,
    )
    multires_noise_discount: float = flag(
        0.3,
        NOISE_AND_LOSS,
        "Weight of each coarser multires layer: layer i is scaled by discount^i.",
        ss_key="ss_multires_noise_discount",
        ge=0,
    )
    ip_noise_gamma: float | None = flag(
        None,
        NOISE_AND_LOSS,
        "Input perturbation (arXiv 2301.11706): the noisy latents get ip_noise_gamma * N(0,1) more noise "
        "while the target stays the same; about 0.1. Empty or 0: off.",
        ss_key="ss_ip_noise_gamma",
        ge=0,
    )
    ip_noise_gamma_random_strength: bool = flag(
        False,
        NOISE_AND_LOSS,
        "Scale ip_noise_gamma by a uniform random factor in [0, 1) each step (one per batch, as kohya).",
        ss_key="ss_ip_noise_gamma_random_strength",
    )
    min_timestep: int | None = flag(
        None,
        NOISE_AND_LOSS,
        "Lowest timestep sampled (0-999). Empty: 0.",
        ge=FIRST_TIMESTEP,
        le=NUM_TRAIN_TIMESTEPS - 1,
    )
    max_timestep: int | None = flag(
        None,
        NOISE_AND_LOSS,
        "Timesteps are drawn uniformly from [min_timestep, max_timestep) (1-1000); equal to min_timestep: "
        "every step uses that one timestep. Empty: 1000.",
        ge=1,
        le=NUM_TRAIN_TIMESTEPS,
        gui_default=NUM_TRAIN_TIMESTEPS,
    )
    loss_type: Literal["l1", "l2", "huber", "smooth_l1"] = flag(
        "l2",
        NOISE_AND_LOSS,
        "Element-wise loss: l2 (squared error), l1, huber 2c(sqrt(d^2+c^2)-c) or smooth_l1 "
        "2(sqrt(d^2+c^2)-c), with c from huber_schedule.",
        ss_key="ss_loss_type",
    )
    huber_schedule: Literal["constant", "exponential", "snr"] = flag(
        "snr",
        NOISE_AND_LOSS,
        "The huber/smooth_l1 threshold c per timestep t: constant huber_c*huber_scale; exponential "
        "huber_scale*huber_c^(t/1000); snr (1-huber_c)/(1+sigma_t)^2+huber_c, which ignores huber_scale as "
        "in kohya.",
        ss_key="ss_huber_schedule",
    )
    huber_c: float = flag(
        0.1, NOISE_AND_LOSS, "The huber/smooth_l1 threshold parameter.", ss_key="ss_huber_c", gt=0
    )
    huber_scale: float = flag(
        1.0,
        NOISE_AND_LOSS,
        "Scale of the huber threshold (constant and exponential schedules).",
        ss_key="ss_huber_scale",
        gt=0,
    )
    min_snr_gamma: float | None = flag(
        None,
        NOISE_AND_LOSS,
        "Min-SNR weighting (arXiv 2303.09556): weight min(SNR, gamma)/SNR, or /(SNR+1) with "
        "v_parameterization, so the easy low-noise timesteps count less; the paper uses 5. At SNR 0 "
        "(zero_terminal_snr's last step) the weight is the formula's limit (1, or 0 with v), not 0/0.",
        ss_key="ss_min_snr_gamma",
        ge=0,
    )
    scale_v_pred_loss_like_noise_pred: bool = flag(
        False,
        NOISE_AND_LOSS,
        "With v_parameterization: weight the loss by SNR/(SNR+1) (SNR at most 1000), so each timestep counts "
        "as much as in noise prediction.",
    )
    v_pred_like_loss: float | None = flag(
        None,
        NOISE_AND_LOSS,
        "Without v_parameterization: add this share of a v-prediction-like loss, loss*(SNR+1)/SNR. SNR is "
        "kept within [0.001, 1000], so zero_terminal_snr's last step stays finite.",
        ge=0,
    )
    debiased_estimation_loss: bool = flag(
        False,
        NOISE_AND_LOSS,
        "Debiased estimation (arXiv 2310.08442): weight the loss by 1/sqrt(SNR), or 1/(SNR+1) with "
        "v_parameterization. SNR is kept within [0.001, 1000], so zero_terminal_snr's last step stays finite.",
        ss_key="ss_debiased_estimation",
    )
    masked_loss: bool = flag(
        False,
        NOISE_AND_LOSS,
        "Train each image only where its mask is white: the image of the same stem in its folder's "
        "conditioning_data_dir (red channel). alpha_mask masks without this flag. Masked losses are "
        "averaged over the mask's area (kohya averages over every pixel, so a half-masked image trains at "
        "half strength).",
    )

    @model_validator(mode="after")
    def _loss_rules(self) -> LossOptions:
        if self.adaptive_noise_scale is not None and not self.noise_offset:
            raise RuleViolation("`adaptive_noise_scale` adds to `noise_offset`: set `noise_offset` too")
        if self.scale_v_pred_loss_like_noise_pred and not self.v_parameterization:
            raise RuleViolation(
                "`scale_v_pred_loss_like_noise_pred` applies to v-prediction: add `v_parameterization` or drop it"
            )
        if self.v_pred_like_loss and self.v_parameterization:
            raise RuleViolation(
                "`v_pred_like_loss` is for noise prediction; with `v_parameterization` the loss already is v"
            )
        if self.min_timestep is not None and self.max_timestep is not None:
            if self.min_timestep > self.max_timestep:
                raise RuleViolation(
                    f"`min_timestep` {self.min_timestep} is above `max_timestep` {self.max_timestep}"
                )
        return self

    @property
    def timestep_range(self) -> tuple[int, int]:
        """[low, high) of the sampled timesteps; low == high means every step uses `high`."""
        low = FIRST_TIMESTEP if self.min_timestep is None else self.min_timestep
        high = NUM_TRAIN_TIMESTEPS if self.max_timestep is None else self.max_timestep
        return low, high

    @property
    def loss_notes(self) -> list[str]:
        """One line for each combination kohya accepts that does something other than it seems."""
        lines = []
        if self.noise_offset and self.multires_noise_iterations:
            lines.append(
                "noise_offset with multires_noise_iterations: both apply, offset first; the multires noise "
                "then rescales the sum to unit std, which shrinks the offset as well (kohya's order)"
            )
        if self.noise_offset_random_strength and not self.noise_offset:
            lines.append("noise_offset_random_strength does nothing without noise_offset")
        if self.ip_noise_gamma_random_strength and not self.ip_noise_gamma:
            lines.append("ip_noise_gamma_random_strength does nothing without ip_noise_gamma")
        if self.zero_terminal_snr and not self.v_parameterization:
            lines.append(
                "zero_terminal_snr without v_parameterization: at the last timestep the input is pure noise, "
                "so predicting the noise teaches nothing there and sampling cannot start from it"
            )
        if self.min_snr_gamma and self.debiased_estimation_loss:
            lines.append(
                "min_snr_gamma and debiased_estimation_loss both weight the loss; their product applies"
            )
        return lines
