"""`--vae`: a replacement VAE from a single file or a diffusers folder.

A file may hold LDM VAE keys (`encoder.down.0...`, as sd-vae-ft-mse-original ships them, with or without
the `first_stage_model.` prefix) or diffusers keys (`encoder.down_blocks.0...`); a folder is a diffusers
VAE (config.json + weights) or a diffusers pipeline with a `vae/` subfolder.
"""

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from loracraft.errors import UserError
from loracraft.models.checkpoint_file import read_checkpoint
from loracraft.models.config_inference import infer_config
from loracraft.models.ldm_convert import VAE_PREFIX, vae_state_dict_to_ldm
from loracraft.models.ldm_load import vae_from_ldm


def load_vae(path: str | os.PathLike, family: str) -> AutoencoderKL:
    """The VAE at `path` in fp32, eval mode, frozen, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--vae {path}: no such file or folder")
    if path.is_dir():
        return _vae_from_folder(path)
    checkpoint = read_checkpoint(path)
    ldm = _ldm_vae_keys(checkpoint.tensors, path)
    return vae_from_ldm(ldm, infer_config("vae", ldm, family, checkpoint.metadata, path), path, family)


def _ldm_vae_keys(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if any(key.startswith(VAE_PREFIX) for key in tensors):
        return {
            key.removeprefix(VAE_PREFIX): tensor
            for key, tensor in tensors.items()
            if key.startswith(VAE_PREFIX)
        }
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in tensors:
        return vae_state_dict_to_ldm(tensors)
    if "encoder.down.0.block.0.conv1.weight" in tensors:
        return tensors
    raise UserError(
        f"--vae {path}: no VAE weights in it (neither encoder.down.* nor encoder.down_blocks.* keys)"
    )


def _vae_from_folder(folder: Path) -> AutoencoderKL:
    subfolder = "vae" if (folder / "vae" / "config.json").is_file() else None
    if subfolder is None and not (folder / "config.json").is_file():
        raise UserError(f"--vae {folder}: a folder must be a diffusers VAE (config.json) or hold one in vae/")
    try:
        vae = AutoencoderKL.from_pretrained(
            folder, subfolder=subfolder, torch_dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError) as error:
        raise UserError(f"--vae {folder}: the diffusers VAE does not load ({error})") from error
    return vae.eval().requires_grad_(False)
