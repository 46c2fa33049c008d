"""The network built with per-block network args is kohya's: on full-size SD1.5 and SDXL U-Nets (built on
the meta device, no weights), every block gets the modules, ranks and alphas that kohya's create_network
made, and the optimizer the groups (names, rates, parameter counts, order) of kohya's
prepare_optimizer_params, both recorded in tests/data/kohya/block_weights.json."""

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from loracraft.networks.blocks import block_dims, block_index, block_learning_rates
from loracraft.networks.lora_network import LoRANetwork, build_lora_network

DATA = json.loads(
    (Path(__file__).parents[1] / "data" / "kohya" / "block_weights.json").read_text(encoding="utf-8")
)
BLOCK_KEYS = (
    "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
    "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
)  # fmt: skip
# Keys kohya ignores unless block_dims or an lr weight is given (we apply them: test_network_blocks.py).
KOHYA_IGNORES = ({"block_alphas"}, {"conv_block_dims", "conv_dim"}, {"conv_block_alphas", "conv_dim"})
# Building a full-size network takes seconds, so three cases per family cover the paths: block dims with conv
# block dims and alphas, lr weight presets with a threshold and conv_dim, lr weights beside block dims (every
# case's block values are checked without building in test_network_blocks.py).
CASES = [DATA["network_cases"][index] for index in (6, 10, 11, 26, 30, 31)]
assert all("result" in case["kohya"] and set(case["network_args"]) not in KOHYA_IGNORES for case in CASES)
KINDS = {name: kind for family in ("sd1", "sdxl") for name, kind, _ in DATA["modules"][family]}
_UNETS: dict[str, UNet2DConditionModel] = {}


def full_size_unet(family: str) -> UNet2DConditionModel:
    if family not in _UNETS:
        config = json.loads(
            resources.files("loracraft.models.configs").joinpath(family).joinpath("unet.json").read_text()
        )
        with torch.device("meta"):
            _UNETS[family] = UNet2DConditionModel.from_config(config)
    return _UNETS[family]


def built(case: dict) -> LoRANetwork:
    args, family = case["network_args"], case["family"]
    conv_dim = int(args["conv_dim"]) if "conv_dim" in args else None
    conv_alpha = float(args["conv_alpha"]) if "conv_alpha" in args else None
    blocks = {key: value for key, value in args.items() if key in BLOCK_KEYS}
    dims = block_dims(blocks, family, case["network_dim"], case["network_alpha"], conv_dim, conv_alpha)
    with torch.device("meta"):  # the adapters' weights too: only their shapes and scales are read
        return build_lora_network(
        full_size_unet(family), [], family, case["network_dim"], case["network_alpha"],
        train_text_encoder=False, conv_dim=conv_dim, conv_alpha=conv_alpha, blocks=dims,
    )  # fmt: skip


def summary(network: LoRANetwork) -> dict:
    """{block: {kind: [dim, alpha, modules]}}, as the data records kohya's network."""
    result: dict = {}
    for name in network.unet_names:
        adapter = network.adapter(name)
        kind = KINDS[name]  # kohya's kind of the module: attention, resnet_linear or conv3x3
        entry = result.setdefault(str(block_index(name, network.family)), {}).setdefault(
            kind, [adapter.lora_dim, adapter.scale * adapter.lora_dim, 0]
        )
        assert entry[:2] == [adapter.lora_dim, adapter.scale * adapter.lora_dim], (
            name
        )  # one rank/alpha per block & kind
        entry[2] += 1
    return result


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case['family']}-{','.join(case['network_args'])}")
def test_the_built_network_and_its_optimizer_groups_are_kohyas(case: dict) -> None:
    network = built(case)
    assert summary(network) == case["kohya"]["result"]["blocks"]
    blocks = {key: value for key, value in case["network_args"].items() if key in BLOCK_KEYS}
    groups = network.param_groups(
        case["unet_lr"], 0.0, unet_block_lrs=block_learning_rates(blocks, case["family"], case["unet_lr"])
    )
    ours = [
        [group["name"], pytest.approx(group["lr"], rel=1e-12), kohya_count(network, group)]
        for group in groups
    ]
    assert ours == case["kohya"]["result"]["optimizer_groups"]


def kohya_count(network: LoRANetwork, group: dict) -> int:
    """The group's parameter count as the data records it: kohya's LoRA module holds its original layer as a
    submodule until apply_to() deletes it, and the data's network was not applied, so kohya's count adds
    the original layers' weight and bias to the LoRA weights of each module."""
    in_group = {id(param) for param in group["params"]}
    originals = sum(
        len(list(adapter.org_module[0].parameters()))
        for adapter in network.children()
        if any(id(param) in in_group for param in adapter.parameters())
    )
    return len(group["params"]) + originals
