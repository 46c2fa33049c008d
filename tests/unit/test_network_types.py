"""Every network type on the tiny SD1 model: the adapters are LyCORIS modules under kohya's names, the
saved parts and shapes are the ones consumers read (reference/lora-format.md §2: 4-D tensors for every
convolution), a saved file loads back into a fresh network of the same type with the same outputs, and a
file of another type is refused in one line."""

import copy
import importlib.metadata

import pytest
import torch
from torch import nn

from loracraft.errors import UserError
from loracraft.networks.algorithms import AdapterKind, adapter_state
from loracraft.networks.lora_network import build_lora_network
from network_helpers import needs_lycoris, tiny_network

# The parts each type writes per module (lora-format.md §2), for a Linear and for a 3x3 Conv2d.
KINDS = {
    "locon": (AdapterKind("locon"), {"lora_down.weight", "lora_up.weight", "alpha"}, None),
    "locon-tucker": (
        AdapterKind("locon", options={"use_tucker": True}),
        {"lora_down.weight", "lora_up.weight", "alpha"},
        {"lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha"},
    ),
    "dora": (
        AdapterKind("locon", options={"weight_decompose": True, "wd_on_out": False}),
        {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
        None,
    ),
    "loha": (AdapterKind("loha"), {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}, None),
    "lokr": (AdapterKind("lokr", options={"factor": 4}), None, None),
    "ia3": (AdapterKind("ia3"), {"weight", "on_input"}, None),
    "dylora": (
        AdapterKind("dylora", options={"block_size": 1}),
        {"lora_down.weight", "lora_up.weight", "alpha"},
        None,
    ),
    "glora": (AdapterKind("glora"), {"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"}, None),
    "diag-oft": (AdapterKind("diag-oft", options={"constraint": 1e-4}), {"oft_blocks", "alpha"}, None),
    "boft": (AdapterKind("boft"), {"oft_blocks", "alpha"}, None),
    "full": (AdapterKind("full"), None, None),
}
CONV_NAME = "lora_unet_down_blocks_0_resnets_0_conv1"
LINEAR_NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def network_of(bundle, kind: AdapterKind, seed: int | None = 0):
    """The type's network, applied and evaluated, on copies of the tiny model; with a `seed`, every adapter
    parameter moved by noise (as training would move it), else as built."""
    network, unet = tiny_network(bundle, kind, None if seed is None else 0.05, seed or 0)
    network.apply()
    network.eval()  # DyLoRA trains a random rank each step; evaluated, every type uses all of it
    return network, unet


def run_unet(unet: nn.Module, bundle) -> torch.Tensor:
    config = bundle.unet.config
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 4, config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10]), encoder_hidden_states=context).sample


@pytest.mark.parametrize("label", list(KINDS))
def test_each_type_writes_its_parts_in_the_shapes_consumers_read(tiny_sd1_bundle, label):
    kind, linear_parts, conv_parts = KINDS[label]
    needs_lycoris(kind)
    network, _ = network_of(tiny_sd1_bundle, kind)
    state = network.kohya_state_dict()
    parts = {}
    for key in state:
        name, _, part = key.partition(".")
        parts.setdefault(name, set()).add(part)
    assert set(parts) == set(network.names)
    assert CONV_NAME in parts and LINEAR_NAME in parts
    if linear_parts is not None:
        assert parts[LINEAR_NAME] == linear_parts
        assert parts[CONV_NAME] == (conv_parts or linear_parts)
    for key, tensor in state.items():
        name, _, part = key.partition(".")
        if part == "alpha":
            assert tensor.dim() == 0 and tensor.dtype == torch.float32
        if part in ("lora_down.weight", "lora_up.weight", "lora_mid.weight") and name == CONV_NAME:
            assert tensor.dim() == 4, f"{key} is {tuple(tensor.shape)}: a convolution's parts are 4-D"


@pytest.mark.parametrize("label", list(KINDS))
def test_a_saved_file_loads_back_into_the_same_outputs(tiny_sd1_bundle, label):
    kind = KINDS[label][0]
    needs_lycoris(kind)
    trained, trained_unet = network_of(tiny_sd1_bundle, kind, seed=0)
    fresh, fresh_unet = network_of(tiny_sd1_bundle, kind, seed=None)
    if label != "dylora":
        assert not torch.allclose(
            run_unet(trained_unet, tiny_sd1_bundle), run_unet(fresh_unet, tiny_sd1_bundle)
        )
    saved = trained.kohya_state_dict()
    fresh.load_kohya_state_dict(saved, source="file.safetensors")
    reloaded = fresh.kohya_state_dict()
    assert reloaded.keys() == saved.keys()
    for key, tensor in saved.items():
        torch.testing.assert_close(reloaded[key], tensor, rtol=0, atol=1e-6, msg=key)
    if label != "dylora":  # LyCORIS' DyLoRA forward draws a random rank on every call, even evaluated
        torch.testing.assert_close(
            run_unet(fresh_unet, tiny_sd1_bundle), run_unet(trained_unet, tiny_sd1_bundle), rtol=0, atol=1e-6
        )


def test_a_file_of_another_type_is_refused_in_one_line(tiny_sd1_bundle):
    loha, _ = network_of(tiny_sd1_bundle, AdapterKind("loha"))
    lokr, _ = network_of(tiny_sd1_bundle, AdapterKind("lokr", options={"factor": 4}))
    with pytest.raises(UserError) as refused:
        lokr.load_kohya_state_dict(loha.kohya_state_dict(), source="loha.safetensors")
    message = str(refused.value)
    assert message.startswith("loha.safetensors: lora_unet_")
    assert (
        " has the parts alpha, hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b; this network's LokrModule has "
        in message
    )
    assert message.endswith(
        "the file is of another network type or has other options (--network_module / --network_args)"
    )
    assert "\n" not in message


def test_an_option_the_installed_lycoris_lacks_is_refused(monkeypatch, tiny_sd1_bundle):
    with pytest.raises(UserError, match=r"^--network_args: loha with tucker_rank needs a newer LyCORIS"):
        build_lora_network(
            copy.deepcopy(tiny_sd1_bundle.unet), [], "sd1", 4, 1.0, train_text_encoder=False,
            kind=AdapterKind("loha", options={"tucker_rank": 2}),
        )  # fmt: skip


def test_a_size_lycoris_cannot_factorise_is_one_line_naming_the_module(tiny_sd1_bundle):
    needs_lycoris(AdapterKind("boft"))
    with pytest.raises(UserError) as refused:
        build_lora_network(
            copy.deepcopy(tiny_sd1_bundle.unet), [copy.deepcopy(tiny_sd1_bundle.text_encoders[0])], "sd1",
            4, 1.0, kind=AdapterKind("boft"),
        )  # fmt: skip
    assert str(refused.value) == (
        "--network_args algo=boft: LyCORIS cannot build the adapter of "
        "lora_te_text_model_encoder_layers_0_mlp_fc1 (Linear 37x32): It is impossible to decompose 37 with "
        "factor 4 under BOFT constraints.; try another --network_dim or factor"
    )


def test_a_type_the_installed_lycoris_builds_wrongly_is_refused(monkeypatch, tiny_sd1_bundle):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "3.1.1")
    with pytest.raises(UserError) as refused:
        build_lora_network(
            copy.deepcopy(tiny_sd1_bundle.unet), [], "sd1", 4, 1.0, train_text_encoder=False,
            kind=AdapterKind("boft"),
        )  # fmt: skip
    assert str(refused.value) == (
        "--network_args algo=boft needs lycoris-lora 4.1 or newer (installed: 3.1.1): pip install -U lycoris-lora"
    )


def test_loraplus_moves_each_parts_lora_up_weights_into_a_faster_group(tiny_sd1_bundle):
    """kohya's LoRA+: every lora_up weight of a part in a group "NAME plus" at lr x that part's ratio."""
    network, _ = network_of(tiny_sd1_bundle, AdapterKind("locon"), seed=None)
    groups = network.param_groups(1e-4, 5e-5, plus_ratios=(16.0, 4.0))
    assert [(group["name"], group["lr"]) for group in groups] == [
        ("unet", 1e-4),
        ("unet plus", 1e-4 * 16),
        ("textencoder", 5e-5),
        ("textencoder plus", 5e-5 * 4),
    ]
    ups = {
        id(p)
        for name in network.names
        for part, p in network.adapter(name).named_parameters()
        if "lora_up" in part
    }
    for group in groups:
        assert all((id(p) in ups) == group["name"].endswith(" plus") for p in group["params"])
    everything = [p for group in groups for p in group["params"]]
    assert len(everything) == len(list(network.parameters())) == len({id(p) for p in everything})
    assert [group["name"] for group in network.param_groups(1e-4, 5e-5, plus_ratios=(16.0, None))] == [
        "unet",
        "unet plus",
        "textencoder",
    ]


def test_loraplus_finds_dyloras_up_weights_in_their_blocks(tiny_sd1_bundle):
    network, _ = network_of(tiny_sd1_bundle, AdapterKind("dylora", options={"block_size": 1}), seed=None)
    plus = [
        group
        for group in network.param_groups(1e-4, 5e-5, plus_ratios=(16.0, 16.0))
        if "plus" in group["name"]
    ]
    ups = [p for name in network.names for p in network.adapter(name).up_list]
    assert len(plus) == 2 and sum(len(group["params"]) for group in plus) == len(ups) > 0


def test_dylora_evaluates_at_its_full_rank_and_trains_random_ranks(tiny_sd1_bundle):
    network, _ = network_of(tiny_sd1_bundle, AdapterKind("dylora", options={"block_size": 1}))
    adapter = next(
        network.adapter(name)
        for name in network.unet_names
        if isinstance(network.adapter(name).org_module[0], torch.nn.Linear)
    )
    module = adapter.org_module[0]
    x = torch.randn(2, module.in_features, generator=torch.Generator().manual_seed(1))
    base = torch.nn.functional.linear(x, module.weight, module.bias)
    parts = adapter_state(adapter)  # the file's tensors: consumers apply all of the rank at alpha / rank
    expected = base + x @ (parts["lora_up.weight"] @ parts["lora_down.weight"]).T * (parts["alpha"] / 4)
    with torch.no_grad():
        for _ in range(5):  # LyCORIS alone draws a rank per call, evaluated or not
            torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)
        network.train()
        assert len({module(x).sum().item() for _ in range(12)}) > 1


def test_a_run_s_network_args_become_the_adapters_options():
    """adapter_kind: DoRA's dora_scale per input column unless wd_on_output is given (the layout A1111,
    ComfyUI and Forge read alike), the dropouts and LoKr's factor passed through to LyCORIS."""
    from loracraft.config.load import build_config
    from loracraft.networks.algorithms import adapter_kind
    from loracraft.networks.network_spec import network_spec

    def kind(*args: str, **flags):
        config = build_config({}, {"network_module": "lycoris.kohya", "network_args": list(args), **flags})
        return adapter_kind(network_spec(config))

    dora = kind("algo=locon", "dora_wd=True")
    assert dora.options["weight_decompose"] is True and dora.options["wd_on_out"] is False
    assert kind("algo=locon", "dora_wd=True", "wd_on_output=True").options["wd_on_out"] is True
    assert "weight_decompose" not in kind("algo=locon").options
    dropped = kind("algo=loha", "rank_dropout=0.2", "module_dropout=0.1", network_dropout=0.3)
    assert (dropped.dropout, dropped.rank_dropout, dropped.module_dropout) == (0.3, 0.2, 0.1)
    assert kind("algo=lokr", "factor=8").options["factor"] == 8
