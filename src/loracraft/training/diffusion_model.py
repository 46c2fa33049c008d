"""The model a training step calls: U-Net, text encoder and LoRA network as one module.

The LoRA adapters are patched into the U-Net's and the text encoder's modules, so they run inside this
module's forward. It is the module given to `accelerator.prepare`: accelerate wraps its forward in the
run's precision context (autocast for fp16/bf16) and, with several processes, averages the adapters'
gradients. A step must call the prepared module, never the U-Net or the text encoder directly.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel

from loracraft.models.text_encoding import encode_captions, encode_weighted_captions
from loracraft.networks.lora_network import LoRANetwork


class LoRADiffusionModel(nn.Module):
    """(noisy latents, timesteps, captions or cached text states) -> the U-Net's noise prediction.

    `text_encoder` is None when the text-encoder outputs are cached: the step never encodes captions.
    `train_text_encoder` says whether its LoRA trains, so whether gradients flow through it.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel | None,
        network: LoRANetwork,
        tokenizer: object,
        *,
        train_text_encoder: bool,
        max_token_length: int = 75,
        clip_skip: int | None = None,
        weighted_captions: bool = False,
    ):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.network = network
        self.tokenizer = tokenizer
        self.train_text_encoder = train_text_encoder
        self.max_token_length = max_token_length
        self.clip_skip = clip_skip
        self.weighted_captions = weighted_captions
        self.gradient_checkpointing = False

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        captions: list[str] | None = None,
        text_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if text_states is None:
            # Gradients reach the text encoder only when its LoRA is trained.
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_text_encoder):
                text_states = self.encode_text(captions)
        return self.unet(noisy_latents, timesteps, text_states).sample

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        encode = encode_weighted_captions if self.weighted_captions else encode_captions
        return encode(self.tokenizer, self.text_encoder, captions, self.max_token_length, self.clip_skip)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass: the U-Net's, and the text encoder's when trained."""
        self.unet.enable_gradient_checkpointing()
        if self.text_encoder is not None and self.train_text_encoder:
            _checkpoint_text_encoder(self.text_encoder)
        self.gradient_checkpointing = True

    def train(self, mode: bool = True) -> LoRADiffusionModel:
        """The adapters follow `mode`; the frozen base models run in eval mode, except where they
        checkpoint: transformers checkpoints a layer only in training mode, and kohya puts a
        checkpointed U-Net and trained text encoder in training mode too."""
        super().train(mode)
        self.unet.train(mode and self.gradient_checkpointing)
        if self.text_encoder is not None:
            self.text_encoder.train(mode and self.gradient_checkpointing and self.train_text_encoder)
        return self


def _checkpoint_text_encoder(text_encoder: CLIPTextModel) -> None:
    # Non-reentrant checkpointing: the reentrant kind (transformers 4's default) passes no gradient to
    # a layer's LoRA weights when the layer's input, the frozen embeddings' output, needs none.
    options = {"use_reentrant": False}
    if hasattr(text_encoder, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        text_encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
