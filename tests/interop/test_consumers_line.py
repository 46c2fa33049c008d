"""The line a run starts with, naming the programs that apply its file as trained, agrees with the
key-resolution oracles for A1111, ComfyUI and Forge on every network type and family; where the oracles
do not model a limit (shapes, math), the numeric consumer tests (test_consumer_numeric.py) are the
reference and the case is listed here with why."""

import pytest
import torch

from consumer_oracles import base_model, resolve
from loracraft.config.load import build_config
from loracraft.networks.algorithms import adapter_kind
from loracraft.networks.consumers import consumer_verdicts, consumers_line
from loracraft.networks.kohya_oft import build_kohya_oft_network
from loracraft.networks.lora_network import build_lora_network
from loracraft.networks.network_spec import network_spec
from model_helpers import tiny_family_modules

ORACLE_NAMES = {"AUTOMATIC1111": "a1111", "ComfyUI": "comfyui", "Forge": "forge"}
TYPES = {
    "lora": ("networks.lora", []),
    "kohya-locon": ("networks.lora", ["conv_dim=4"]),
    "dylora": ("networks.dylora", []),
    "locon": ("lycoris.kohya", ["algo=locon"]),
    "dora": ("lycoris.kohya", ["algo=locon", "dora_wd=True"]),
    "loha": ("lycoris.kohya", ["algo=loha"]),
    "lokr": ("lycoris.kohya", ["algo=lokr", "factor=4"]),
    "ia3": ("lycoris.kohya", ["algo=ia3", "preset=attn-mlp"]),
    "glora": ("lycoris.kohya", ["algo=glora"]),
    "diag-oft": ("lycoris.kohya", ["algo=diag-oft", "constraint=1e-4"]),
    "full": ("lycoris.kohya", ["algo=full"]),
    "kohya-oft": ("networks.oft", []),
}
# Limits the key oracles do not model, measured by test_consumer_numeric.py.
NUMERIC_ONLY = {
    ("glora", "AUTOMATIC1111"): "A1111's GLoRA reads only the old layout (test_a1111_*glora*)",
    ("ia3", "AUTOMATIC1111", "sd1"): "A1111 applies (IA)³ to Linear layers only; SD1's proj_in is a conv",
    (
        "diag-oft",
        "ComfyUI",
    ): "ComfyUI caps the constraint at alpha (test_comfyui_caps_an_oft_constraint_at_alpha)",
}


def spec_of(label: str):
    module, args = TYPES[label]
    flags = {"network_module": module, "network_args": args, "network_dim": 4}
    if module == "networks.oft":
        flags["network_alpha"] = 1e-3
    return network_spec(build_config({}, flags))


def saved_file(label: str, family: str):
    spec = spec_of(label)
    unet, text_encoders = tiny_family_modules(family)
    if spec.module == "networks.oft":
        network = build_kohya_oft_network(unet, family, spec, 2)
    else:
        network = build_lora_network(
            unet, text_encoders, family, 4, 2.0, kind=adapter_kind(spec), conv_dim=spec.conv_dim,
            conv_alpha=spec.conv_alpha,
        )  # fmt: skip
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01)
    return spec, network.kohya_state_dict(), base_model(family, unet, text_encoders)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("label", list(TYPES))
def test_the_consumers_named_are_those_that_apply_every_key(label, family):
    spec, state, base = saved_file(label, family)
    verdicts = consumer_verdicts(spec, family)
    for consumer, oracle in ORACLE_NAMES.items():
        applied = resolve(oracle, state, base).fully_applied
        if (label, consumer) in NUMERIC_ONLY or (label, consumer, family) in NUMERIC_ONLY:
            assert applied and verdicts[consumer] is not None, (
                consumer
            )  # the oracle passes what numbers refute
            continue
        assert applied == (verdicts[consumer] is None), (consumer, verdicts[consumer])


def test_the_line_names_loaders_first_then_the_others_with_why():
    assert consumers_line(spec_of("lora"), "sd1") == (
        "this file loads as trained in: AUTOMATIC1111, ComfyUI, Forge, diffusers"
    )
    assert consumers_line(spec_of("loha"), "sdxl") == (
        "this file loads as trained in: AUTOMATIC1111, ComfyUI, Forge; not in: diffusers has no loha"
    )
    assert consumers_line(spec_of("kohya-oft"), "sd1") == (
        "this file loads as trained in: none of the common programs; not in: AUTOMATIC1111 does not find "
        "kohya's OFT names on SD1/SD2; ComfyUI does not find kohya's OFT names; Forge does not find kohya's "
        "OFT names; diffusers does not find kohya's OFT names"
    )
