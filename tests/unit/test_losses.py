"""The loss formulas against values computed by hand in float64 (kohya's formulas, reference §5.4; the
papers: v-prediction arXiv 2202.00512, Min-SNR arXiv 2303.09556, debiased estimation arXiv 2310.08442),
at ordinary SNRs and at the edges: timestep 0, timestep 999 and zero terminal SNR's last step (SNR 0)."""

import math

import pytest
import torch

from loracraft.config.loss_options import LossOptions
from loracraft.training.losses import (
    debiased_weight,
    elementwise_loss,
    huber_threshold,
    masked_mean,
    min_snr_weight,
    snr_weighted,
    training_target,
    v_like_loss_factor,
    v_like_noise_scale,
)
from loracraft.training.timesteps import snr, training_noise_scheduler

A0 = 1 - 0.00085  # alpha-bar at timestep 0 of kohya's schedule
SNR0 = A0 / (1 - A0)  # about 1175.5


def weights(function, snrs, *args) -> list[float]:
    return function(torch.tensor(snrs, dtype=torch.float64), *args).tolist()


def test_noise_prediction_target_is_the_noise():
    noise = torch.randn(2, 4, 8, 8)
    assert training_target(torch.randn(2, 4, 8, 8), noise, torch.rand(2), False) is noise


@pytest.mark.parametrize(
    ("alpha_bar", "noise", "latent", "expected"),
    [
        (A0, 0.7, -1.3, math.sqrt(A0) * 0.7 - math.sqrt(1 - A0) * -1.3),  # timestep 0: almost the noise
        (0.25, 2.0, 1.0, 0.5 * 2.0 - math.sqrt(0.75) * 1.0),
        (0.0, 0.7, -1.3, 1.3),  # zero terminal SNR's last step: v = -latents
    ],
)
def test_v_target(alpha_bar, noise, latent, expected):
    target = training_target(
        torch.full((1, 1, 1, 1), latent, dtype=torch.float64),
        torch.full((1, 1, 1, 1), noise, dtype=torch.float64),
        torch.tensor([alpha_bar], dtype=torch.float64),
        True,
    )
    assert target.item() == pytest.approx(expected, abs=1e-12)


def test_v_target_matches_diffusers_velocity_at_edge_timesteps():
    for zero_terminal in (False, True):
        scheduler = training_noise_scheduler(zero_terminal)
        latents, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
        timesteps = torch.tensor([0, 500, 999])
        ours = training_target(latents, noise, scheduler.alphas_cumprod[timesteps], True)
        torch.testing.assert_close(ours, scheduler.get_velocity(latents, noise, timesteps))


@pytest.mark.parametrize(
    ("loss_type", "difference", "c", "expected"),
    [
        ("l2", 3.0, None, 9.0),
        ("l1", -3.0, None, 3.0),
        ("huber", 3.0, 0.5, 2 * 0.5 * (math.sqrt(9.25) - 0.5)),
        ("smooth_l1", 3.0, 0.5, 2 * (math.sqrt(9.25) - 0.5)),
        ("huber", 1e-4, 0.1, 2 * 0.1 * (math.sqrt(1e-8 + 0.01) - 0.1)),  # about d^2 for small errors
        ("smooth_l1", -2.0, 0.1, 2 * (math.sqrt(4.01) - 0.1)),
    ],
)
def test_elementwise_loss(loss_type, difference, c, expected):
    prediction = torch.full((1, 1, 1, 1), difference, dtype=torch.float64)
    target = torch.zeros_like(prediction)
    huber_c = None if c is None else torch.tensor([c], dtype=torch.float64)
    assert elementwise_loss(prediction, target, loss_type, huber_c).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_huber_threshold_is_per_image():
    prediction = torch.full((2, 1, 1, 1), 3.0, dtype=torch.float64)
    loss = elementwise_loss(
        prediction, torch.zeros_like(prediction), "huber", torch.tensor([0.5, 1.0]).double()
    )
    assert loss.flatten().tolist() == pytest.approx([math.sqrt(9.25) - 0.5, 2 * (math.sqrt(10) - 1)])


@pytest.mark.parametrize(
    ("schedule", "timestep", "alpha_bar", "expected"),
    [
        ("snr", 0, A0, 0.9 / (1 + math.sqrt((1 - A0) / A0)) ** 2 + 0.1),  # near 1 at the cleanest step
        ("snr", 999, 0.25, 0.9 / (1 + math.sqrt(3)) ** 2 + 0.1),
        ("snr", 999, 0.0, 0.1),  # pure noise (zero terminal SNR): c itself, not NaN
        ("exponential", 0, A0, 2.0),  # huber_scale * c^(0/1000)
        ("exponential", 500, 0.5, 2.0 * math.sqrt(0.1)),
        ("exponential", 999, 0.0, 2.0 * 0.1**0.999),
        ("constant", 999, 0.0, 0.1 * 2.0),
    ],
)
def test_huber_threshold_schedules(schedule, timestep, alpha_bar, expected):
    threshold = huber_threshold(
        schedule, 0.1, 2.0, torch.tensor([timestep]), torch.tensor([alpha_bar], dtype=torch.float64), 1000
    )
    assert threshold.item() == pytest.approx(expected, rel=1e-6)


def test_masked_mean_is_the_mean_over_the_masked_area():
    loss = torch.zeros(2, 4, 8, 8)
    loss[:, :, :, :4] = 2.0  # left half
    loss[:, :, :, 4:] = 10.0
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, :, :32] = 1.0  # sample 0 trains only the left half
    masks[1] = 1.0  # sample 1 trains everything
    assert torch.allclose(masked_mean(loss, masks), torch.tensor([2.0, 6.0]))


def test_full_mask_equals_plain_mean():
    loss = torch.rand(3, 4, 8, 8)
    assert torch.allclose(masked_mean(loss, torch.ones(3, 1, 64, 64)), loss.mean(dim=(1, 2, 3)))


def test_grey_mask_weighs_pixels_by_their_value():
    loss = torch.zeros(1, 1, 1, 2)
    loss[..., 0], loss[..., 1] = 4.0, 1.0
    masks = torch.tensor([[[[1.0, 0.5]]]])
    assert masked_mean(loss, masks).item() == pytest.approx((4.0 + 0.5) / 1.5)


def test_min_snr_weight_for_noise_prediction():
    # min(SNR, 5)/SNR: SNR 10 -> 0.5; SNR 2 -> 1; timestep 0 -> 5/1175.5; SNR 0 -> its limit 1.
    assert weights(min_snr_weight, [10.0, 2.0, SNR0, 0.0], 5.0, False) == pytest.approx(
        [0.5, 1.0, 5 / SNR0, 1.0]
    )


def test_min_snr_weight_for_v_prediction():
    # min(SNR, 5)/(SNR+1): SNR 10 -> 5/11; SNR 2 -> 2/3; SNR 0 -> 0.
    assert weights(min_snr_weight, [10.0, 2.0, SNR0, 0.0], 5.0, True) == pytest.approx(
        [5 / 11, 2 / 3, 5 / (SNR0 + 1), 0.0]
    )


def test_v_like_noise_scale():
    # SNR/(SNR+1), SNR capped at 1000 (timestep 0's 1175 counts as 1000).
    assert weights(v_like_noise_scale, [3.0, SNR0, 0.0]) == pytest.approx([0.75, 1000 / 1001, 0.0])


def test_v_like_loss_factor():
    # 1 + amount*(SNR+1)/SNR; SNR 0 is kept at 0.001, so the last zero-terminal step stays finite.
    assert weights(v_like_loss_factor, [1.0, SNR0, 0.0], 0.5) == pytest.approx(
        [2.0, 1 + 0.5 * 1001 / 1000, 1 + 0.5 * 1.001 / 0.001]
    )


def test_debiased_weight():
    # 1/sqrt(SNR) (noise) and 1/(SNR+1) (v), SNR within [0.001, 1000] for the noise form.
    assert weights(debiased_weight, [4.0, SNR0, 0.0], False) == pytest.approx(
        [0.5, 1 / math.sqrt(1000), 1 / math.sqrt(0.001)]
    )
    assert weights(debiased_weight, [4.0, SNR0, 0.0], True) == pytest.approx([0.2, 1 / 1001, 1.0])


def test_weights_are_finite_at_every_timestep_of_both_schedules():
    options = [
        LossOptions(min_snr_gamma=5, debiased_estimation_loss=True, v_pred_like_loss=0.1),
        LossOptions(min_snr_gamma=5, debiased_estimation_loss=True, v_parameterization=True,
                    scale_v_pred_loss_like_noise_pred=True),
    ]  # fmt: skip
    for zero_terminal in (False, True):
        snrs = snr(training_noise_scheduler(zero_terminal).alphas_cumprod)
        for option in options:
            assert torch.isfinite(snr_weighted(torch.ones(1000), snrs, option)).all()


def test_snr_weightings_multiply_in_kohyas_order():
    snrs = torch.tensor([10.0, 0.5], dtype=torch.float64)
    loss = torch.tensor([2.0, 3.0], dtype=torch.float64)
    noise_options = LossOptions(min_snr_gamma=5, debiased_estimation_loss=True, v_pred_like_loss=0.2)
    expected = [
        2.0 * (5 / 10) * (1 + 0.2 * 11 / 10) / math.sqrt(10),
        3.0 * 1.0 * (1 + 0.2 * 1.5 / 0.5) / math.sqrt(0.5),
    ]
    assert snr_weighted(loss, snrs, noise_options).tolist() == pytest.approx(expected)
    v_options = LossOptions(
        min_snr_gamma=5, v_parameterization=True, scale_v_pred_loss_like_noise_pred=True,
        debiased_estimation_loss=True,
    )  # fmt: skip
    expected = [2.0 * (5 / 11) * (10 / 11) / 11, 3.0 * (0.5 / 1.5) * (0.5 / 1.5) / 1.5]
    assert snr_weighted(loss, snrs, v_options).tolist() == pytest.approx(expected)


def test_no_weighting_by_default():
    loss = torch.tensor([2.0, 3.0])
    assert torch.equal(snr_weighted(loss, torch.tensor([10.0, 0.0]), LossOptions()), loss)
