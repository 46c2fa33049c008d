"""Configs inferred from LDM shapes: SD1.5's, SD2.1-base's and SDXL's own layouts give back their shipped
configs."""

import pytest
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

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
from loracraft.models.ldm_load import open_clip_state_dict
from loracraft.models.open_clip_convert import text_encoder_to_open_clip


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


def open_clip_round_trip(text_encoder, prefix: str, sd2: bool) -> dict:
    """A transformers text encoder as the family's file stores it, read back the way the loader reads it."""
    stored = text_encoder_to_open_clip(text_encoder.state_dict(), unused_last_block=sd2)
    return open_clip_state_dict({prefix + key: value for key, value in stored.items()}, prefix, sd2=sd2)


@pytest.fixture(scope="module")
def sd2_and_sdxl_shapes():
    """SD2.1-base's and SDXL base's UNets and text encoders as meta tensors, in their files' layouts."""
    with init_empty_weights():
        sd2_unet = UNet2DConditionModel(**model_kwargs(base_config("sd2", "unet")))
        sd2_text = CLIPTextModel(CLIPTextConfig(**model_kwargs(base_config("sd2", "text_encoder"))))
        xl_unet = UNet2DConditionModel(**model_kwargs(base_config("sdxl", "unet")))
        xl_text = CLIPTextModel(CLIPTextConfig(**model_kwargs(base_config("sdxl", "text_encoder"))))
        xl_text_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**model_kwargs(base_config("sdxl", "text_encoder_2")))
        )
    return {
        "sd2": {
            "unet": unet_state_dict_to_ldm(sd2_unet.state_dict(), sd2_unet.config),
            "text_encoder": open_clip_round_trip(sd2_text, "cond_stage_model.model.", sd2=True),
        },
        "sdxl": {
            "unet": unet_state_dict_to_ldm(xl_unet.state_dict(), xl_unet.config),
            "text_encoder": text_encoder_state_dict_to_ldm(xl_text.state_dict()),
            "text_encoder_2": open_clip_round_trip(xl_text_2, "conditioner.embedders.1.model.", sd2=False),
        },
    }


@pytest.mark.parametrize(
    ("family", "component"),
    [
        ("sd2", "unet"),
        ("sd2", "text_encoder"),
        ("sdxl", "unet"),
        ("sdxl", "text_encoder"),
        ("sdxl", "text_encoder_2"),
    ],
)
def test_real_sd2_and_sdxl_layouts_infer_their_shipped_configs(sd2_and_sdxl_shapes, family, component):
    ldm = sd2_and_sdxl_shapes[family][component]
    shipped = base_config(family, component)
    # Start from a deliberately wrong base: every field shapes can tell must come from the tensors.
    wrong = {
        "unet": {
            "block_out_channels": [1],
            "cross_attention_dim": 1,
            "attention_head_dim": [1],
            "transformer_layers_per_block": 7,
            "use_linear_projection": False,
            **({"addition_time_embed_dim": 1} if family == "sdxl" else {}),
        },
        "text_encoder": {"hidden_size": 1, "vocab_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1},
        "text_encoder_2": {
            "hidden_size": 1,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "projection_dim": 1,
        },
    }[component]
    infer = infer_unet_config if component == "unet" else infer_text_encoder_config
    hints = {"pooled_dim": 1280} if (family, component) == ("sdxl", "unet") else {}

    inferred = infer(ldm, {**shipped, **wrong}, **hints)

    for field, value in shipped.items():
        assert inferred[field] == value, (family, component, field)


def test_sd2_and_sdxl_heads_fall_back_to_a_divisor_of_narrow_widths(tiny_sdxl_bundle):
    unet = tiny_sdxl_bundle.unet
    inferred = infer_unet_config(
        unet_state_dict_to_ldm(unet.state_dict(), unet.config), base_config("sdxl", "unet")
    )
    # Heads of 64 channels where the width allows, else the largest divisor of the width up to 8.
    assert inferred["attention_head_dim"] == [8, 1, 1]
    # Without TE2's pooled width the size embedding keeps SDXL's value.
    assert inferred["addition_time_embed_dim"] == 256
    assert inferred["projection_class_embeddings_input_dim"] == 80


@pytest.mark.parametrize(
    ("family", "component", "parameters"),
    [
        ("sd1", "unet", 859_520_964),
        ("sd2", "unet", 865_910_724),
        ("sdxl", "unet", 2_567_463_684),
        ("sdxl", "vae", 83_653_863),
        ("sd2", "text_encoder", 340_387_840),  # OpenCLIP ViT-H's 23 used blocks
        ("sdxl", "text_encoder", 123_060_480),
        ("sdxl", "text_encoder_2", 694_659_840),
    ],
)
def test_shipped_configs_build_the_published_parameter_counts(family, component, parameters):
    config = model_kwargs(base_config(family, component))
    with init_empty_weights():
        if component == "unet":
            model = UNet2DConditionModel(**config)
        elif component == "vae":
            model = AutoencoderKL(**config)
        else:
            cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
            model = cls(CLIPTextConfig(**config))
    assert sum(p.numel() for p in model.parameters()) == parameters
