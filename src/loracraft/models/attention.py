"""Which attention the U-Net (and, with xformers, the VAE) runs: kohya's flags on diffusers' processors.

kohya's priority is --mem_eff_attn, then --xformers, then --sdpa; with none its U-Net runs a naive
attention. Here SDPA is the default (`--sdpa` is on), `--sdpa false` gives diffusers' classic attention
(the naive one), `--mem_eff_attn` restricts SDPA to PyTorch's memory-efficient kernel (kohya's own
chunked kernel predates it), and `--xformers` uses xformers. A choice this machine cannot run (xformers
not installed, no CUDA GPU) falls back to SDPA with one line saying so, as kohya users expect the run to
go on rather than stop.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.utils import is_xformers_available
from torch.nn.attention import SDPBackend, sdpa_kernel

Attention = Literal["sdpa", "mem_efficient", "xformers", "classic"]


def choose_attention(
    *, mem_eff_attn: bool, xformers: bool, sdpa: bool, xformers_installed: bool, cuda: bool
) -> tuple[Attention, str | None]:
    """The attention to run and, when a flag cannot be honoured here, the one line that says so."""
    if mem_eff_attn:
        if cuda:
            return "mem_efficient", None
        return "sdpa", (
            "--mem_eff_attn: PyTorch's memory-efficient attention kernel runs on CUDA GPUs only; using SDPA "
            "attention (it picks a memory-saving kernel on this device itself)"
        )
    if xformers:
        if xformers_installed and cuda:
            return "xformers", None
        reason = "xformers is not installed" if not xformers_installed else "xformers needs a CUDA GPU"
        return "sdpa", f"--xformers: {reason}; using PyTorch SDPA attention, which is as fast on PyTorch 2"
    return ("sdpa" if sdpa else "classic"), None


def attention_for(*, mem_eff_attn: bool, xformers: bool, sdpa: bool) -> tuple[Attention, str | None]:
    """`choose_attention` on this machine."""
    return choose_attention(
        mem_eff_attn=mem_eff_attn,
        xformers=xformers,
        sdpa=sdpa,
        xformers_installed=is_xformers_available(),
        cuda=torch.cuda.is_available(),
    )


class MemoryEfficientSdpaProcessor(AttnProcessor2_0):
    """diffusers' SDPA attention limited to PyTorch's memory-efficient kernel (--mem_eff_attn)."""

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            return super().__call__(*args, **kwargs)


def set_attention(unet: UNet2DConditionModel, vae: AutoencoderKL | None, attention: Attention) -> None:
    """Install `attention` in the U-Net; with xformers in the VAE too, as kohya does."""
    if attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
        if vae is not None:
            vae.enable_xformers_memory_efficient_attention()
        return
    processor = {
        "sdpa": AttnProcessor2_0,
        "mem_efficient": MemoryEfficientSdpaProcessor,
        "classic": AttnProcessor,
    }[attention]()
    unet.set_attn_processor(processor)
