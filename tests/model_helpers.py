"""In-memory tiny modules with SD1's topology, for tests that need modules rather than saved models.

(`conftest.tiny_sd1` saves a whole tiny model to disk for the loaders; these are for network tests.)
"""

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

SD1_TINY_UNET = {
    "sample_size": 8,
    "layers_per_block": 2,
    "block_out_channels": (32, 32, 64, 64),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}


def tiny_unet() -> UNet2DConditionModel:
    """SD1's block layout (192 kohya LoRA targets) at a width a CPU runs in milliseconds."""
    torch.manual_seed(0)
    return UNet2DConditionModel(**SD1_TINY_UNET)


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


def _clip_config(**overrides) -> CLIPTextConfig:
    values = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1000,
        "projection_dim": 32,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    return CLIPTextConfig(**{**values, **overrides})


def tiny_sd2_unet() -> UNet2DConditionModel:
    """SD2's block layout (SD1's blocks, Linear proj_in/out, heads of 64 channels scaled down to 16)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        **SD1_TINY_UNET | {"attention_head_dim": (2, 2, 4, 4), "use_linear_projection": True}
    )


def tiny_sd2_text_encoder() -> CLIPTextModel:
    """OpenCLIP ViT-H's shape in transformers naming (gelu, not quick_gelu), 2 layers."""
    torch.manual_seed(0)
    return CLIPTextModel(_clip_config(hidden_act="gelu"))


SDXL_TIME_EMBED_DIM = 8  # SDXL's is 256 per size value


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """SDXL's block layout: down (plain, cross-attention x2), depths 1/2/2 (SDXL: -/2/10), Linear proj,
    the text_time add-embedding fed by TE2's pooled output (32) and six size values (6 x 8)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        cross_attention_dim=64,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=32 + 6 * SDXL_TIME_EMBED_DIM,
    )


def tiny_sdxl_text_encoders() -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """TE1 (CLIP ViT-L's shape, quick_gelu) and TE2 (bigG's: gelu, with a bias-free projection), 2 layers
    each; their 32 + 32 hidden widths make the U-Net's 64-wide context."""
    torch.manual_seed(0)
    first = CLIPTextModel(_clip_config())
    second = CLIPTextModelWithProjection(_clip_config(hidden_act="gelu", pad_token_id=0))
    return first, second


def tiny_family_modules(family: str) -> tuple[UNet2DConditionModel, list[CLIPTextModel]]:
    """The family's tiny U-Net and text encoders (kohya's TE1, TE2 order)."""
    if family == "sdxl":
        return tiny_sdxl_unet(), list(tiny_sdxl_text_encoders())
    if family == "sd2":
        return tiny_sd2_unet(), [tiny_sd2_text_encoder()]
    return tiny_unet(), [tiny_text_encoder()]
