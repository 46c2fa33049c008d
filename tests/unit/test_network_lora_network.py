"""LoRANetwork on tiny SD1- and SDXL-topology U-Nets and CLIP text encoders."""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from loracraft.errors import UserError
from loracraft.networks.algorithms import AdapterKind
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from model_helpers import tiny_sdxl_text_encoders, tiny_sdxl_unet, tiny_text_encoder, tiny_unet

RANK = 4


@pytest.fixture(scope="module")
def models() -> tuple[UNet2DConditionModel, CLIPTextModel]:
    return tiny_unet(), tiny_text_encoder()


@pytest.fixture(scope="module")
def sdxl_network() -> LoRANetwork:
    return build_lora_network(tiny_sdxl_unet(), tiny_sdxl_text_encoders(), "sdxl", rank=RANK, alpha=2.0)


def fill_random(network: LoRANetwork, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def unet_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    return sample, torch.tensor([10]), context


def test_counts_and_default_init(models) -> None:
    unet, text_encoder = models
    network = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=2.0)
    assert (network.num_unet_modules, network.num_text_encoder_modules) == (192, 12)
    # kohya's init: zero up, so a fresh LoRA changes nothing; alpha/rank is the scale
    adapter = network.adapter(network.unet_names[0])
    assert torch.count_nonzero(adapter.lora_up.weight) == 0
    assert torch.count_nonzero(adapter.lora_down.weight) > 0
    assert adapter.scale == pytest.approx(0.5)


@pytest.mark.parametrize("alpha", [None, 0])
def test_missing_alpha_means_rank(models, alpha) -> None:
    unet, text_encoder = models
    network = build_lora_network(
        unet, [text_encoder], "sd1", rank=RANK, alpha=alpha, train_text_encoder=False
    )
    state = network.kohya_state_dict()
    assert state[f"{network.unet_names[0]}.alpha"].item() == RANK
    assert network.adapter(network.unet_names[0]).scale == 1.0


def test_partial_networks(models) -> None:
    unet, text_encoder = models
    unet_only = build_lora_network(unet, [], "sd1", rank=RANK, alpha=1.0, train_text_encoder=False)
    te_only = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=1.0, train_unet=False)
    assert (unet_only.num_unet_modules, unet_only.num_text_encoder_modules) == (192, 0)
    assert (te_only.num_unet_modules, te_only.num_text_encoder_modules) == (0, 12)
    assert all(k.startswith("lora_unet_") for k in unet_only.kohya_state_dict())
    assert all(k.startswith("lora_te_") for k in te_only.kohya_state_dict())
    with pytest.raises(UserError, match="--network_train_unet_only"):
        build_lora_network(
            unet, [text_encoder], "sd1", rank=RANK, alpha=1.0, train_unet=False, train_text_encoder=False
        )


def test_kohya_state_dict_layout(models) -> None:
    unet, text_encoder = models
    network = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=2.0)
    state = network.kohya_state_dict()
    assert len(state) == 3 * (192 + 12)
    for name in network.names:
        down, up, alpha = (
            state[f"{name}.{part}"] for part in ("lora_down.weight", "lora_up.weight", "alpha")
        )
        assert alpha.shape == () and alpha.dtype == torch.float32 and alpha.item() == 2.0
        is_conv = name.endswith(("proj_in", "proj_out"))
        assert down.dim() == up.dim() == (4 if is_conv else 2)
        assert down.shape[0] == up.shape[1] == RANK
        assert not down.requires_grad and not up.requires_grad
    # the original model weights never leak into the file
    assert not any(key.endswith((".bias", "base_layer.weight")) for key in state)


def test_apply_patches_forward_and_multiplier_scales_it(models) -> None:
    unet = copy.deepcopy(models[0])
    base = unet(*unet_inputs()).sample
    network = build_lora_network(unet, [], "sd1", rank=RANK, alpha=2.0, train_text_encoder=False)
    network.apply()
    with torch.no_grad():
        assert torch.equal(unet(*unet_inputs()).sample, base), "a fresh LoRA must not change the output"
        fill_random(network)
        changed = unet(*unet_inputs()).sample
        network.set_multiplier(0.0)
        off = unet(*unet_inputs()).sample
    assert (changed - base).abs().max() > 1e-3
    torch.testing.assert_close(off, base, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="already"):
        network.apply()


def test_gradients_reach_only_the_adapters(models) -> None:
    unet = copy.deepcopy(models[0]).requires_grad_(False)
    network = build_lora_network(unet, [], "sd1", rank=RANK, alpha=2.0, train_text_encoder=False)
    network.apply()
    unet(*unet_inputs()).sample.square().mean().backward()
    ups = [network.adapter(name).lora_up.weight for name in network.names]
    assert all(up.grad is not None for up in ups)
    assert any(up.grad.abs().sum() > 0 for up in ups)
    assert all(param.grad is None for param in unet.parameters())


def test_param_groups(models) -> None:
    unet, text_encoder = models
    network = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=1.0)
    groups = network.param_groups(unet_lr=1e-4, text_encoder_lr=5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-4), ("textencoder", 5e-5)]
    assert len(groups[0]["params"]) == 2 * 192 and len(groups[1]["params"]) == 2 * 12
    assert sum(len(g["params"]) for g in groups) == len(list(network.parameters()))

    unet_only = network.param_groups(unet_lr=1e-4, text_encoder_lr=0.0)
    assert [g["name"] for g in unet_only] == ["unet"]
    te_params = [p for name in network.text_encoder_names for p in network.adapter(name).parameters()]
    assert not any(p.requires_grad for p in te_params)

    network.param_groups(unet_lr=1e-4, text_encoder_lr=1e-5)
    assert all(p.requires_grad for p in te_params)
    with pytest.raises(UserError, match="--unet_lr"):
        network.param_groups(unet_lr=0.0, text_encoder_lr=0.0)


def test_load_kohya_state_dict_round_trip(models) -> None:
    unet, text_encoder = models
    source = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=2.0)
    fill_random(source)
    state = source.kohya_state_dict()
    state[f"{source.unet_names[0]}.alpha"] = torch.tensor(1.0)
    del state[f"{source.unet_names[1]}.alpha"]

    target = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=3.0)
    target.load_kohya_state_dict({k: v.to(torch.float16) for k, v in state.items()})
    loaded = target.kohya_state_dict()
    name0, name1, name2 = source.unet_names[:3]
    torch.testing.assert_close(
        loaded[f"{name2}.lora_up.weight"], state[f"{name2}.lora_up.weight"], rtol=1e-3, atol=1e-3
    )
    # the file's alpha wins and sets the scale; a missing alpha means alpha = rank (scale 1)
    assert (loaded[f"{name0}.alpha"].item(), target.adapter(name0).scale) == (1.0, 0.25)
    assert (loaded[f"{name1}.alpha"].item(), target.adapter(name1).scale) == (RANK, 1.0)
    assert (loaded[f"{name2}.alpha"].item(), target.adapter(name2).scale) == (2.0, 0.5)


def test_load_kohya_state_dict_rejects_mismatches(models) -> None:
    unet, text_encoder = models
    network = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=1.0)
    state = network.kohya_state_dict()
    unet_only = {k: v for k, v in state.items() if k.startswith("lora_unet_")}
    with pytest.raises(UserError, match=r"my\.safetensors: 12 of this network's module\(s\) missing"):
        network.load_kohya_state_dict(unet_only, source="my.safetensors")
    with pytest.raises(UserError, match="1 module\\(s\\) this network does not have"):
        network.load_kohya_state_dict({**state, "lora_unet_conv_in.alpha": torch.tensor(1.0)})
    first = network.names[0]
    with pytest.raises(UserError, match="not a plain LoRA"):
        network.load_kohya_state_dict({**state, f"{first}.dora_scale": torch.ones(1)})
    wider = build_lora_network(unet, [text_encoder], "sd1", rank=RANK * 2, alpha=1.0).kohya_state_dict()
    with pytest.raises(UserError, match="--network_dim to the file's rank \\(8\\)"):
        network.load_kohya_state_dict(wider)


def test_dropout_only_in_training(models) -> None:
    unet = copy.deepcopy(models[0])
    network = build_lora_network(unet, [], "sd1", rank=RANK, alpha=1.0, train_text_encoder=False,
                                 kind=AdapterKind("lora", dropout=0.5))  # fmt: skip
    network.apply()
    fill_random(network)
    with torch.no_grad():
        network.eval()
        assert torch.equal(unet(*unet_inputs()).sample, unet(*unet_inputs()).sample)
        network.train()
        assert not torch.equal(unet(*unet_inputs()).sample, unet(*unet_inputs()).sample)


def test_sdxl_network_has_te1_and_te2_names(sdxl_network: LoRANetwork) -> None:
    te1, te2 = sdxl_network.per_text_encoder_names
    assert len(te1) == len(te2) == 12
    assert all(n.startswith("lora_te1_text_model_encoder_layers_") for n in te1)
    assert all(n.startswith("lora_te2_text_model_encoder_layers_") for n in te2)
    assert sdxl_network.text_encoder_names == te1 + te2
    assert sdxl_network.num_unet_modules == 242
    ldm_blocks = ("lora_unet_input_blocks_", "lora_unet_middle_block_1_", "lora_unet_output_blocks_")
    assert all(n.startswith(ldm_blocks) for n in sdxl_network.unet_names)


def test_sd1_network_has_one_text_encoder_name_tuple(models) -> None:
    unet, text_encoder = models
    network = build_lora_network(unet, [text_encoder], "sd1", rank=RANK, alpha=1.0)
    assert network.per_text_encoder_names == (network.text_encoder_names,)
    unet_only = build_lora_network(unet, [], "sd1", rank=RANK, alpha=1.0, train_text_encoder=False)
    assert unet_only.per_text_encoder_names == () and unet_only.text_encoder_names == ()


def test_text_encoder_count_must_fit_the_family(models) -> None:
    unet, text_encoder = models
    with pytest.raises(ValueError, match="needs 2, got 1"):
        build_lora_network(tiny_sdxl_unet(), [text_encoder], "sdxl", rank=RANK, alpha=1.0)
    with pytest.raises(ValueError, match="needs 1, got 0"):
        build_lora_network(unet, [], "sd1", rank=RANK, alpha=1.0)
    with pytest.raises(ValueError, match="unknown model family"):
        build_lora_network(unet, [text_encoder], "sd3", rank=RANK, alpha=1.0)


def group_summary(groups: list[dict]) -> list[tuple[str, float, int]]:
    return [(g["name"], g["lr"], len(g["params"])) for g in groups]


def test_sdxl_param_groups_one_rate_per_text_encoder(sdxl_network: LoRANetwork) -> None:
    # kohya's rule: one value is both encoders' rate, two values are TE1's and TE2's
    both = [("unet", 1e-4, 2 * 242), ("textencoder 1", 5e-5, 24), ("textencoder 2", 5e-5, 24)]
    assert group_summary(sdxl_network.param_groups(1e-4, 5e-5)) == both
    assert group_summary(sdxl_network.param_groups(1e-4, [5e-5])) == both
    assert group_summary(sdxl_network.param_groups(1e-4, (5e-5, 2e-5))) == [
        ("unet", 1e-4, 2 * 242),
        ("textencoder 1", 5e-5, 24),
        ("textencoder 2", 2e-5, 24),
    ]
    te1_only = sdxl_network.param_groups(1e-4, (5e-5, 0.0))
    assert [g["name"] for g in te1_only] == ["unet", "textencoder 1"]
    te1, te2 = sdxl_network.per_text_encoder_names
    assert not any(p.requires_grad for name in te2 for p in sdxl_network.adapter(name).parameters())
    assert all(p.requires_grad for name in te1 for p in sdxl_network.adapter(name).parameters())


@pytest.mark.parametrize("text_encoder_lr", [5e-5, (5e-5,), (5e-5, 2e-5)])
def test_unet_only_network_has_one_group(text_encoder_lr) -> None:
    """Cached text-encoder outputs or --network_train_unet_only: no text-encoder group whatever the rates."""
    network = build_lora_network(tiny_sdxl_unet(), [], "sdxl", rank=RANK, alpha=1.0, train_text_encoder=False)
    assert group_summary(network.param_groups(1e-4, text_encoder_lr)) == [("unet", 1e-4, 2 * 242)]


def test_single_text_encoder_uses_the_first_rate(models) -> None:
    network = build_lora_network(models[0], [models[1]], "sd1", rank=RANK, alpha=1.0)
    assert group_summary(network.param_groups(1e-4, (3e-5, 7e-5)))[1] == ("textencoder", 3e-5, 24)


def test_load_kohya_state_dict_sdxl_round_trip(sdxl_network: LoRANetwork) -> None:
    source = build_lora_network(tiny_sdxl_unet(), tiny_sdxl_text_encoders(), "sdxl", rank=RANK, alpha=1.0)
    fill_random(source, seed=5)
    state = source.kohya_state_dict()
    assert {key.split("_")[1] for key in state} == {"unet", "te1", "te2"}
    sdxl_network.load_kohya_state_dict(state)
    loaded = sdxl_network.kohya_state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    te1_only = {k: v for k, v in state.items() if not k.startswith("lora_te2_")}
    with pytest.raises(UserError, match=r"12 of this network's module\(s\) missing \(e.g. lora_te2_"):
        sdxl_network.load_kohya_state_dict(te1_only)
