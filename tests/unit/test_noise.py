"""The noise a step adds, against values computed here by hand from the formulas and the seeded draws.

Each option's test draws, from the same seed, what kohya's `get_noise_noisy_latents_and_timesteps` draws in
its order (the base noise, then the offset's shift, then the multires layers), and builds the expected
noise from those draws in float64."""

import random

import pytest
import torch

from loracraft.config.loss_options import LossOptions
from loracraft.training.noise import (
    offset_noise,
    perturbed_noise,
    pyramid_noise,
    random_strength,
    sample_noise,
)

SHAPE = (2, 4, 8, 8)


class FixedUniform(random.Random):
    """A Python RNG whose `random()` always returns one value, so the multires ratio r is known."""

    def __init__(self, value: float):
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_plain_noise_is_the_seeded_gaussian():
    latents = torch.zeros(SHAPE)
    torch.manual_seed(1)
    expected = torch.randn(SHAPE)
    torch.manual_seed(1)
    assert torch.equal(sample_noise(latents, LossOptions()), expected)


def test_noise_offset_shifts_each_image_and_channel_by_offset_times_a_gaussian():
    latents = torch.zeros(SHAPE)
    torch.manual_seed(2)
    base, shift = torch.randn(SHAPE).double(), torch.randn(2, 4, 1, 1).double()
    torch.manual_seed(2)
    noise = sample_noise(latents, LossOptions(noise_offset=0.1)).double()
    torch.testing.assert_close(noise, base + 0.1 * shift, rtol=0, atol=1e-6)


def test_noise_offset_random_strength_scales_the_offset_by_one_uniform_draw():
    latents = torch.zeros(SHAPE)
    torch.manual_seed(3)
    base, strength = torch.randn(SHAPE).double(), torch.rand(1).item()
    shift = torch.randn(2, 4, 1, 1).double()
    torch.manual_seed(3)
    options = LossOptions(noise_offset=0.1, noise_offset_random_strength=True)
    noise = sample_noise(latents, options).double()
    torch.testing.assert_close(noise, base + 0.1 * strength * shift, rtol=0, atol=1e-6)


def test_adaptive_noise_scale_adds_the_channel_mean_and_clamps_at_zero():
    latents = torch.zeros(1, 4, 2, 2)
    # Channel means by hand: 1.0, -2.0, 0.5, 0.0 (one channel varies around its mean).
    latents[0, 0] = 1.0
    latents[0, 1] = -2.0
    latents[0, 2] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    noise = torch.zeros(1, 4, 2, 2)
    torch.manual_seed(4)
    shift = torch.randn(1, 4, 1, 1).double()
    torch.manual_seed(4)
    result = offset_noise(noise, latents, 0.1, adaptive_scale=-0.2).double()
    # offset + scale * |mean| = 0.1 - 0.2 * (1.0, 2.0, 0.5, 0.0), clamped at 0: 0, 0, 0, 0.1.
    expected = torch.tensor([0.0, 0.0, 0.0, 0.1], dtype=torch.float64).view(1, 4, 1, 1) * shift
    torch.testing.assert_close(result, expected.expand(1, 4, 2, 2), rtol=0, atol=1e-7)


def test_adaptive_noise_scale_grows_the_offset():
    latents = torch.full((1, 1, 2, 2), -3.0)
    torch.manual_seed(5)
    shift = torch.randn(1, 1, 1, 1).item()
    torch.manual_seed(5)
    result = offset_noise(torch.zeros(1, 1, 2, 2), latents, 0.1, adaptive_scale=0.5)
    assert result[0, 0, 0, 0].item() == pytest.approx((0.1 + 0.5 * 3.0) * shift, rel=1e-6)


def test_multires_one_iteration_adds_a_full_size_layer_and_rescales_to_unit_std():
    noise = torch.randn(SHAPE)
    torch.manual_seed(6)
    layer = torch.randn(SHAPE).double()
    torch.manual_seed(6)
    result = pyramid_noise(noise, iterations=1, discount=0.3, rng=FixedUniform(0.5)).double()
    total = noise.double() + layer  # layer 0: r^0 = 1, full size, weight discount^0 = 1
    torch.testing.assert_close(result, total / total.std(), rtol=0, atol=1e-5)
    assert result.std().item() == pytest.approx(1.0, abs=1e-6)


def test_multires_coarse_layer_stops_at_one_pixel():
    """4x4 latents, r = 3 (uniform 0.5): layer 1 is int(4/3) = 1 pixel, upsampled to a constant, and the
    loop stops there however many iterations are asked for."""
    noise = torch.randn(1, 1, 4, 4)
    torch.manual_seed(7)
    layer0, layer1 = torch.randn(1, 1, 4, 4).double(), torch.randn(1, 1, 1, 1).double()
    after = torch.randn(1)
    torch.manual_seed(7)
    result = pyramid_noise(noise, iterations=8, discount=0.3, rng=FixedUniform(0.5)).double()
    total = noise.double() + layer0 + 0.3 * layer1
    torch.testing.assert_close(result, total / total.std(), rtol=0, atol=1e-5)
    assert torch.equal(torch.randn(1), after)  # exactly two layers were drawn


def test_multires_layer_sizes_follow_r_to_the_i(monkeypatch):
    """64x64, r = 2.5 (uniform 0.25): layers of 64, int(64/2.5) = 25, int(64/6.25) = 10, 4, 1 pixels."""
    drawn: list[tuple[int, ...]] = []
    original = torch.randn

    def recording_randn(*shape, **kwargs):
        drawn.append(tuple(shape))
        return original(*shape, **kwargs)

    monkeypatch.setattr(torch, "randn", recording_randn)
    pyramid_noise(torch.zeros(1, 1, 64, 64), iterations=10, discount=0.3, rng=FixedUniform(0.25))
    assert [shape[2:] for shape in drawn] == [(64, 64), (25, 25), (10, 10), (4, 4), (1, 1)]


def test_offset_comes_before_multires_noise():
    """kohya's order: the offset is added first, so the multires rescale shrinks it too."""
    latents = torch.zeros(1, 1, 4, 4)
    options = LossOptions(noise_offset=0.1, multires_noise_iterations=1)
    random.seed(0)
    torch.manual_seed(8)
    base, shift, layer = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 1, 1), torch.randn(1, 1, 4, 4)
    total = (base.double() + 0.1 * shift.double()) + layer.double()
    torch.manual_seed(8)
    torch.testing.assert_close(
        sample_noise(latents, options).double(), total / total.std(), rtol=0, atol=1e-5
    )


def test_input_perturbation_adds_gamma_times_a_fresh_gaussian():
    noise = torch.randn(SHAPE)
    torch.manual_seed(9)
    extra = torch.randn(SHAPE).double()
    torch.manual_seed(9)
    perturbed = perturbed_noise(noise, LossOptions(ip_noise_gamma=0.1)).double()
    torch.testing.assert_close(perturbed, noise.double() + 0.1 * extra, rtol=0, atol=1e-6)
    assert perturbed_noise(noise, LossOptions()) is noise


def test_input_perturbation_random_strength():
    noise = torch.zeros(SHAPE)
    torch.manual_seed(10)
    strength, extra = torch.rand(1).item(), torch.randn(SHAPE).double()
    torch.manual_seed(10)
    options = LossOptions(ip_noise_gamma=0.2, ip_noise_gamma_random_strength=True)
    torch.testing.assert_close(
        perturbed_noise(noise, options).double(), 0.2 * strength * extra, rtol=0, atol=1e-6
    )


def test_random_strength_off_is_the_value_itself():
    assert random_strength(0.3, False, torch.device("cpu")) == 0.3
