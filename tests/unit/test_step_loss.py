"""Pieces of the training step that are plain math."""

import torch

from loracraft.training.step import masked_mean, training_target


def test_target_is_the_added_noise():
    noise = torch.randn(2, 4, 8, 8)
    assert torch.equal(training_target(noise), noise)


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
