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


def test_seeded_draws_do_not_depend_on_the_batch_or_the_global_generator(tiny_sd1_bundle):
    vae = tiny_sd1_bundle.vae
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    seeds = [11, 12, 13]

    torch.manual_seed(0)
    together = encode_images(vae, pixels, vae_batch_size=3, sampling="sample", noise_seeds=seeds)
    torch.manual_seed(1)
    last_alone = encode_images(vae, pixels[2:], vae_batch_size=1, sampling="sample", noise_seeds=seeds[2:])

    assert torch.allclose(together[2:], last_alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-3)
    # A draw from the posterior: the mean plus its spread times unit noise drawn from the image's seed.
    noise = torch.randn(posterior.mean.shape[1:], generator=torch.Generator().manual_seed(12))
    assert torch.allclose(together[1], posterior.mean[1] + posterior.std[1] * noise, atol=1e-5)
