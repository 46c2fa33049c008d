"""The training noise schedule, zero terminal SNR, the SNR per timestep and the sampled timesteps, against
values computed here in float64 from the formulas (kohya's schedule; arXiv 2305.08891, Algorithm 1)."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from loracraft.config.loss_options import LossOptions
from loracraft.models.config_inference import base_config
from loracraft.training.timesteps import sample_timesteps, snr, training_noise_scheduler


def scaled_linear_alphas_cumprod() -> np.ndarray:
    """kohya's training schedule: betas linear in sqrt from 0.00085 to 0.012 over 1000 steps."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def zero_terminal_snr_alphas_cumprod() -> np.ndarray:
    """The paper's rescale: sqrt(alpha-bar) shifted so its last value is 0 and scaled to keep its first."""
    root = np.sqrt(scaled_linear_alphas_cumprod())
    rescaled = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return rescaled**2


def test_schedule_is_kohyas_scaled_linear_ddpm():
    alphas_cumprod = training_noise_scheduler(zero_terminal_snr=False).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(alphas_cumprod, scaled_linear_alphas_cumprod(), rtol=2e-5)
    assert alphas_cumprod[0] == pytest.approx(1 - 0.00085, abs=1e-7)


def test_schedule_matches_sd1_models_own_scheduler_config():
    """kohya ignores a model's scheduler config; for SD1 it holds the same betas, so nothing changes."""
    sd1 = DDPMScheduler.from_config(base_config("sd1", "scheduler"))
    assert torch.equal(training_noise_scheduler(zero_terminal_snr=False).alphas_cumprod, sd1.alphas_cumprod)


def test_zero_terminal_snr_rescale_matches_the_paper():
    alphas_cumprod = training_noise_scheduler(zero_terminal_snr=True).alphas_cumprod
    np.testing.assert_allclose(alphas_cumprod.double().numpy(), zero_terminal_snr_alphas_cumprod(), atol=2e-6)
    assert alphas_cumprod[-1].item() == 0.0  # the last timestep is pure noise
    assert alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, abs=1e-6)  # the first keeps its value


@pytest.mark.parametrize(
    ("zero_terminal", "timestep", "expected"),
    [
        (False, 0, 0.99915 / 0.00085),  # about 1175: the easiest timestep
        (False, 999, None),  # from the float64 schedule below
        (True, 999, 0.0),  # zero terminal SNR's last step
        (True, 500, None),
    ],
)
def test_snr_at_edge_timesteps(zero_terminal, timestep, expected):
    table = zero_terminal_snr_alphas_cumprod() if zero_terminal else scaled_linear_alphas_cumprod()
    if expected is None:
        expected = table[timestep] / (1 - table[timestep])
    alphas_cumprod = training_noise_scheduler(zero_terminal).alphas_cumprod
    assert snr(alphas_cumprod)[timestep].item() == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_default_timesteps_cover_0_to_999():
    torch.manual_seed(0)
    timesteps = sample_timesteps(*LossOptions().timestep_range, 20000, torch.device("cpu"))
    assert (timesteps.min().item(), timesteps.max().item()) == (0, 999)
    assert timesteps.dtype == torch.int64


def test_timesteps_stay_in_min_max_range():
    low, high = LossOptions(min_timestep=200, max_timestep=300).timestep_range
    timesteps = sample_timesteps(low, high, 5000, torch.device("cpu"))
    assert (timesteps.min().item(), timesteps.max().item()) == (200, 299)


def test_equal_min_and_max_timestep_train_that_one_timestep():
    range_ = LossOptions(min_timestep=999, max_timestep=999).timestep_range
    assert sample_timesteps(*range_, 4, torch.device("cpu")).tolist() == [999] * 4


def test_timesteps_are_the_seeded_draws():
    torch.manual_seed(3)
    expected = torch.randint(0, 1000, (6,))
    torch.manual_seed(3)
    assert torch.equal(sample_timesteps(0, 1000, 6, torch.device("cpu")), expected)
