"""--base_weights: LoRA files merged into the base model's weights (networks/merge_into_base.py).

The oracle is the same LoRA applied by our network (LyCORIS modules adding m * scale * up(down(x)) to each
module's output): a merged model must compute what the unmerged model computes with the LoRA applied at
the file's multiplier. Tiny SD1, SD2 and SDXL topologies from tests/model_helpers.py.
"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from loracraft.config.load import build_config
from loracraft.errors import UserError
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_network import build_lora_network
from loracraft.networks.merge_into_base import BaseMerge
from model_helpers import tiny_family_modules

RANK, ALPHA = 4, 2.0
CONTEXT_WIDTH = {"sd1": 32, "sd2": 32, "sdxl": 64}


def random_lora_file(path: Path, family: str, seed: int, rank: int = RANK, alpha: float = ALPHA) -> Path:
    """A LoRA on the family's tiny modules with random up and down weights, saved as kohya's file."""
    unet, text_encoders = tiny_family_modules(family)
    network = build_lora_network(unet, text_encoders, family, rank=rank, alpha=alpha)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    save_lora_file(network.kohya_state_dict(), path)
    return path


def model_outputs(unet, text_encoders, family: str) -> list[torch.Tensor]:
    """The U-Net's prediction and each text encoder's last hidden state on fixed inputs."""
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, CONTEXT_WIDTH[family], generator=generator)
    extra = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 32, generator=generator),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
        }
    tokens = torch.tensor([[0, 5, 9, 14, 2]])
    with torch.no_grad():
        outputs = [unet(sample, torch.tensor([10]), context, **extra).sample]
        outputs += [model(tokens).last_hidden_state for model in text_encoders]
    return outputs


def applied_by_network(files_and_multipliers: list[tuple[Path, float]], family: str) -> list[torch.Tensor]:
    """The outputs of the unmerged model with each LoRA applied by our network at its multiplier."""
    unet, text_encoders = tiny_family_modules(family)
    for path, multiplier in files_and_multipliers:
        network = build_lora_network(unet, text_encoders, family, rank=RANK, alpha=ALPHA)
        network.load_kohya_state_dict(load_file(str(path)))
        network.set_multiplier(multiplier)
        network.apply()
    return model_outputs(unet, text_encoders, family)


def merged(files_and_multipliers: list[tuple[Path, float]], family: str, echo=None) -> tuple:
    unet, text_encoders = tiny_family_modules(family)
    files = [str(path) for path, _ in files_and_multipliers]
    multipliers = [multiplier for _, multiplier in files_and_multipliers]
    BaseMerge.read(unet, text_encoders, family, files, multipliers).apply(echo or (lambda line: None))
    return unet, text_encoders


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_merged_model_computes_the_lora_applied_at_its_multiplier(tmp_path, family):
    lora = random_lora_file(tmp_path / "a.safetensors", family, seed=1)
    lines: list[str] = []
    unet, text_encoders = merged([(lora, 0.7)], family, lines.append)

    expected = applied_by_network([(lora, 0.7)], family)
    plain = model_outputs(*tiny_family_modules(family), family)
    for got, want, base in zip(model_outputs(unet, text_encoders, family), expected, plain, strict=True):
        assert not torch.allclose(want, base, atol=1e-3)  # the LoRA changes every output
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    modules = len(build_lora_network(*tiny_family_modules(family), family, rank=1, alpha=1).names)
    assert lines == [f"merged --base_weights {lora} at multiplier 0.7 ({modules} modules)"]


def test_several_files_add_up_each_at_its_multiplier(tmp_path):
    first = random_lora_file(tmp_path / "a.safetensors", "sdxl", seed=1)
    second = random_lora_file(tmp_path / "b.safetensors", "sdxl", seed=2)
    unet, text_encoders = merged([(first, 0.5), (second, -1.0)], "sdxl")
    expected = applied_by_network([(first, 0.5), (second, -1.0)], "sdxl")
    for got, want in zip(model_outputs(unet, text_encoders, "sdxl"), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "name", "path"),
    [
        ("sd1", "lora_unet_down_blocks_0_resnets_0_conv1", "down_blocks.0.resnets.0.conv1"),
        ("sdxl", "lora_unet_input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"),
        ("sdxl", "lora_unet_output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv"),
    ],
)
def test_a_3x3_convolution_lora_merges_as_the_two_convolutions_it_stands_for(tmp_path, family, name, path):
    """kohya's conv_dim LoRAs reach ResNet and sampler convolutions: down is a 3x3 kernel, up a 1x1."""
    unet, text_encoders = tiny_family_modules(family)
    conv = unet.get_submodule(path)
    generator = torch.Generator().manual_seed(4)
    down = torch.randn(RANK, conv.in_channels, 3, 3, generator=generator)
    up = torch.randn(conv.out_channels, RANK, 1, 1, generator=generator)
    file = tmp_path / "conv.safetensors"
    save_lora_file(
        {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(ALPHA),
        },
        file,
    )
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    original = copy.deepcopy(conv)

    BaseMerge.read(unet, text_encoders, family, [str(file)], [0.5]).apply(lambda line: None)
    x = torch.randn(1, conv.in_channels, 8, 8, generator=generator)
    with torch.no_grad():
        lora_output = F.conv2d(F.conv2d(x, down, padding=1), up) * 0.5 * ALPHA / RANK
        torch.testing.assert_close(conv(x), original(x) + lora_output, rtol=1e-4, atol=1e-5)
    changed = [key for key, value in unet.state_dict().items() if not torch.equal(value, before[key])]
    assert changed == [f"{path}.weight"]


def test_half_precision_weights_are_merged_in_float32_and_cast_back(tmp_path):
    lora = random_lora_file(tmp_path / "a.safetensors", "sd1", seed=1)
    unet, text_encoders = tiny_family_modules("sd1")
    target = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    weight = target.weight.detach().clone()
    unet.to(torch.bfloat16)
    BaseMerge.read(unet, text_encoders, "sd1", [str(lora)], [1.0]).apply(lambda line: None)
    state = load_file(str(lora))
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    delta = state[f"{name}.lora_up.weight"] @ state[f"{name}.lora_down.weight"] * ALPHA / RANK
    assert target.weight.dtype == torch.bfloat16
    assert torch.equal(target.weight, (weight.to(torch.bfloat16).float() + delta).to(torch.bfloat16))


def lora_module(name: str, out_features: int, in_features: int) -> dict[str, torch.Tensor]:
    return {
        f"{name}.lora_down.weight": torch.ones(RANK, in_features),
        f"{name}.lora_up.weight": torch.ones(out_features, RANK),
        f"{name}.alpha": torch.tensor(ALPHA),
    }


Q_PROJ = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
BAD_FILES = {
    "sdxl file on sd1": (
        "sd1",
        lora_module("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32, 32),
        "{path} is a LoRA for SDXL models (its names are like lora_te1_text_model_encoder_layers_0_self_attn_q_proj), "
        "but the base model is SD1.x: use a LoRA made for an SD1.x model",
    ),
    "sd1 file on sdxl": (
        "sdxl",
        lora_module(Q_PROJ, 32, 32),
        f"{{path}} is a LoRA for SD1.x/SD2.x models (its names are like {Q_PROJ}), but the base model is "
        "SDXL: use a LoRA made for an SDXL model",
    ),
    "unknown module": (
        "sd1",
        {**lora_module(Q_PROJ, 32, 32), **lora_module("lora_unet_mid_block_attentions_0_proj_inn", 64, 64)},
        "{path}: lora_unet_mid_block_attentions_0_proj_inn matches no module of this SD1.x model; use a kohya "
        "LoRA made for this base model",
    ),
    "other shape": (
        "sd1",
        lora_module(Q_PROJ, 32, 768),
        f"{{path}}: {Q_PROJ} changes a weight of shape (32, 768), but this model's is (32, 32); the LoRA was "
        "made for another base model: use one made for this model",
    ),
    "not plain LoRA": (
        "sd1",
        {f"{Q_PROJ}.hada_w1_a": torch.ones(32, 4), f"{Q_PROJ}.alpha": torch.tensor(1.0)},
        f"{{path}}: {Q_PROJ} is not a plain LoRA module (parts: alpha, hada_w1_a); only kohya LoRA files "
        "(lora_down.weight, lora_up.weight, alpha) can be used here",
    ),
}


@pytest.mark.parametrize(("family", "tensors", "message"), BAD_FILES.values(), ids=BAD_FILES)
def test_a_bad_file_is_one_line_and_no_weight_changes(tmp_path, family, tensors, message):
    good = random_lora_file(tmp_path / "good.safetensors", family, seed=1)
    bad = tmp_path / "bad.safetensors"
    save_lora_file(tensors, bad)
    unet, text_encoders = tiny_family_modules(family)
    before = [{k: v.clone() for k, v in model.state_dict().items()} for model in (unet, *text_encoders)]
    with pytest.raises(UserError) as caught:
        BaseMerge.read(unet, text_encoders, family, [str(good), str(bad)], [1.0, 1.0])
    assert str(caught.value) == "--base_weights " + message.format(path=bad)
    for model, state in zip((unet, *text_encoders), before, strict=True):
        assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_a_missing_file_is_named(tmp_path):
    unet, text_encoders = tiny_family_modules("sd1")
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError) as caught:
        BaseMerge.read(unet, text_encoders, "sd1", [str(missing)], [1.0])
    assert str(caught.value) == f"--base_weights {missing}: LoRA file not found"


@pytest.mark.parametrize(
    ("flags", "multipliers"),
    [({"base_weights": ["a.safetensors", "b.safetensors"]}, [1.0, 1.0]),
     ({"base_weights": "a.safetensors", "base_weights_multiplier": 0.5}, [0.5]),
     ({"base_weights": ["a.safetensors", "b.safetensors"], "base_weights_multiplier": [0.5, -1]}, [0.5, -1.0]),
     ({}, [])],
)  # fmt: skip
def test_one_multiplier_per_file_defaulting_to_one(flags, multipliers):
    assert build_config({}, flags).base_weights_multipliers == multipliers


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"base_weights": ["a.safetensors", "b.safetensors"], "base_weights_multiplier": [0.5]},
            "1 value(s) for 2",
        ),
        ({"base_weights": ["a.safetensors"], "base_weights_multiplier": [0.5, 1]}, "2 value(s) for 1"),
        ({"base_weights_multiplier": [0.5]}, "1 value(s) for 0"),
    ],
)
def test_a_wrong_multiplier_count_is_one_line(flags, message):
    with pytest.raises(UserError) as caught:
        build_config({}, flags)
    assert str(caught.value) == (
        f"--base_weights_multiplier has {message} --base_weights file(s): give one multiplier per file, in "
        "the same order (or none for 1.0 each)"
    )
