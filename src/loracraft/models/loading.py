"""`load_model_bundle`: the base model (SD1, SD2 or SDXL) from a single-file checkpoint or a diffusers
folder, local only.

Both routes give the same modules: `single_file.py` infers a file's configs from its shapes and converts
its tensors with diffusers' own LDM converters; `diffusers_folder.py` reads a folder with
`from_pretrained`. The family is detected (and other models refused) as `family.py` describes.
"""

import os
from pathlib import Path

from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle
from loracraft.models.diffusers_folder import bundle_from_folder
from loracraft.models.single_file import bundle_from_file


def load_model_bundle(
    path: str | os.PathLike,
    vae: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    tokenizer_2_path: str | os.PathLike | None = None,
) -> ModelBundle:
    """Load `path` (a .safetensors/.ckpt file or a diffusers folder); `vae` replaces its VAE."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--pretrained_model_name_or_path {path}: no such file or folder")
    vae_path = Path(vae) if vae is not None else None
    load = bundle_from_folder if path.is_dir() else bundle_from_file
    bundle = load(path, vae_path, tokenizer_path, tokenizer_2_path)
    _check_fit(bundle)
    return bundle


def _check_fit(bundle: ModelBundle) -> None:
    """Mismatches that would otherwise fail deep inside the first training step."""
    pairs = zip(
        bundle.tokenizers, bundle.text_encoders, ("--tokenizer_path", "--tokenizer_2_path"), strict=False
    )
    for tokenizer, text_encoder, flag in pairs:
        if len(tokenizer) > text_encoder.config.vocab_size:
            raise UserError(
                f"the tokenizer {tokenizer.name_or_path} has {len(tokenizer)} tokens but the text encoder "
                f"of {bundle.source} knows {text_encoder.config.vocab_size}; pass its own tokenizer with {flag}"
            )
    latent, expected = bundle.vae.config.latent_channels, bundle.unet.config.out_channels
    if latent != expected:
        raise UserError(
            f"the VAE {bundle.vae_source or bundle.source} makes {latent}-channel latents but the UNet of "
            f"{bundle.source} uses {expected}; pass a VAE made for this model with --vae"
        )
