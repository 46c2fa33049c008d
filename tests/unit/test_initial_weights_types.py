"""--network_weights / --dim_from_weights for every network type (networks/initial_weights.py): a file of
each type, read as LyCORIS' own loader reads it, rebuilds the network it came from (each module at its
own rank with --dim_from_weights, as kohya's create_network_from_weights builds it) and loads into it so
the network computes exactly what the file's did; a file of another type or with other options is one
line naming the setting to change."""

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from lycoris.modules import LoConModule, get_module, make_module
from safetensors.torch import load_file
from torch import nn

from loracraft.config.load import build_config
from loracraft.errors import UserError
from loracraft.networks.algorithms import adapter_kind
from loracraft.networks.initial_weights import InitialWeights
from loracraft.networks.kohya_oft import build_kohya_oft_network
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from loracraft.networks.network_spec import OFT, network_spec
from loracraft.networks.target_selection import TargetChoice
from model_helpers import tiny_family_modules

RANK, ALPHA = 4, 2.0


def lycoris(*args: str, **flags) -> dict:
    return {"network_module": "lycoris.kohya", "network_args": list(args), **flags}


# Every type and option whose file a run may start from; each is rebuilt from its file (a few seconds each).
TYPES = {
    "lora": {},
    "kohya-locon": {"network_args": ["conv_dim=2", "conv_alpha=1"]},  # rank 4 and 2, alpha 2 and 1
    "locon-tucker": lycoris("algo=locon", "use_tucker=True"),  # LyCORIS' targets: conv_in, time embedding...
    "dora": lycoris("algo=locon", "dora_wd=True"),
    "loha-tucker": lycoris("algo=loha", "use_tucker=True"),
    "loha-norms": lycoris("algo=loha", "train_norm=True"),
    "lokr": lycoris("algo=lokr", "factor=4"),  # full Kronecker factors on the narrow layers, a rank on fc1
    "ia3": lycoris("algo=ia3", "train_on_input=True"),
    "dylora": lycoris("algo=dylora", "block_size=2"),  # the file's alpha: 2 x block_size
    "glora": lycoris("algo=glora"),
    "diag-oft": lycoris("algo=diag-oft", "constraint=0.001", "rescaled=True"),
    "boft": lycoris("algo=boft", network_train_unet_only=True),  # BOFT cannot split the TE's width 37
    "full": lycoris("algo=full"),
    "kohya-oft": {"network_module": "networks.oft", "network_alpha": 0.5},  # U-Net only
}
# Runs the tests of other options start from, or make files with.
VARIANTS = {
    "locon": lycoris("algo=locon"),
    "loha": lycoris("algo=loha"),
    "kohya-oft-conv": {**TYPES["kohya-oft"], "network_args": ["enable_conv=True"]},
}
FILE_TYPES = {label: label for label in ("kohya-oft", "ia3", "glora", "diag-oft", "boft", "full", "lokr")}
FILE_TYPES |= {"loha-tucker": "loha", "loha-norms": "loha"}
# Files LyCORIS' own loader fails on: IA3's make_module_from_state_dict takes the weight alone but is given
# on_input too; DoRA's dora_scale per input column (what loracraft writes) is rebuilt per output row; kohya's
# OFT is not LyCORIS' (its oft_unet_ names).
LYCORIS_CANNOT_READ = ("ia3", "dora", "kohya-oft")


def config(label: str, **flags):
    """The type's run config, at --network_dim 4 and --network_alpha 2 unless `flags` say otherwise (a
    flag given as None is left out)."""
    values = {"network_dim": RANK, "network_alpha": ALPHA, **(TYPES | VARIANTS)[label], **flags}
    return build_config({}, {key: value for key, value in values.items() if value is not None})


def build_on(run, from_file=None) -> LoRANetwork:
    """The run's network on fresh tiny SD1 modules (the same base weights each time); `from_file` as
    --dim_from_weights passes it."""
    spec = network_spec(run)
    unet, text_encoders = tiny_family_modules("sd1")
    if spec.module == OFT:  # kohya's OFT: one block count for every module, as kohya builds it
        return build_kohya_oft_network(unet, "sd1", spec, run.network_rank)
    try:
        network = build_lora_network(
            unet, text_encoders, "sd1", rank=run.network_rank, alpha=run.network_alpha,
            train_text_encoder=run.train_text_encoder, kind=adapter_kind(spec), conv_dim=spec.conv_dim,
            conv_alpha=spec.conv_alpha, from_file=from_file, choice=TargetChoice.of(spec),
        )  # fmt: skip
    except UserError as error:
        if "needs lycoris-lora" in str(error):  # BOFT on the lowest supported LyCORIS
            pytest.skip(str(error))
        raise
    return network


def randomized(network: LoRANetwork) -> LoRANetwork:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return network


def computed(network: LoRANetwork) -> list[torch.Tensor]:
    """What each targeted layer computes on a random input, with the network applied (eval mode)."""
    network.apply()
    network.eval()
    return layer_outputs(network)


def layer_outputs(network: LoRANetwork) -> list[torch.Tensor]:
    """Each targeted layer's output on a random input, in the network's module order (before `apply`:
    the base model's)."""
    random.seed(0)  # LyCORIS' DyLoRA computes with a random part of its rank, in eval mode too
    generator = torch.Generator().manual_seed(2)
    outputs = []
    with torch.no_grad():
        for name in network.names:
            layer = network.adapter(name).org_module[0]
            outputs.append(layer(torch.randn(input_shape(layer), generator=generator)))
    return outputs


def input_shape(layer: nn.Module) -> tuple[int, ...]:
    if isinstance(layer, nn.Linear):
        return (1, layer.in_features)
    if isinstance(layer, nn.LayerNorm):
        return (1, *layer.normalized_shape)
    channels = layer.num_channels if isinstance(layer, nn.GroupNorm) else layer.in_channels
    return (1, channels, 4, 4)


def file_of(label: str, folder: Path) -> tuple[Path, list[torch.Tensor]]:
    """A file of the type `label` from a randomised network, and what its layers compute."""
    network = randomized(build_on(config(label)))
    base = layer_outputs(network)
    expected = computed(network)
    # the file changes what every layer computes (a loader that dropped a module would fail the test)
    assert not any(torch.equal(got, before) for got, before in zip(expected, base, strict=True))
    path = folder / f"{label}.safetensors"
    save_lora_file(network.kohya_state_dict(), path)  # applied, as training saves it (full: the difference)
    return path, expected


def same_tensors(network: LoRANetwork, file: dict[str, torch.Tensor]) -> bool:
    state = network.kohya_state_dict()
    return state.keys() == file.keys() and all(torch.equal(state[key], value) for key, value in file.items())


@pytest.mark.parametrize("label", list(TYPES))
def test_a_file_of_each_type_rebuilds_its_network_and_computes_what_it_did(tmp_path, label):
    path, expected = file_of(label, tmp_path)
    weights = InitialWeights.read(str(path), "sd1")
    assert weights.algo == FILE_TYPES.get(label, "lora")
    file = load_file(str(path))

    # --dim_from_weights: the file's modules at the file's ranks (--network_dim 8 says otherwise)
    run, _ = weights.run_settings(
        config(label, network_weights=str(path), dim_from_weights=True, network_dim=8)
    )
    network = build_on(run, weights.module_ranks())
    weights.load_into(network)
    assert all(torch.equal(got, want) for got, want in zip(computed(network), expected, strict=True))
    assert same_tensors(network, file)

    # the run's own settings build the same network
    run, notes = weights.run_settings(config(label, network_weights=str(path)))
    assert notes == ()  # the file's rank and alpha are the run's (DyLoRA's file alpha: x block_size)
    network = build_on(run)
    weights.load_into(network)
    if label not in LYCORIS_CANNOT_READ:
        assert_lycoris_reads_the_same(path, network, weights)
    network.apply()  # LyCORIS' full module writes its difference to the base weight once applied
    assert same_tensors(network, file)


def assert_lycoris_reads_the_same(path: Path, network: LoRANetwork, weights: InitialWeights) -> None:
    """LyCORIS' own reading of each module of the file (create_network_from_weights: get_module, then
    make_module_from_state_dict) finds the module class and rank loracraft reads."""
    state = load_file(str(path))
    for name in network.names:
        module_class, params = get_module(state, name)
        assert module_class is (LoConModule if weights.algo == "lora" else type(network.adapter(name))), name
        rank = getattr(
            make_module(module_class, params, name, network.adapter(name).org_module[0]), "lora_dim", None
        )
        size = weights.sizes[name]
        full_lokr = {"lokr_w1", "lokr_w2"} <= set(weights.modules[name])  # LyCORIS rebuilds it at rank 1
        if size.ranked and not full_lokr:
            assert rank == size.dim, name


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """label -> the file of a randomised network of that type (written once, on first use)."""
    folder, written = tmp_path_factory.mktemp("types"), {}

    def file(label: str) -> Path:
        if label not in written:
            network = randomized(build_on(config(label)))
            network.apply()
            written[label] = folder / f"{label}.safetensors"
            save_lora_file(network.kohya_state_dict(), written[label])
        return written[label]

    return file


def loaded(path: Path, label: str, **flags) -> tuple[LoRANetwork, tuple[str, ...]]:
    """The network of a run of type `label` with --network_weights `path` (and `flags`), loaded; its notes."""
    weights = InitialWeights.read(str(path), "sd1")
    run, notes = weights.run_settings(config(label, network_weights=str(path), **flags))
    network = build_on(run, weights.module_ranks() if run.dim_from_weights else None)
    weights.load_into(network)
    return network, notes


OTHER_SETTINGS = {
    "LoHa file, LoRA run": (
        "loha", "lora", {},
        "{path} is a LoHa file, but this run trains LoRA/LoCon (--network_module networks.lora): set "
        "--network_module lycoris.kohya --network_args algo=loha",
    ),
    "LoRA file, LoHa run": (
        "lora", "loha", {},
        "{path} is a LoRA/LoCon file, but this run trains LoHa (--network_module lycoris.kohya --network_args "
        "algo=loha): set --network_module networks.lora, or lycoris.kohya with --network_args algo=locon",
    ),
    "IA3 file, full run": (
        "ia3", "full", {},
        "{path} is an IA3 file, but this run trains full fine-tuning (--network_module lycoris.kohya "
        "--network_args algo=full): set --network_module lycoris.kohya --network_args algo=ia3",
    ),
    "Tucker file, LoCon run": (
        "locon-tucker", "locon", {},
        "{path} has Tucker parts (lora_unet_conv_in.lora_mid.weight): add "
        "--network_args use_tucker=True",
    ),
    "Tucker file, kohya LoCon run": (
        "locon-tucker", "kohya-locon", {},
        "{path} has Tucker parts (lora_unet_conv_in.lora_mid.weight): set "
        "--network_module lycoris.kohya --network_args algo=locon use_tucker=True",
    ),
    "LoCon file, Tucker run": (
        "locon", "locon-tucker", {},
        "{path} has 3x3 convolutions without Tucker parts (lora_unet_conv_in): "
        "leave use_tucker out",
    ),
    "LoHa file, LoHa Tucker run": (
        "loha", "loha-tucker", {},
        "{path}: lora_unet_conv_in has no Tucker part, unlike this run's adapter "
        "(hada_t1, hada_t2): leave use_tucker out",
    ),
    "DoRA file, LoCon run": (
        "dora", "locon", {},
        "{path} has DoRA's dora_scale (lora_te_text_model_encoder_layers_0_mlp_fc1.dora_scale): add "
        "--network_args dora_wd=True",
    ),
    "LoCon file, DoRA run": (
        "locon", "dora", {},
        "{path} has no dora_scale (it is not DoRA), but this run trains DoRA: leave dora_wd out",
    ),
    "DoRA file, DoRA run on output rows": (
        "dora", "dora", {"network_args": ["algo=locon", "dora_wd=True", "wd_on_output=True"]},
        "{path} keeps DoRA's dora_scale per input column (lora_te_text_model_encoder_layers_0_mlp_fc1): set "
        "--network_args wd_on_output=False",
    ),
    "IA3 file on inputs, IA3 run on outputs": (
        "ia3", "ia3", {"network_args": ["algo=ia3"]},
        "{path} scales each layer's input (on_input): set --network_args train_on_input=True",
    ),
    "Diag-OFT file, other constraint": (
        "diag-oft", "diag-oft", {"network_args": ["algo=diag-oft", "rescaled=True"]},
        "{path} has constraint 0.001 (its alpha), but this run's is 0: set --network_args constraint=0.001",
    ),
    "Diag-OFT file, not rescaled": (
        "diag-oft", "diag-oft", {"network_args": ["algo=diag-oft", "constraint=0.001"]},
        "{path} has OFT's rescale weights: set --network_args rescaled=True",
    ),
    "DyLoRA unit not dividing the file's rank": (
        "lora", "dylora", {"network_args": ["algo=dylora", "block_size=3"], "dim_from_weights": True,
                           "network_dim": 6},
        "{path} has lora_te_text_model_encoder_layers_0_mlp_fc1 at rank 4, which DyLoRA's block_size 3 does "
        "not divide: set --network_args block_size to a divisor of every rank of the file",
    ),
    "LoHa file with norms, run without": (
        "loha-norms", "loha", {},
        "{path} has adapters on norm layers (lora_unet_down_blocks_0_attentions_0_norm): add --network_args "
        "train_norm=True",
    ),
    "LoHa file, run with norms": (
        "loha", "loha-norms", {},
        "{path} has no adapter on a norm layer, but this run trains them (train_norm=True): leave train_norm out",
    ),
    "kohya OFT file, run with enable_conv": (
        "kohya-oft", "kohya-oft-conv", {},
        "{path} has no adapter that enable_conv adds: leave enable_conv out",
    ),
    "kohya OFT file with convolutions, run without": (
        "kohya-oft-conv", "kohya-oft", {},
        "{path} has adapters that need enable_conv (e.g. oft_unet_down_blocks_0_downsamplers_0_conv): set "
        "--network_args enable_conv=True",
    ),
    "kohya LoCon file, no conv_dim": (
        "kohya-locon", "lora", {},
        "{path} has adapters on 3x3 convolutions (e.g. lora_unet_down_blocks_0_downsamplers_0_conv, rank 2), "
        "which this run does not train: add --network_args conv_dim=2 conv_alpha=1, or --dim_from_weights",
    ),
    "kohya LoCon file, other conv_dim": (
        "kohya-locon", "kohya-locon", {"network_args": ["conv_dim=3"]},
        "{path}: lora_unet_down_blocks_0_downsamplers_0_conv has rank 2, but this run builds it at rank 3 "
        "(--network_dim, conv_dim, block_dims): set them to the file's ranks, or add --dim_from_weights",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("file_label", "run_label", "flags", "message"), OTHER_SETTINGS.values(), ids=OTHER_SETTINGS
)
def test_a_file_of_another_type_or_options_is_one_line_naming_the_setting(
    files, file_label, run_label, flags, message
):
    path = files(file_label)
    with pytest.raises(UserError) as caught:
        loaded(path, run_label, **flags)
    assert str(caught.value) == "--network_weights " + message.format(path=path)


def test_dim_from_weights_builds_each_module_at_its_rank_and_alpha_as_kohya_does(files):
    """kohya's create_network_from_weights: each module's rank is its lora_down's rows, its alpha the
    file's, the 3x3 convolutions included (here a networks.lora run without conv_dim)."""
    path = files("kohya-locon")
    file = load_file(str(path))
    names = {key.partition(".")[0] for key in file}
    kohya_dims = {name: file[f"{name}.lora_down.weight"].shape[0] for name in names}
    kohya_alphas = {name: file[f"{name}.alpha"].item() for name in names}
    network, notes = loaded(path, "lora", dim_from_weights=True, network_dim=None, network_alpha=8)
    assert set(network.names) == names
    assert {name: network.adapter(name).lora_dim for name in names} == kohya_dims
    assert {name: network.adapter(name).scale for name in names} == {
        name: kohya_alphas[name] / kohya_dims[name] for name in names
    }
    ranks, alphas = Counter(kohya_dims.values()), Counter(kohya_alphas.values())
    assert set(ranks) == {4, 2} and ranks[4] > ranks[2] and set(alphas) == {2.0, 1.0}
    assert notes == (
        f"--dim_from_weights: {path} has a rank per module (4 on {ranks[4]} modules, 2 on {ranks[2]} modules): "
        "each module trains at its own, as kohya builds them; --network_dim records 4, the rank of most modules",
        f"--network_weights {path} has an alpha per module (2 on {alphas[2.0]} modules, 1 on {alphas[1.0]} "
        "modules): training keeps each module's, not --network_alpha 8, so the network starts out computing "
        "what the file does; the saved files record them (ss_network_alpha 2, the alpha of most modules)",
    )
    weights = InitialWeights.read(str(path), "sd1")
    assert weights.per_module_ranks and (weights.rank, weights.alpha) == (4, 2.0)


def test_a_file_of_several_types_is_refused(files, tmp_path):
    lora, loha = load_file(str(files("lora"))), load_file(str(files("loha")))
    name = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    mixed = {key: value for key, value in lora.items() if not key.startswith(name)}
    mixed |= {key: value for key, value in loha.items() if key.startswith(name)}
    path = tmp_path / "mixed.safetensors"
    save_lora_file(mixed, path)
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(path), "sd1")
    assert str(caught.value) == (
        f"--network_weights {path} holds modules of several types ({name}: LoHa, "
        "lora_te_text_model_encoder_layers_0_mlp_fc2: LoRA/LoCon); loracraft trains one type per network: "
        "start from a file of one type"
    )


def test_parts_of_no_type_loracraft_trains_are_refused(tmp_path):
    path = tmp_path / "peft.safetensors"  # PEFT's names for a LoRA's matrices
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_lora_file(
        {f"{name}.lora_A.weight": torch.ones(4, 32), f"{name}.lora_B.weight": torch.zeros(32, 4)}, path
    )
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(path), "sd1")
    assert str(caught.value) == (
        f"--network_weights {path}: {name} has parts of no network type loracraft trains (lora_A.weight, "
        "lora_B.weight); give a kohya LoRA or LyCORIS file"
    )


KOHYA_OFT_Q = "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def test_a_kohya_oft_file_is_told_by_its_names_with_its_block_count_and_constraint(tmp_path):
    # kohya's networks.oft writes NAME.oft_blocks [blocks, size, size] and NAME.alpha (the constraint)
    path = tmp_path / "oft.safetensors"
    save_lora_file(
        {f"{KOHYA_OFT_Q}.oft_blocks": torch.zeros(4, 8, 8), f"{KOHYA_OFT_Q}.alpha": torch.tensor(1e-3)}, path
    )
    weights = InitialWeights.read(str(path), "sd1")
    assert weights.algo == "kohya-oft"
    assert weights.module_ranks() == {KOHYA_OFT_Q: (4, pytest.approx(1e-3))}
    with pytest.raises(UserError) as caught:
        weights.run_settings(config("lora", network_weights=str(path)))
    assert str(caught.value) == (
        f"--network_weights {path} is a kohya OFT file, but this run trains LoRA/LoCon (--network_module "
        "networks.lora): set --network_module networks.oft"
    )


def test_a_kohya_oft_file_for_sdxl_is_refused_on_sd1(tmp_path):
    path = tmp_path / "oft_xl.safetensors"
    name = "oft_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_lora_file({f"{name}.oft_blocks": torch.zeros(4, 16, 16), f"{name}.alpha": torch.tensor(1e-3)}, path)
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(path), "sd1")
    assert str(caught.value) == (
        f"--network_weights {path} is a LoRA for SDXL models (its names are like {name}), but the base model "
        "is SD1.x: use a LoRA made for an SD1.x model"
    )
