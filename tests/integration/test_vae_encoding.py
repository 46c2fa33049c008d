"""`--latent_sampling`: what the VAE encoding of the caches and the step returns."""

import torch

from loracraft.training.vae_encoding import encode_images


def test_mean_is_the_posterior_mean_and_sample_a_random_draw(tiny_sd1_bundle):
    vae = tiny_sd1_bundle.vae
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist

    mean = encode_images(vae, pixels, vae_batch_size=2, sampling="mean")
    assert mean.dtype == torch.float32 and torch.allclose(mean, posterior.mean, atol=1e-5)
    assert torch.equal(mean, encode_images(vae, pixels, vae_batch_size=2, sampling="mean"))

    torch.manual_seed(0)
    draw = encode_images(vae, pixels, vae_batch_size=2, sampling="sample")
    assert not torch.allclose(draw, mean, atol=1e-3)
    assert not torch.equal(draw, encode_images(vae, pixels, vae_batch_size=2, sampling="sample"))
