"""Every module of our LoRA files finds the module it was trained on in A1111, ComfyUI and Forge
(reference/lora-format.md §7 T5).

Neither program runs here; tests/consumer_oracles re-implements their key matching from their source
(§3.1-§3.3), and test_consumer_oracles.py checks the oracles themselves on hand-made files of every
algorithm. Here the files are the real network's.
"""

import re

import pytest
from torch import nn

from consumer_oracles import CONSUMERS, BaseModel, base_model, resolve
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from lycoris_files import diagnosis
from model_helpers import tiny_family_modules

FAMILIES = ("sd1", "sd2", "sdxl")


def network_and_base(family: str) -> tuple[LoRANetwork, BaseModel, tuple[nn.Module, ...]]:
    """Our network on the tiny model, and the model as the consumers see it. The models are returned
    too: the base model names their modules by identity, so they must stay alive."""
    unet, text_encoders = tiny_family_modules(family)
    network = build_lora_network(unet, text_encoders, family, rank=2, alpha=1.0)
    return network, base_model(family, unet, text_encoders), (unet, *text_encoders)


def trained_on(network: LoRANetwork, base: BaseModel) -> dict[str, str]:
    """{network module name: the base module its adapter wraps}."""
    return {name: base.name_of(network.adapter(name).org_module[0]) for name in network.names}


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_module_lands_on_its_own_target(family: str, consumer: str) -> None:
    network, base, _models = network_and_base(family)
    state_dict = network.kohya_state_dict()
    resolution = resolve(consumer, state_dict, base)
    assert resolution.fully_applied, diagnosis(resolution)
    targets = trained_on(network, base)
    assert {key: resolution.module_of(key) for key in state_dict} == {
        key: targets[key.split(".")[0]] for key in state_dict
    }
    assert {resolution.algorithm_of(module) for module in targets.values()} == {"lora"}


@pytest.mark.parametrize("family", FAMILIES)
def test_a1111_open_clip_attention_gets_all_four_projections(family: str) -> None:
    """A1111 applies an open_clip attention LoRA only when q, k, v and out_proj are all in the file."""
    network, _, _models = network_and_base(family)
    open_clip_prefixes = {"sd1": (), "sd2": ("lora_te_",), "sdxl": ("lora_te2_",)}[family]
    attention = re.compile(r"(.+_self_attn)_(q|k|v|out)_proj$")
    found: dict[str, set[str]] = {}
    for name in network.text_encoder_names:
        if name.startswith(open_clip_prefixes) and (match := attention.match(name)):
            found.setdefault(match[1], set()).add(match[2])
    assert bool(found) == bool(open_clip_prefixes)
    assert all(parts == {"q", "k", "v", "out"} for parts in found.values())


@pytest.mark.parametrize(("family", "prefix", "layer"), [("sd2", "lora_te", ""), ("sdxl", "lora_te2", "1_")])
def test_a1111_patches_open_clip_q_k_v_as_rows_of_one_attention(family: str, prefix: str, layer: str) -> None:
    network, base, _models = network_and_base(family)
    resolution = resolve("a1111", network.kohya_state_dict(), base)
    layers = {
        part: resolution.by_module[
            resolution.module_of(f"{prefix}_text_model_encoder_layers_1_self_attn_{part}_proj.lora_up.weight")
        ].consumer_name
        for part in ("q", "k", "v", "out")
    }
    attention = f"{layer}model_transformer_resblocks_1_attn"
    assert layers == {"q": attention, "k": attention, "v": attention, "out": f"{attention}_out_proj"}


@pytest.mark.parametrize("family", FAMILIES)
def test_oracles_refuse_names_kohya_would_not_write(family: str) -> None:
    """Controls: text-encoder names from transformers 5's module paths (no `text_model_`) are found by
    none of the programs, and SDXL text-encoder names without TE1's `lora_te1_` are lost in A1111; so the
    clean results above mean something."""
    network, base, _models = network_and_base(family)
    state_dict = network.kohya_state_dict()
    pathless = {
        key.replace("_text_model_", "_"): t for key, t in state_dict.items() if key.startswith("lora_te")
    }
    for consumer in CONSUMERS:
        assert sorted(resolve(consumer, pathless, base).unresolved) == sorted(pathless)
    if family == "sdxl":
        te1 = {
            key.replace("lora_te1_", "lora_te_"): t
            for key, t in state_dict.items()
            if key.startswith("lora_te1_")
        }
        assert sorted(resolve("a1111", te1, base).unresolved) == sorted(te1)
        assert resolve("comfyui", te1, base).fully_applied
