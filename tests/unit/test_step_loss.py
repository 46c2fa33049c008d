"""The training step with each noise, timestep and loss option: a stand-in U-Net that predicts zeros and
records its inputs, so the step's loss is the mean of the loss of the target itself.

Every expected value is built here in float64 from the seeded draws in kohya's order (the noise, its
offset's shift, the timesteps, then the input perturbation) and the formulas; each test would
fail if its option were ignored."""

import math

import pytest
import torch
from torch import nn

from loracraft.config.loss_options import LossOptions
from loracraft.training.step import StepModels, diffusion_loss
from loracraft.training.timesteps import training_noise_scheduler

SHAPE = (2, 4, 8, 8)
CPU = torch.device("cpu")


class ZeroPrediction(nn.Module):
    """Predicts zeros and keeps what the step gave it."""

    def forward(self, noisy_latents, timesteps, captions, **conditioning):
        self.noisy_latents, self.timesteps = noisy_latents, timesteps
        return torch.zeros_like(noisy_latents)


def run_step(options: LossOptions, seed: int = 0, zero_terminal_snr: bool = False, batch: dict | None = None):
    model = ZeroPrediction()
    models = StepModels(model, training_noise_scheduler(zero_terminal_snr), 1.0, None, options)
    latents = torch.linspace(-1, 1, math.prod(SHAPE)).reshape(SHAPE)
    batch = {"latents": latents, "captions": ["a", "b"], "loss_weights": torch.ones(2), **(batch or {})}
    torch.manual_seed(seed)
    loss = diffusion_loss(models, batch, CPU)
    return loss.item(), model, latents.double()


def draws(seed: int, *shapes_then_timesteps):
    """The step's draws from `seed`: a Gaussian of each shape in order, with the timesteps (0-999) after the
    noise draws named before them (kohya draws timesteps after the noise, before input perturbation)."""
    torch.manual_seed(seed)
    out = []
    for item in shapes_then_timesteps:
        out.append(torch.randint(0, 1000, (2,)) if item == "t" else torch.randn(item).double())
    return out


def alpha_bars(timesteps: torch.Tensor, zero_terminal_snr: bool = False) -> torch.Tensor:
    return training_noise_scheduler(zero_terminal_snr).alphas_cumprod[timesteps].double().view(-1, 1, 1, 1)


def test_default_step_is_the_noise_prediction_mse():
    loss, model, latents = run_step(LossOptions())
    noise, timesteps = draws(0, SHAPE, "t")
    a = alpha_bars(timesteps)
    torch.testing.assert_close(model.noisy_latents.double(), a.sqrt() * latents + (1 - a).sqrt() * noise)
    assert loss == pytest.approx((noise**2).mean().item(), rel=1e-6)


def test_noise_offset_changes_the_noise_and_the_target():
    loss, _, _ = run_step(LossOptions(noise_offset=0.1))
    noise, shift, _ = draws(0, SHAPE, (2, 4, 1, 1), "t")
    assert loss == pytest.approx(((noise + 0.1 * shift) ** 2).mean().item(), rel=1e-6)


def test_input_perturbation_noises_the_input_but_not_the_target():
    loss, model, latents = run_step(LossOptions(ip_noise_gamma=0.1))
    noise, timesteps, extra = draws(0, SHAPE, "t", SHAPE)
    a = alpha_bars(timesteps)
    expected_input = a.sqrt() * latents + (1 - a).sqrt() * (noise + 0.1 * extra)
    torch.testing.assert_close(model.noisy_latents.double(), expected_input)
    assert loss == pytest.approx((noise**2).mean().item(), rel=1e-6)


def test_timestep_range():
    _, model, _ = run_step(LossOptions(min_timestep=990, max_timestep=1000))
    assert all(990 <= t < 1000 for t in model.timesteps.tolist())
    _, model, _ = run_step(LossOptions(min_timestep=500, max_timestep=500))
    assert model.timesteps.tolist() == [500, 500]


def test_v_parameterization_learns_v():
    loss, _, latents = run_step(LossOptions(v_parameterization=True))
    noise, timesteps = draws(0, SHAPE, "t")
    a = alpha_bars(timesteps)
    v = a.sqrt() * noise - (1 - a).sqrt() * latents
    assert loss == pytest.approx((v**2).mean().item(), rel=1e-6)


def test_zero_terminal_snr_last_step_is_pure_noise_and_v_is_minus_the_latents():
    options = LossOptions(v_parameterization=True, min_timestep=999, max_timestep=999)
    loss, model, latents = run_step(options, zero_terminal_snr=True)
    (noise,) = draws(0, SHAPE)
    torch.testing.assert_close(model.noisy_latents.double(), noise, rtol=0, atol=1e-6)
    assert loss == pytest.approx((latents**2).mean().item(), rel=1e-6)


def test_min_snr_gamma_weights_each_sample():
    loss, _, _ = run_step(LossOptions(min_snr_gamma=5))
    noise, timesteps = draws(0, SHAPE, "t")
    a = alpha_bars(timesteps).flatten()
    snr = a / (1 - a)
    weights = torch.clamp(snr, max=5) / snr
    per_sample = (noise**2).mean(dim=(1, 2, 3))
    assert loss == pytest.approx((per_sample * weights).mean().item(), rel=1e-5)


def test_min_snr_gamma_at_zero_terminal_snr_last_step_is_finite():
    options = LossOptions(min_snr_gamma=5, min_timestep=999, max_timestep=999)
    loss, _, _ = run_step(options, zero_terminal_snr=True)
    (noise,) = draws(0, SHAPE)
    assert loss == pytest.approx((noise**2).mean().item(), rel=1e-6)  # weight 1, the formula's limit


def test_debiased_estimation_weights_each_sample():
    loss, _, _ = run_step(LossOptions(debiased_estimation_loss=True))
    noise, timesteps = draws(0, SHAPE, "t")
    a = alpha_bars(timesteps).flatten()
    weights = 1 / torch.sqrt(torch.clamp(a / (1 - a), max=1000))
    assert loss == pytest.approx(((noise**2).mean(dim=(1, 2, 3)) * weights).mean().item(), rel=1e-5)


def test_scale_v_pred_loss_like_noise_pred():
    options = LossOptions(v_parameterization=True, scale_v_pred_loss_like_noise_pred=True)
    loss, _, latents = run_step(options)
    noise, timesteps = draws(0, SHAPE, "t")
    a = alpha_bars(timesteps)
    v = a.sqrt() * noise - (1 - a).sqrt() * latents
    snr = torch.clamp((a / (1 - a)).flatten(), max=1000)
    assert loss == pytest.approx(((v**2).mean(dim=(1, 2, 3)) * snr / (snr + 1)).mean().item(), rel=1e-5)


def test_v_pred_like_loss():
    loss, _, _ = run_step(LossOptions(v_pred_like_loss=0.5))
    noise, timesteps = draws(0, SHAPE, "t")
    a = alpha_bars(timesteps).flatten()
    snr = torch.clamp(a / (1 - a), max=1000)
    factor = 1 + 0.5 * (snr + 1) / snr
    assert loss == pytest.approx(((noise**2).mean(dim=(1, 2, 3)) * factor).mean().item(), rel=1e-5)


@pytest.mark.parametrize("schedule", ["constant", "exponential", "snr"])
def test_huber_loss_with_its_schedule(schedule):
    options = LossOptions(loss_type="huber", huber_schedule=schedule, huber_c=0.2, huber_scale=1.5)
    loss, _, _ = run_step(options)
    noise, timesteps = draws(0, SHAPE, "t")
    a = alpha_bars(timesteps)
    t = timesteps.double().view(-1, 1, 1, 1)
    c = {
        "constant": torch.full_like(a, 0.2 * 1.5),
        "exponential": 1.5 * 0.2 ** (t / 1000),
        "snr": 0.8 / (1 + ((1 - a) / a).sqrt()) ** 2 + 0.2,
    }[schedule]
    expected = 2 * c * (torch.sqrt(noise**2 + c**2) - c)
    assert loss == pytest.approx(expected.mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    ("loss_type", "formula"),
    [("l1", lambda d: d.abs()), ("smooth_l1", lambda d: 2 * (torch.sqrt(d**2 + 0.01) - 0.1))],
)
def test_l1_and_smooth_l1(loss_type, formula):
    loss, _, _ = run_step(LossOptions(loss_type=loss_type, huber_schedule="constant"))
    noise, _ = draws(0, SHAPE, "t")
    assert loss == pytest.approx(formula(noise).mean().item(), rel=1e-5)


def test_masks_and_reg_weights():
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, :, :32] = 1.0  # the first image trains its left half only
    masks[1] = 1.0
    batch = {"masks": masks, "loss_weights": torch.tensor([1.0, 0.5])}
    loss, _, _ = run_step(LossOptions(), batch=batch)
    noise, _ = draws(0, SHAPE, "t")
    first = (noise[0, :, :, :4] ** 2).mean()
    second = 0.5 * (noise[1] ** 2).mean()
    assert loss == pytest.approx(((first + second) / 2).item(), rel=1e-6)
