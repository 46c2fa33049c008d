"""diffusers -> LDM names, checked against diffusers' own LDM -> diffusers converters (the oracle)."""

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from loracraft.models.ldm_convert import to_ldm_checkpoint, unet_module_to_ldm

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


def test_round_trip_through_diffusers_converters_is_bit_identical(tiny_sd1_bundle):
    unet, vae, text_encoder = tiny_sd1_bundle.unet, tiny_sd1_bundle.vae, tiny_sd1_bundle.text_encoder
    checkpoint = to_ldm_checkpoint(unet, vae, text_encoder)

    assert_same_tensors(convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), unet.state_dict())
    assert_same_tensors(convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)), vae.state_dict())
    clip = {
        key.removeprefix("text_model."): value
        for key, value in convert_ldm_clip_checkpoint(checkpoint).items()
    }
    expected = {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}
    assert_same_tensors(clip, expected)


def test_ldm_checkpoint_has_sd1_layout(tiny_sd1_bundle):
    bundle = tiny_sd1_bundle
    checkpoint = to_ldm_checkpoint(bundle.unet, bundle.vae, bundle.text_encoder)

    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in checkpoint
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in checkpoint
    # LDM's VAE mid-block attention is 1x1 convolutions.
    assert checkpoint["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert checkpoint["first_stage_model.encoder.mid.attn_1.proj_out.weight"].shape[2:] == (1, 1)
