"""Configs inferred from LDM shapes: SD1.5's own layout gives back SD1.5's configs."""

import pytest
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from loracraft.models.config_inference import (
    base_config,
    infer_text_encoder_config,
    infer_unet_config,
    infer_vae_config,
    model_kwargs,
)
from loracraft.models.config_metadata import config_metadata, overrides_from_metadata
from loracraft.models.ldm_convert import (
    text_encoder_state_dict_to_ldm,
    unet_state_dict_to_ldm,
    vae_state_dict_to_ldm,
)


@pytest.fixture(scope="module")
def sd15_shapes():
    """SD1.5's UNet, VAE and CLIP as meta tensors: real shapes, no memory, no download."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**model_kwargs(base_config("sd1", "unet")))
        vae = AutoencoderKL(**model_kwargs(base_config("sd1", "vae")))
        text_encoder = CLIPTextModel(CLIPTextConfig(**model_kwargs(base_config("sd1", "text_encoder"))))
    return (
        unet_state_dict_to_ldm(unet.state_dict(), unet.config),
        vae_state_dict_to_ldm(vae.state_dict()),
        text_encoder_state_dict_to_ldm(text_encoder.state_dict()),
    )


def test_sd15_layout_infers_sd15_configs(sd15_shapes):
    unet_ldm, vae_ldm, text_ldm = sd15_shapes
    # Infer from a deliberately wrong base so every shape field must come from the tensors.
    wrong = {"block_out_channels": [1], "layers_per_block": 9, "cross_attention_dim": 1, "in_channels": 1}
    unet = infer_unet_config(unet_ldm, {**base_config("sd1", "unet"), **wrong})
    vae = infer_vae_config(vae_ldm, {**base_config("sd1", "vae"), **wrong, "latent_channels": 1})
    text = infer_text_encoder_config(
        text_ldm, {**base_config("sd1", "text_encoder"), "hidden_size": 1, "vocab_size": 1}
    )

    for inferred, component in ((unet, "unet"), (vae, "vae"), (text, "text_encoder")):
        for field, value in base_config("sd1", component).items():
            assert inferred[field] == value, (component, field)
    assert unet["transformer_layers_per_block"] == 1
    assert unet["use_linear_projection"] is False


def test_rule_for_head_and_group_counts_fits_any_width(tiny_sd1_bundle):
    unet = tiny_sd1_bundle.unet
    ldm = unet_state_dict_to_ldm(unet.state_dict(), unet.config)
    odd = {**base_config("sd1", "unet"), "attention_head_dim": 12, "norm_num_groups": 24}

    inferred = infer_unet_config(ldm, odd)

    assert inferred["attention_head_dim"] == 4  # largest divisor of 12 that divides widths 32 and 64
    assert inferred["norm_num_groups"] == 8


def test_metadata_round_trip_carries_what_shapes_cannot():
    configs = {
        "unet": {"attention_head_dim": [5, 10, 20, 20], "norm_num_groups": 8, "sample_size": 8},
        "vae": {"scaling_factor": 0.5, "norm_num_groups": 8},
        "text_encoder": {"num_attention_heads": 4, "hidden_act": "gelu"},
    }
    metadata = config_metadata(configs)

    assert all(isinstance(value, str) for value in metadata.values())
    assert metadata["loracraft.vae_scaling_factor"] == "0.5"
    for component, fields in configs.items():
        assert overrides_from_metadata(metadata, component) == fields
