"""The model a training step calls: U-Net, text encoder(s) and LoRA network as one module.

The LoRA adapters are patched into the U-Net's and the text encoders' modules, so they run inside this
module's forward. It is the module given to `accelerator.prepare`: accelerate wraps its forward in the
run's precision context (autocast for fp16/bf16) and, with several processes, averages the adapters'
gradients. A step must call the prepared module, never the U-Net or a text encoder directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from loracraft.models.text_encoding import (
    encode_captions,
    encode_sdxl_captions,
    encode_weighted_captions,
)
from loracraft.networks.lora_network import LoRANetwork


def takes_size_conditioning(unet: UNet2DConditionModel) -> bool:
    """SDXL's U-Net: its add-embedding takes TE2's pooled output and the image's size and crop."""
    return unet.config.addition_embed_type == "text_time"


def size_conditioning(batch: dict) -> torch.Tensor:
    """SDXL's `time_ids` (B, 6): original size (h, w), crop top-left (top, left), target size (h, w)."""
    parts = (batch["original_sizes_hw"], batch["crop_top_lefts"], batch["target_sizes_hw"])
    return torch.cat(parts, dim=1).float()


class LoRADiffusionModel(nn.Module):
    """(noisy latents, timesteps, captions or cached text outputs[, size conditioning]) -> the U-Net's
    noise prediction.

    `text_encoders` is empty when the text-encoder outputs are cached: the step never encodes captions.
    SD1/SD2 have one encoder and tokenizer, SDXL two (kohya's TE1, TE2). `train_text_encoder` says
    whether their LoRA trains, so whether gradients flow through them.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoders: Sequence[nn.Module],
        network: LoRANetwork,
        tokenizers: Sequence[object],
        *,
        train_text_encoder: bool,
        max_token_length: int = 75,
        clip_skip: int | None = None,
        weighted_captions: bool = False,
    ):
        super().__init__()
        self.unet = unet
        self.text_encoders = nn.ModuleList(text_encoders)
        self.network = network
        self.tokenizers = list(tokenizers)
        self.train_text_encoder = train_text_encoder
        self.max_token_length = max_token_length
        self.clip_skip = clip_skip
        self.weighted_captions = weighted_captions
        self.is_sdxl = takes_size_conditioning(unet)
        self.gradient_checkpointing = False

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        captions: list[str] | None = None,
        text_states: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if text_states is None:
            # Gradients reach the text encoders only when their LoRA is trained.
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_text_encoder):
                text_states, text_pooled = self.encode_text(captions)
        if not self.is_sdxl:
            return self.unet(noisy_latents, timesteps, text_states).sample
        added = {"text_embeds": text_pooled, "time_ids": time_ids.to(noisy_latents.device)}
        return self.unet(noisy_latents, timesteps, text_states, added_cond_kwargs=added).sample

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(states, pooled): SDXL's pooled output of TE2, None for SD1/SD2."""
        if self.is_sdxl:
            return encode_sdxl_captions(
                self.tokenizers, self.text_encoders, captions, self.max_token_length, self.weighted_captions
            )
        encode = encode_weighted_captions if self.weighted_captions else encode_captions
        states = encode(
            self.tokenizers[0], self.text_encoders[0], captions, self.max_token_length, self.clip_skip
        )
        return states, None

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass: the U-Net's, and the text encoders' when trained."""
        self.unet.enable_gradient_checkpointing()
        if self.train_text_encoder:
            for text_encoder in self.text_encoders:
                _checkpoint_text_encoder(text_encoder)
        self.gradient_checkpointing = True

    def train(self, mode: bool = True) -> LoRADiffusionModel:
        """The adapters follow `mode`; the frozen base models run in eval mode, except where they
        checkpoint: transformers checkpoints a layer only in training mode, and kohya puts a
        checkpointed U-Net and trained text encoder in training mode too."""
        super().train(mode)
        self.unet.train(mode and self.gradient_checkpointing)
        for text_encoder in self.text_encoders:
            text_encoder.train(mode and self.gradient_checkpointing and self.train_text_encoder)
        return self


def _checkpoint_text_encoder(text_encoder: nn.Module) -> None:
    # Non-reentrant checkpointing: the reentrant kind (transformers 4's default) passes no gradient to
    # a layer's LoRA weights when the layer's input, the frozen embeddings' output, needs none.
    options = {"use_reentrant": False}
    if hasattr(text_encoder, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        text_encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
