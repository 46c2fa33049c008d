"""ldm_keys: every module a kohya LoRA can name, found in the single file of the tiny SD1, SD2 and SDXL
models. The single file is the original layout (written by to_ldm_checkpoint, which diffusers' own
converters read back bit for bit: test_ldm_convert.py); the oracle is the same model loaded from its
diffusers folder: the tensor found for each name must be that module's weight and bias, exactly."""

import pytest
import torch
from torch import nn

from loracraft.models.checkpoint_file import read_checkpoint
from loracraft.models.ldm_keys import LdmWeight, ldm_weights, module_key_name
from loracraft.networks.kohya_names import unet_namer
from loracraft.networks.merge_into_base import base_modules

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(params=FAMILIES, scope="module")
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny(family, request):
    """(bundle from the diffusers folder, the single file's tensors)."""
    model = request.getfixturevalue(f"tiny_{family}")
    bundle = request.getfixturevalue(f"tiny_{family}_bundle")
    return bundle, read_checkpoint(model.single_file).tensors


def every_module(bundle) -> dict[str, nn.Module]:
    """kohya's targets (Linear/Conv2d of the U-Net, CLIP-layer Linear) and the U-Net's affine norms."""
    namer = unet_namer(bundle.family, bundle.unet.config)
    norms = {
        namer(path): module
        for path, module in bundle.unet.named_modules()
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None
    }
    return base_modules(bundle.unet, bundle.text_encoders, bundle.family) | norms


def test_every_module_is_found_with_its_own_weight_and_bias(tiny) -> None:
    bundle, tensors = tiny
    modules = every_module(bundle)
    weights = ldm_weights(tensors.keys(), bundle.unet.config, bundle.family)
    assert set(weights) == set(modules)
    for name, module in modules.items():
        where = weights[name]
        assert torch.equal(where.rows(tensors[where.key]), module.weight), name
        if module.bias is not None:
            assert torch.equal(where.rows(tensors[where.bias_key]), module.bias), name


@pytest.mark.parametrize(
    ("family", "name", "expected"),
    [
        (
            "sd1",
            "lora_unet_down_blocks_0_attentions_0_proj_in",
            LdmWeight("model.diffusion_model.input_blocks.1.1.proj_in.weight"),
        ),
        (
            "sd1",
            "lora_te_text_model_encoder_layers_1_mlp_fc2",
            LdmWeight("cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"),
        ),
        (
            "sd2",
            "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
            LdmWeight("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", 1),
        ),
        (
            "sd2",
            "lora_te_text_model_encoder_layers_1_self_attn_out_proj",
            LdmWeight("cond_stage_model.model.transformer.resblocks.1.attn.out_proj.weight"),
        ),
        (
            "sdxl",
            "lora_te2_text_model_encoder_layers_1_self_attn_v_proj",
            LdmWeight("conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight", 2),
        ),
        (
            "sdxl",
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            LdmWeight("conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"),
        ),
        (
            "sdxl",
            "lora_unet_output_blocks_2_2_conv",
            LdmWeight("model.diffusion_model.output_blocks.2.2.conv.weight"),
        ),
        (
            "sdxl",
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
            LdmWeight("model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"),
        ),
    ],
    indirect=["family"],
)
def test_literal_examples(tiny, name: str, expected: LdmWeight) -> None:
    bundle, tensors = tiny
    assert ldm_weights(tensors.keys(), bundle.unet.config, bundle.family)[name] == expected


def test_sd2_unused_last_block_is_no_module(tiny_sd2, tiny_sd2_bundle) -> None:
    tensors = read_checkpoint(tiny_sd2.single_file).tensors
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in tensors
    weights = ldm_weights(tensors.keys(), tiny_sd2_bundle.unet.config, "sd2")
    assert not any("resblocks.2." in where.key for where in weights.values())


def test_open_clip_bias_of_a_query_is_its_third_of_in_proj_bias() -> None:
    where = LdmWeight("p.transformer.resblocks.0.attn.in_proj_weight", 0)
    assert where.bias_key == "p.transformer.resblocks.0.attn.in_proj_bias"
    assert torch.equal(where.rows(torch.arange(6)), torch.tensor([0, 1]))


def test_kohya_oft_names_are_the_lora_names() -> None:
    assert (
        module_key_name("oft_unet_mid_block_attentions_0_proj_in")
        == "lora_unet_mid_block_attentions_0_proj_in"
    )
    assert module_key_name("lora_te_text_model_encoder_layers_0_mlp_fc1") == (
        "lora_te_text_model_encoder_layers_0_mlp_fc1"
    )
