"""Our LoRA names are kohya's: full-size SD1.5, SD2 and SDXL models (built on the meta device, no
weights, from the shipped configs) get exactly the names kohya-ss sd-scripts' networks/lora.py creates for them, as listed in
tests/data/kohya_names/ by scripts/kohya_lora_names.py from kohya's own code; the tiny test topologies
get a subset of those names."""

import json
from pathlib import Path

import pytest
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from loracraft.models.config_inference import base_config, model_kwargs
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from model_helpers import tiny_family_modules

KOHYA_NAMES = Path(__file__).parents[1] / "data" / "kohya_names"


def kohya(family: str) -> dict:
    return json.loads((KOHYA_NAMES / f"{family}.json").read_text(encoding="utf-8"))


def full_size_network(family: str) -> LoRANetwork:
    """The network on the real model's shipped configs (SD1.5, SD2.1, SDXL base 1.0)."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**model_kwargs(base_config(family, "unet")))
        text_encoders = [CLIPTextModel(CLIPTextConfig(**model_kwargs(base_config(family, "text_encoder"))))]
        if family == "sdxl":
            config = CLIPTextConfig(**model_kwargs(base_config(family, "text_encoder_2")))
            text_encoders.append(CLIPTextModelWithProjection(config))
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


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_names_are_a_subset(family: str) -> None:
    unet, text_encoders = tiny_family_modules(family)
    network = build_lora_network(unet, text_encoders, family, rank=1, alpha=1.0)
    expected = kohya(family)
    assert set(network.unet_names) <= set(expected["unet"])
    for names, kohya_names in zip(network.per_text_encoder_names, expected["text_encoders"], strict=True):
        assert names and set(names) <= set(kohya_names)
