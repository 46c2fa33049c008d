"""Our LoRA names are kohya's: full-size SD1.5, SD2 and SDXL models (built on the meta device, no
weights) get exactly the names kohya-ss sd-scripts' networks/lora.py creates for them, as listed in
tests/data/kohya_names/ by scripts/kohya_lora_names.py from kohya's own code; the tiny test topologies
get a subset of those names."""

import json
from functools import cache
from pathlib import Path

import pytest
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from model_helpers import (
    tiny_sd2_text_encoder,
    tiny_sd2_unet,
    tiny_sdxl_text_encoders,
    tiny_sdxl_unet,
    tiny_text_encoder,
    tiny_unet,
)

KOHYA_NAMES = Path(__file__).parents[1] / "data" / "kohya_names"

# The parts of the real diffusers configs (SD1.5, SD2.1, SDXL base 1.0) that shape the module tree.
SD1_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD2_UNET = SD1_UNET | dict(
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True
)
SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
OPEN_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16)
OPEN_CLIP_BIG_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
)


@cache
def kohya(family: str) -> dict:
    return json.loads((KOHYA_NAMES / f"{family}.json").read_text(encoding="utf-8"))


def full_size_network(family: str) -> LoRANetwork:
    with init_empty_weights():
        if family == "sdxl":
            unet = UNet2DConditionModel(**SDXL_UNET)
            text_encoders = [
                CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                CLIPTextModelWithProjection(CLIPTextConfig(**OPEN_CLIP_BIG_G)),
            ]
        else:
            unet = UNet2DConditionModel(**(SD2_UNET if family == "sd2" else SD1_UNET))
            text_encoders = [CLIPTextModel(CLIPTextConfig(**(OPEN_CLIP_H if family == "sd2" else CLIP_L)))]
        return build_lora_network(unet, text_encoders, family, rank=1, alpha=1.0)


@pytest.mark.parametrize(
    ("family", "counts"),
    [("sd1", (192, 72)), ("sd2", (192, 138)), ("sdxl", (722, 72, 192))],
)
def test_kohya_lists_are_complete(family: str, counts: tuple[int, ...]) -> None:
    """The recorded lists hold what kohya makes for the real models, without repeats."""
    names = kohya(family)
    lists = [names["unet"], *names["text_encoders"]]
    assert tuple(len(names) for names in lists) == counts
    assert all(len(set(names)) == len(names) for names in lists)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_names_are_kohya_names(family: str) -> None:
    network = full_size_network(family)
    expected = kohya(family)
    assert sorted(network.unet_names) == sorted(expected["unet"])
    assert [sorted(names) for names in network.per_text_encoder_names] == [
        sorted(names) for names in expected["text_encoders"]
    ]


@pytest.mark.parametrize(
    ("family", "build"),
    [
        ("sd1", lambda: (tiny_unet(), [tiny_text_encoder()])),
        ("sd2", lambda: (tiny_sd2_unet(), [tiny_sd2_text_encoder()])),
        ("sdxl", lambda: (tiny_sdxl_unet(), list(tiny_sdxl_text_encoders()))),
    ],
)
def test_tiny_names_are_a_subset(family: str, build) -> None:
    unet, text_encoders = build()
    network = build_lora_network(unet, text_encoders, family, rank=1, alpha=1.0)
    expected = kohya(family)
    assert set(network.unet_names) <= set(expected["unet"])
    for names, kohya_names in zip(network.per_text_encoder_names, expected["text_encoders"], strict=True):
        assert names and set(names) <= set(kohya_names)
