"""In-memory tiny modules with SD1's topology, for tests that need modules rather than saved models.

(`conftest.tiny_sd1` saves a whole tiny model to disk for the loaders; these are for network tests.)
"""

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel


def tiny_unet() -> UNet2DConditionModel:
    """SD1's block layout (192 kohya LoRA targets) at a width a CPU runs in milliseconds."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=8,
    )


def tiny_text_encoder() -> CLIPTextModel:
    """A 2-layer CLIP text model (12 kohya LoRA targets)."""
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config)
