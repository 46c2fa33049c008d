"""kohya's OFT (networks.oft) as loracraft builds it: the rotation, the forward and the targets are kohya's.

The expected values were computed by kohya-ss sd-scripts' own networks/oft.py (commit 48d368fa, its
`OFTModule.get_weight` and patched forward on the tensors below, and
`OFTNetwork(None, unet, dim=4, alpha=1e-3, enable_all_linear=..., enable_conv=...)` under
`torch.device("meta")` over kohya's own full-size U-Nets, built as scripts/kohya_lora_names.py builds them,
with kohya's class-level target lists restored between networks, since kohya extends them in place), and
are kept here as data.
"""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from torch import nn

from loracraft.errors import UserError
from loracraft.models.config_inference import base_config, model_kwargs
from loracraft.networks.kohya_oft import (
    KohyaOFTModule,
    kohya_oft_adapters,
    oft_rotation,
    oft_unet_targets,
    output_width,
)
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_network import LoRANetwork
from model_helpers import tiny_sdxl_unet, tiny_unet

KOHYA_NAMES = Path(__file__).parents[1] / "data" / "kohya_names"
BLOCKS = torch.tensor([[[0.0, 0.3], [-0.1, 0.0]], [[0.2, -0.4], [0.5, 0.1]]])
"""oft_blocks of a 4-wide layer in 2 blocks; the norm of its skew-symmetric part is sqrt(1.94) = 1.393."""
# kohya's get_weight() for BLOCKS on a 4-wide layer, by (alpha, multiplier): constraint = alpha x 4 is
# 2.0 (no clamp) or 0.4 (Q scaled down to norm 0.4).
KOHYA_ROTATIONS = {
    (0.5, 1.0): [[[0.7241379, 0.6896552], [-0.6896552, 0.7241380]], [[0.1049724, -0.9944751], [0.9944751, 0.1049724]]],
    (0.1, 1.0): [[[0.9739519, 0.2267544], [-0.2267544, 0.9739519]], [[0.8747584, -0.4845593], [0.4845593, 0.8747584]]],
    (0.5, 0.5): [[[0.8620690, 0.3448276], [-0.3448276, 0.8620690]], [[0.5524862, -0.4972376], [0.4972376, 0.5524862]]],
}  # fmt: skip
LINEAR_WEIGHT = [[0.1, -0.2, 0.3], [0.4, 0.5, -0.6], [-0.7, 0.8, 0.9], [1.0, -1.1, 1.2]]
LINEAR_BIAS = [0.01, -0.02, 0.03, -0.04]
LINEAR_INPUT = [[1.0, 2.0, -1.0], [0.5, -0.5, 0.25]]
KOHYA_LINEAR_OUTPUTS = {
    (0.5, 1.0): [[-1.8037932, 1.0144827, -2.3567402, -0.2919337], [0.3108621, -0.0096552, 1.3174310, 0.6238121]],
    (0.1, 0.5): [[-0.8089399, 1.8859258, -0.5514711, -2.2897100], [0.2547450, -0.1918853, -0.1350466, 1.3526587]],
}  # fmt: skip
# Conv2d(1, 4, 3, padding=1) with weight (arange(36) - 17.5) / 20, this bias and input; alpha 0.1.
CONV_BIAS = [0.1, 0.2, -0.1, -0.2]
CONV_INPUT = [[[[1.0, -2.0], [0.5, 3.0]]]]
KOHYA_CONV_OUTPUT = [[
    [[-0.9863561, -1.0797555], [-1.2665551, -1.3599548]],
    [[-0.0400899, -0.1901782], [-0.4903547, -0.6404430]],
    [[1.9913533, 1.8214383], [1.4816089, 1.3116944]],
    [[1.2279546, 1.1791795], [1.0816300, 1.0328553]],
]]  # fmt: skip
# kohya's OFTNetwork on its full-size U-Nets, by (enable_all_linear, enable_conv): the module count and the
# first 16 hex digits of sha256("\n".join(sorted(names))). SD2's names are SD1's.
KOHYA_FULL_SIZE = {
    "sd1": {
        (False, False): (128, "d095c7b3f184a8f1"),
        (False, True): (214, "c5b5ac72b63e464b"),
        (True, False): (192, "aefeb7dc5ea93ae6"),
        (True, True): (278, "aa3fc93ed58b66eb"),
    },
    "sdxl": {
        (False, False): (560, "5fab45a25bf744ee"),
        (False, True): (626, "6fca5431f2524a5a"),
        (True, False): (722, "fe1396b987474447"),
        (True, True): (788, "39f8d1143e4d1cf9"),
    },
}
KOHYA_FULL_SIZE["sd2"] = KOHYA_FULL_SIZE["sd1"]
# kohya's rule counted on the tiny U-Nets (tests/model_helpers.py). SD1: 16 transformer blocks, 8 attention
# projections each (12 layers with proj_in/out and the feed-forward); the conv blocks add 22 ResNets x 3
# (conv1, conv2, time_emb_proj) + 13 conv_shortcuts + 3 down- and 3 up-samplers = 85. SDXL: 22 transformer
# blocks in 11 Transformer2DModels (22 x 10 + 11 x 2 = 242 with all linear); 17 ResNets x 3 + 10 shortcuts
# + 2 + 2 samplers = 65.
TINY_COUNTS = {
    "sd1": {(False, False): 128, (False, True): 213, (True, False): 192, (True, True): 277},
    "sdxl": {(False, False): 176, (False, True): 241, (True, False): 242, (True, True): 307},
}
TINY_UNETS = {"sd1": tiny_unet, "sdxl": tiny_sdxl_unet}
FLAGS = [(False, False), (False, True), (True, False), (True, True)]


def linear() -> nn.Linear:
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(LINEAR_WEIGHT))
        layer.bias.copy_(torch.tensor(LINEAR_BIAS))
    return layer


def applied(layer: nn.Module, alpha: float, multiplier: float = 1.0, blocks: torch.Tensor = BLOCKS):
    module = KohyaOFTModule("oft_unet_layer", layer, multiplier, dim=blocks.shape[0], alpha=alpha)
    with torch.no_grad():
        module.oft_blocks.copy_(blocks)
    module.apply_to()
    return module


@pytest.mark.parametrize(("alpha", "multiplier"), list(KOHYA_ROTATIONS))
def test_the_rotation_is_kohyas(alpha, multiplier):
    expected = torch.tensor(KOHYA_ROTATIONS[(alpha, multiplier)])
    torch.testing.assert_close(oft_rotation(BLOCKS, alpha * 4, multiplier), expected, rtol=0, atol=1e-6)
    module = applied(linear(), alpha, multiplier)
    torch.testing.assert_close(module.rotation().detach(), expected, rtol=0, atol=1e-6)
    if multiplier == 1.0:  # a Cayley transform of a skew-symmetric matrix is orthogonal
        identity = torch.eye(2).expand(2, 2, 2)
        torch.testing.assert_close(expected @ expected.transpose(1, 2), identity, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("alpha", "multiplier"), list(KOHYA_LINEAR_OUTPUTS))
def test_a_linear_layer_computes_what_kohyas_does(alpha, multiplier):
    layer = linear()
    applied(layer, alpha, multiplier)
    output = layer(torch.tensor(LINEAR_INPUT)).detach()
    torch.testing.assert_close(
        output, torch.tensor(KOHYA_LINEAR_OUTPUTS[(alpha, multiplier)]), rtol=0, atol=1e-6
    )


def test_a_convolution_computes_what_kohyas_does():
    layer = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_((torch.arange(36.0).reshape(4, 1, 3, 3) - 17.5) / 20)
        layer.bias.copy_(torch.tensor(CONV_BIAS))
    applied(layer, alpha=0.1)
    output = layer(torch.tensor(CONV_INPUT)).detach()
    torch.testing.assert_close(output, torch.tensor(KOHYA_CONV_OUTPUT), rtol=0, atol=1e-6)


def test_multiplier_zero_and_the_initial_blocks_give_the_base_layer():
    layer, x = linear(), torch.tensor(LINEAR_INPUT)
    base = layer(x)
    fresh = KohyaOFTModule("oft_unet_layer", layer, 1.0, dim=2, alpha=1e-3)
    fresh.apply_to()
    assert torch.count_nonzero(fresh.oft_blocks) == 0  # kohya's zeros: the rotation starts at I
    torch.testing.assert_close(layer(x), base, rtol=0, atol=1e-7)
    with torch.no_grad():
        fresh.oft_blocks.copy_(BLOCKS)
    assert not torch.allclose(layer(x), base)
    fresh.multiplier = 0.0
    assert torch.equal(layer(x), base)


def test_the_blocks_learn_from_the_identity():
    """At the identity (all-zero blocks, norm 0) the gradient still reaches every block."""
    layer = linear()
    module = KohyaOFTModule("oft_unet_layer", layer, 1.0, dim=2, alpha=1e-3)
    module.apply_to()
    layer(torch.tensor(LINEAR_INPUT)).square().sum().backward()
    assert module.oft_blocks.grad is not None and torch.isfinite(module.oft_blocks.grad).all()
    assert all(block.abs().sum() > 0 for block in module.oft_blocks.grad)


def test_the_state_dict_is_kohyas_file_and_keeps_the_base_weight_out():
    layer = nn.Linear(3, 8)
    module = KohyaOFTModule("oft_unet_layer", layer, 1.0, dim=4, alpha=1e-3)
    state = module.state_dict()
    assert set(state) == {"oft_blocks", "alpha"}
    assert state["oft_blocks"].shape == (4, 2, 2) and state["oft_blocks"].dtype == torch.float32
    assert state["alpha"].dim() == 0 and state["alpha"].dtype == torch.float32
    assert state["alpha"].item() == pytest.approx(1e-3)
    assert [name for name, _ in module.named_parameters()] == ["oft_blocks"]
    assert module.lora_name == "oft_unet_layer"


def network(family: str, dim: int = 4, alpha: float = 1e-3, seed: int | None = None):
    unet = TINY_UNETS[family]()
    adapters = kohya_oft_adapters(oft_unet_targets(unet, family, True, True), 1.0, dim, alpha)
    built = LoRANetwork(adapters)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in built.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    built.apply()
    return built, unet


def run(unet: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 4, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10]), encoder_hidden_states=context).sample


def test_a_saved_file_has_kohyas_keys_and_loads_back_into_the_same_outputs(tmp_path):
    trained, trained_unet = network("sd1", alpha=2e-3, seed=0)
    path = tmp_path / "oft.safetensors"
    save_lora_file(trained.kohya_state_dict(), path, dtype=torch.float16)
    tensors, _ = read_lora_file(path)
    assert set(tensors) == {f"{name}.{part}" for name in trained.names for part in ("oft_blocks", "alpha")}
    for name in trained.names:
        width = output_width(trained.adapter(name).org_module[0])
        assert tensors[f"{name}.oft_blocks"].shape == (4, width // 4, width // 4)
        assert tensors[f"{name}.alpha"].dim() == 0 and tensors[f"{name}.alpha"].dtype == torch.float32
    fresh, fresh_unet = network("sd1", alpha=1e-3)  # the file's alpha becomes the constraint
    fresh.load_kohya_state_dict(tensors, source=str(path))
    assert all(
        fresh.adapter(name).constraint == pytest.approx(2e-3 * fresh.adapter(name).out_dim)
        for name in fresh.names
    )
    torch.testing.assert_close(run(fresh_unet), run(trained_unet), rtol=0, atol=1e-3)  # fp16 file


def test_the_network_at_multiplier_zero_is_the_base_unet():
    trained, unet = network("sd1", seed=0)
    base = run(TINY_UNETS["sd1"]())
    assert not torch.allclose(run(unet), base)
    trained.set_multiplier(0.0)
    assert torch.equal(run(unet), base)


@pytest.mark.parametrize("family", list(TINY_COUNTS))
@pytest.mark.parametrize(("all_linear", "conv"), FLAGS)
def test_the_tiny_models_get_kohyas_number_of_targets(family, all_linear, conv):
    targets = oft_unet_targets(TINY_UNETS[family](), family, all_linear, conv)
    assert len(targets) == TINY_COUNTS[family][(all_linear, conv)]
    assert all(target.name.startswith("oft_unet_") for target in targets)
    assert len({target.name for target in targets}) == len(targets)


def full_size_unet(family: str) -> UNet2DConditionModel:
    with init_empty_weights():
        return UNet2DConditionModel(**model_kwargs(base_config(family, "unet")))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_models_get_exactly_kohyas_names(family):
    unet = full_size_unet(family)
    lora_names = json.loads((KOHYA_NAMES / f"{family}.json").read_text(encoding="utf-8"))["unet"]
    kohya_all_linear = {"oft_unet" + name.removeprefix("lora_unet") for name in lora_names}
    for all_linear, conv in FLAGS:
        names = sorted(target.name for target in oft_unet_targets(unet, family, all_linear, conv))
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        assert (len(names), digest) == KOHYA_FULL_SIZE[family][(all_linear, conv)], (all_linear, conv)
    # Readable on failure: kohya's OFT names are its LoRA names (tests/data/kohya_names) under oft_unet.
    assert {t.name for t in oft_unet_targets(unet, family, True, False)} == kohya_all_linear
    attention = {name for name in kohya_all_linear if re.search(r"_attn[12]_to_(q|k|v|out_0)$", name)}
    assert {t.name for t in oft_unet_targets(unet, family, False, False)} == attention


def test_a_block_count_that_does_not_divide_every_width_is_one_line():
    targets = oft_unet_targets(tiny_unet(), "sd1", True, False)  # widths 32, 64, 256, 512
    with pytest.raises(UserError) as refused:
        kohya_oft_adapters(targets, 1.0, dim=3, alpha=1e-3)
    assert str(refused.value) == (
        "--network_dim 3: networks.oft splits each layer's output into --network_dim equal blocks of 2 or "
        "more rows, which the widths 32, 64, 256, 512 do not allow; use a divisor of 32 such as 2, 4, 8, 16"
    )
    with pytest.raises(UserError, match=r"^--network_dim 32: .* the widths 32 do not allow"):
        kohya_oft_adapters(targets, 1.0, dim=32, alpha=1e-3)  # blocks of one row never rotate


def test_a_zero_constraint_is_refused():
    with pytest.raises(
        UserError, match=r"^--network_alpha 0: networks.oft reads --network_alpha as its constraint"
    ):
        KohyaOFTModule("oft_unet_layer", nn.Linear(3, 4), 1.0, dim=2, alpha=0.0)
