"""kohya module names and default targets on tiny SD1-, SD2- and SDXL-topology models."""

import re

import pytest
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel

from loracraft.networks.kohya_names import (
    sdxl_unet_lora_name,
    text_encoder_lora_name,
    text_encoder_prefixes,
    unet_lora_name,
)
from loracraft.networks.targets import text_encoder_targets, unet_targets
from model_helpers import (
    tiny_sd2_text_encoder,
    tiny_sd2_unet,
    tiny_sdxl_text_encoders,
    tiny_sdxl_unet,
    tiny_text_encoder,
    tiny_unet,
)

TE_NAME = re.compile(r"^lora_te_text_model_encoder_layers_(\d+)_(self_attn_(q|k|v|out)_proj|mlp_fc[12])$")


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def text_encoder():
    return tiny_text_encoder()


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("down_blocks.0.attentions.0.proj_in", "lora_unet_down_blocks_0_attentions_0_proj_in"),
        (
            "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0",
            "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0",
        ),
        (
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        ),
    ],
)
def test_unet_lora_name(path: str, name: str) -> None:
    assert unet_lora_name(path) == name


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        ),
        ("down_blocks.2.attentions.1.proj_out", "lora_unet_input_blocks_8_1_proj_out"),
        (
            "mid_block.attentions.0.transformer_blocks.9.ff.net.2",
            "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        ),
        (
            "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_out.0",
            "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_out_0",
        ),
    ],
)
def test_sdxl_unet_lora_name_is_the_ldm_path(path: str, name: str) -> None:
    assert sdxl_unet_lora_name(path, tiny_sdxl_unet().config) == name


def test_text_encoder_prefixes() -> None:
    assert text_encoder_prefixes("sd1") == text_encoder_prefixes("sd2") == ("lora_te",)
    assert text_encoder_prefixes("sdxl") == ("lora_te1", "lora_te2")
    with pytest.raises(ValueError, match="unknown model family"):
        text_encoder_prefixes("sd3")


def test_text_encoder_lora_name_template() -> None:
    assert text_encoder_lora_name(11, "mlp", "fc2") == "lora_te_text_model_encoder_layers_11_mlp_fc2"
    assert (
        text_encoder_lora_name(0, "self_attn", "q_proj", prefix="lora_te1")
        == "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    )


def transformer_leaves(depth: int) -> list[str]:
    """The targets inside one Transformer2DModel with `depth` transformer blocks."""
    leaves = ["proj_in", "proj_out"]
    for index in range(depth):
        block = f"transformer_blocks_{index}_"
        leaves += [f"{block}ff_net_0_proj", f"{block}ff_net_2"]
        leaves += [
            f"{block}{attn}_{p}" for attn in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out_0")
        ]
    return leaves


def sd1_unet_names() -> set[str]:
    """kohya's SD1 U-Net names, spelled out from the SD1 block layout (16 Transformer2DModels)."""
    attentions = [f"down_blocks_{b}_attentions_{a}" for b in range(3) for a in range(2)]
    attentions += ["mid_block_attentions_0"]
    attentions += [f"up_blocks_{b}_attentions_{a}" for b in (1, 2, 3) for a in range(3)]
    return {f"lora_unet_{a}_{leaf}" for a in attentions for leaf in transformer_leaves(1)}


def tiny_sdxl_unet_names() -> set[str]:
    """kohya's LDM names for the tiny SDXL layout: attention in input blocks 4, 5, 7, 8, the middle block
    and output blocks 0-5, two transformer blocks each (SDXL: 2 and 10)."""
    attentions = [f"input_blocks_{n}_1" for n in (4, 5, 7, 8)] + ["middle_block_1"]
    attentions += [f"output_blocks_{n}_1" for n in range(6)]
    return {f"lora_unet_{a}_{leaf}" for a in attentions for leaf in transformer_leaves(2)}


def test_unet_targets_are_kohya_sd1_names(unet: UNet2DConditionModel) -> None:
    # Same block topology as SD1.5 with one transformer per attention: the names must be kohya's exactly.
    targets = unet_targets(unet, "sd1")
    assert len(targets) == 192
    assert {t.name for t in targets} == sd1_unet_names()
    assert all(t.name == unet_lora_name(t.path) for t in targets)
    assert all(unet.get_submodule(t.path) is t.module for t in targets)
    convs = {t.path.rsplit(".", 1)[-1] for t in targets if isinstance(t.module, nn.Conv2d)}
    assert convs == {"proj_in", "proj_out"}


def test_text_encoder_targets_follow_template(text_encoder: CLIPTextModel) -> None:
    targets = text_encoder_targets(text_encoder)
    assert len(targets) == 2 * 6
    assert all(TE_NAME.match(t.name) for t in targets)
    assert all(isinstance(t.module, nn.Linear) for t in targets)
    assert all(text_encoder.get_submodule(t.path) is t.module for t in targets)


def test_text_encoder_names_do_not_depend_on_text_model_nesting(text_encoder: CLIPTextModel) -> None:
    # transformers 4.x nests the encoder under `text_model.`, 5.x does not: the file names must not change.
    flat = getattr(text_encoder, "text_model", text_encoder)  # 4.x: the nested part; 5.x: the model
    nested = nn.Module()
    nested.text_model = flat
    flat_targets = text_encoder_targets(flat)
    nested_targets = text_encoder_targets(nested)
    assert [t.name for t in nested_targets] == [t.name for t in flat_targets]
    assert nested_targets[0].path.startswith("text_model.encoder.layers.0.")


def test_sd2_names_are_sd1_names() -> None:
    """SD2 keeps SD1's diffusers-style names; only proj_in/proj_out become Linear."""
    unet = tiny_sd2_unet()
    targets = unet_targets(unet, "sd2")
    assert {t.name for t in targets} == sd1_unet_names()
    assert all(isinstance(t.module, nn.Linear) for t in targets)
    te_targets = text_encoder_targets(tiny_sd2_text_encoder(), *text_encoder_prefixes("sd2"))
    assert len(te_targets) == 12 and all(TE_NAME.match(t.name) for t in te_targets)


def test_sdxl_unet_names_are_kohya_ldm_names() -> None:
    unet = tiny_sdxl_unet()
    targets = unet_targets(unet, "sdxl")
    assert {t.name for t in targets} == tiny_sdxl_unet_names()
    assert len(targets) == len(tiny_sdxl_unet_names()) == 11 * 22
    assert all(unet.get_submodule(t.path) is t.module for t in targets)


def test_sdxl_text_encoders_are_te1_and_te2() -> None:
    first, second = tiny_sdxl_text_encoders()
    te1 = text_encoder_targets(first, "lora_te1")
    te2 = text_encoder_targets(second, "lora_te2")
    assert [t.name.replace("lora_te1_", "lora_te_") for t in te1] == [
        t.name for t in text_encoder_targets(first)
    ]
    assert [t.name.replace("lora_te2_", "lora_te_") for t in te2] == [
        t.name for t in text_encoder_targets(second)
    ]
    assert len(te1) == len(te2) == 12
    # CLIPTextModelWithProjection keeps `text_model.` in transformers 5; its projection is no target
    assert all(t.path.startswith("text_model.encoder.layers.") for t in te2)
    assert not any("projection" in t.name for t in te2)
