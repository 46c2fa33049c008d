"""diffusers -> LDM names, checked against diffusers' own LDM -> diffusers converters (the oracle)."""

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)

from loracraft.models.ldm_convert import (
    SD2_TEXT_ENCODER_PREFIX,
    SDXL_TEXT_ENCODER_2_PREFIX,
    to_ldm_checkpoint,
    unet_module_to_ldm,
)

SD1_UNET = {
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
SDXL_UNET = {
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


def assert_same_tensors(converted: dict, original: dict) -> None:
    assert sorted(converted) == sorted(original)  # 0 missing, 0 extra
    for key, tensor in original.items():
        assert converted[key].shape == tensor.shape, key
        assert torch.equal(converted[key], tensor), key


@pytest.mark.parametrize(
    ("config", "diffusers_path", "ldm_path"),
    [
        (
            SD1_UNET,
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        ),
        (SD1_UNET, "up_blocks.0.resnets.2.conv1", "output_blocks.2.0.in_layers.2"),
        (SD1_UNET, "up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
        (SD1_UNET, "up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
        (SD1_UNET, "down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
        (SD1_UNET, "down_blocks.3.resnets.1.conv_shortcut", "input_blocks.11.0.skip_connection"),
        (SD1_UNET, "down_blocks.1.resnets.0.time_emb_proj", "input_blocks.4.0.emb_layers.1"),
        (SD1_UNET, "mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
        (SD1_UNET, "mid_block.resnets.1.norm2", "middle_block.2.out_layers.0"),
        (
            SD1_UNET,
            "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj",
            "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj",
        ),
        (SD1_UNET, "time_embedding.linear_2", "time_embed.2"),
        (SD1_UNET, "conv_out.weight", "out.2.weight"),
        (SD1_UNET, "down_blocks.2.attentions.1", "input_blocks.8.1"),
        (SDXL_UNET, "up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
        (
            SDXL_UNET,
            "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
            "input_blocks.4.1.transformer_blocks.1.attn2.to_k",
        ),
        (SDXL_UNET, "add_embedding.linear_1", "label_emb.0.0"),
        (SDXL_UNET, "up_blocks.2.resnets.2.conv2", "output_blocks.8.0.out_layers.3"),
    ],
)
def test_unet_module_to_ldm_examples(config, diffusers_path, ldm_path):
    assert unet_module_to_ldm(diffusers_path, config) == ldm_path


def test_unet_module_to_ldm_rejects_unknown_paths():
    with pytest.raises(ValueError, match="no LDM name"):
        unet_module_to_ldm("down_blocks.0.resnets.0.nonsense", SD1_UNET)


def bare(state_dict: dict) -> dict:
    """transformers 5 drops CLIPTextModel's `text_model.` level; compare without it."""
    return {key.removeprefix("text_model."): value for key, value in state_dict.items()}


def checkpoint_of(bundle) -> dict:
    return to_ldm_checkpoint(
        bundle.unet, bundle.vae, bundle.text_encoder, bundle.text_encoder_2, family=bundle.family
    )


@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def bundle(request):
    return request.getfixturevalue(f"tiny_{request.param}_bundle")


def test_unet_and_vae_round_trip_through_diffusers_converters_bit_identically(bundle):
    checkpoint = checkpoint_of(bundle)

    unet, vae = bundle.unet, bundle.vae
    assert_same_tensors(convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), unet.state_dict())
    assert_same_tensors(convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)), vae.state_dict())


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_clip_text_encoder_round_trips_bit_identically(family, request):
    bundle = request.getfixturevalue(f"tiny_{family}_bundle")
    clip = convert_ldm_clip_checkpoint(checkpoint_of(bundle))
    assert_same_tensors(bare(clip), bare(bundle.text_encoder.state_dict()))


def test_sd2_open_clip_text_encoder_round_trips_bit_identically(tiny_sd2_bundle):
    text_encoder = tiny_sd2_bundle.text_encoder
    checkpoint = checkpoint_of(tiny_sd2_bundle)
    # SD2's file holds one block more than SD2 uses; diffusers skips real SD2's by name (resblocks.23),
    # the tiny model's 3rd (resblocks.2) is left out the same way.
    unused = f"{SD2_TEXT_ENCODER_PREFIX}transformer.resblocks.2."
    assert any(key.startswith(unused) for key in checkpoint)
    used = {key: value for key, value in checkpoint.items() if not key.startswith(unused)}

    converted = convert_open_clip_checkpoint(text_encoder, used, prefix=SD2_TEXT_ENCODER_PREFIX)

    assert_same_tensors(bare(converted), bare(text_encoder.state_dict()))


def test_sdxl_open_clip_text_encoder_2_round_trips_bit_identically(tiny_sdxl_bundle):
    text_encoder_2 = tiny_sdxl_bundle.text_encoder_2
    checkpoint = checkpoint_of(tiny_sdxl_bundle)

    converted = convert_open_clip_checkpoint(text_encoder_2, checkpoint, prefix=SDXL_TEXT_ENCODER_2_PREFIX)

    assert_same_tensors(bare(converted), bare(text_encoder_2.state_dict()))
    # OpenCLIP applies its projection as x @ P: the file holds the Linear's weight transposed.
    projection = checkpoint[f"{SDXL_TEXT_ENCODER_2_PREFIX}text_projection"]
    assert torch.equal(projection, text_encoder_2.text_projection.weight.T)


def test_ldm_checkpoint_has_sd1_layout(tiny_sd1_bundle):
    checkpoint = checkpoint_of(tiny_sd1_bundle)

    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in checkpoint
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in checkpoint
    # LDM's VAE mid-block attention is 1x1 convolutions.
    assert checkpoint["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert checkpoint["first_stage_model.encoder.mid.attn_1.proj_out.weight"].shape[2:] == (1, 1)


def test_ldm_checkpoint_has_sd2_layout(tiny_sd2_bundle):
    checkpoint = checkpoint_of(tiny_sd2_bundle)
    open_clip = "cond_stage_model.model."

    assert not any(key.startswith("cond_stage_model.transformer.") for key in checkpoint)
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"):
        assert f"{open_clip}{key}" in checkpoint, key
    # q, k and v stacked in one MultiheadAttention in_proj; 2 used blocks and the unused last one.
    assert checkpoint[f"{open_clip}transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert {key.split(".")[4] for key in checkpoint if ".resblocks." in key} == {"0", "1", "2"}
    assert checkpoint["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2


def test_ldm_checkpoint_has_sdxl_layout(tiny_sdxl_bundle):
    checkpoint = checkpoint_of(tiny_sdxl_bundle)

    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in checkpoint
    assert "conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_proj.weight" in checkpoint
    assert "model.diffusion_model.label_emb.0.0.weight" in checkpoint
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in checkpoint
    assert not any(key.startswith("cond_stage_model.") for key in checkpoint)


def test_to_ldm_checkpoint_needs_both_sdxl_text_encoders(tiny_sdxl_bundle):
    bundle = tiny_sdxl_bundle
    with pytest.raises(ValueError, match="no single-file layout for family 'sdxl'"):
        to_ldm_checkpoint(bundle.unet, bundle.vae, bundle.text_encoder, family="sdxl")
