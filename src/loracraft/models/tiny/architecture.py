"""The tiny model's shapes: SD1's block layout and module names at a few MB, and SD1.5's noise schedule.

Only widths and depths shrink; every module SD1 has exists under the same name, so every SD1 LoRA key
(``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` ...) has a target here.
"""

from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

IMAGE_SIZE = 64
# SD's VAE downsamples by 8: four encoder blocks, three of which halve the resolution.
LATENT_SIZE = IMAGE_SIZE // 8
MAX_TOKENS = 77

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": IMAGE_SIZE,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    # diffusers' SD1 configs put the number of heads in this field (SD1.5 has 8 there too).
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "hidden_act": "quick_gelu",
}

# runwayml/stable-diffusion-v1-5 scheduler_config.json. clip_sample must stay False: DDIM's default True
# clips predicted latents to [-1, 1] and washes the tiny model's images out.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# How loracraft-tiny-vpred samples: v-prediction under the schedule rescaled to zero terminal SNR, with
# trailing timesteps so that the first sampling step is the pure-noise timestep 999.
VPRED_SCHEDULER_CONFIG: dict[str, Any] = {
    **SD15_SCHEDULER_CONFIG,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


def build_vae(scaling_factor: float = 1.0) -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG, scaling_factor=scaling_factor)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder(
    vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int
) -> CLIPTextModel:
    config = CLIPTextConfig(
        **TEXT_ENCODER_CONFIG,
        vocab_size=vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return CLIPTextModel(config)
