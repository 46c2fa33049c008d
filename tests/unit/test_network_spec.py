"""--network_module and --network_args read into a NetworkSpec: each module name and the algorithm it
trains, every key with its type and defaults (kohya's networks.lora/dylora/oft, LyCORIS' lycoris.kohya),
the exact one-line message for each mistake, ss_network_args as kohya's train_network.py records it, and
every kohya_ss GUI "LoRA type" landing on the network the GUI would train."""

import json

import pytest

from loracraft.config.importers import import_config
from loracraft.config.load import build_config
from loracraft.config.network_options import NetworkOptions
from loracraft.errors import UserError
from loracraft.networks.network_spec import GUI_LORA_TYPES, NetworkSpec, network_spec, recorded_network_args


def spec(module: str = "networks.lora", *args: str, **flags: object) -> NetworkSpec:
    return network_spec(build_config({}, {"network_module": module, "network_args": list(args), **flags}))


def refusal(**flags: object) -> str:
    with pytest.raises(UserError) as refused:
        build_config({}, flags)
    return str(refused.value)


def test_the_default_is_kohyas_plain_lora():
    assert spec() == NetworkSpec(module="networks.lora", algo="lora")


@pytest.mark.parametrize(
    ("module", "algo"),
    [
        ("networks.lora", "lora"),
        ("networks.dylora", "dylora"),
        ("networks.oft", "diag-oft"),
        ("lycoris.kohya", "lora"),
    ],
)
def test_each_module_trains_its_algorithm(module, algo):
    assert (spec(module).module, spec(module).algo) == (module, algo)


@pytest.mark.parametrize(
    "algo", ["lora", "locon", "loha", "lokr", "ia3", "dylora", "glora", "diag-oft", "boft", "full"]
)
def test_lycoris_trains_the_algo_it_is_given(algo):
    assert spec("lycoris.kohya", f"algo={algo.upper()}").algo == algo  # LyCORIS lowercases the name


def test_networks_lora_with_convolutions_is_kohyas_locon():
    assert (spec("networks.lora", "conv_dim=8").algo, spec().conv_dim) == ("locon", None)
    locon = spec("networks.lora", "conv_dim=8")
    assert (locon.conv_dim, locon.conv_alpha) == (8, 1.0)  # kohya's conv_alpha default
    assert spec("networks.lora", "conv_dim=8", "conv_alpha=4").conv_alpha == 4.0
    assert spec("networks.lora", "conv_block_dims=" + ",".join(["4"] * 25)).algo == "locon"
    # conv_dim=0: no conv adapters (kohya would build rank-0 modules)
    assert (spec("networks.lora", "conv_dim=0").algo, spec("networks.lora", "conv_dim=0").conv_dim) == (
        "lora",
        None,
    )


def test_lycoris_conv_rank_defaults_to_the_network_rank_and_alpha():
    default = spec("lycoris.kohya", network_dim=16, network_alpha=8)
    assert (default.conv_dim, default.conv_alpha) == (16, 8.0)
    given = spec("lycoris.kohya", "algo=loha", "conv_dim=4", "conv_alpha=2", network_dim=16)
    assert (given.conv_dim, given.conv_alpha) == (4, 2.0)
    zero = spec("lycoris.kohya", "conv_dim=0", "conv_alpha=0", network_dim=16, network_alpha=8)
    assert (zero.conv_dim, zero.conv_alpha) == (16, 8.0)  # LyCORIS: `conv_dim or network_dim`
    # IA3 and full have no rank, yet LyCORIS adapts their convolutions: they hold the (unused) network rank.
    assert (
        spec("lycoris.kohya", "algo=ia3", network_dim=16).conv_dim,
        spec("lycoris.kohya", "algo=full").conv_alpha,
    ) == (
        16,
        1.0,
    )


def test_networks_dylora_convolutions_and_unit():
    dylora = spec("networks.dylora", "conv_dim=8", "unit=2", network_dim=8)
    assert (dylora.conv_dim, dylora.conv_alpha, dylora.dylora_unit) == (8, 1.0, 2)
    assert (spec("networks.dylora").conv_dim, spec("networks.dylora").dylora_unit) == (None, 1)
    assert spec("lycoris.kohya", "algo=dylora", network_dim=8).dylora_unit == 4  # LyCORIS' block_size default
    assert spec("lycoris.kohya", "algo=dylora", "block_size=2", network_dim=8).dylora_unit == 2


def test_networks_oft_takes_its_constraint_from_network_alpha():
    oft = spec("networks.oft", "enable_all_linear=True", "enable_conv=true", network_alpha=1e-3)
    assert (oft.algo, oft.constraint, oft.enable_all_linear, oft.enable_conv) == (
        "diag-oft",
        1e-3,
        True,
        True,
    )
    assert (spec("networks.oft").enable_all_linear, spec("networks.oft").conv_dim) == (False, None)


# Each key with the spec field it sets and the value it reads.
LYCORIS_KEYS = [
    (("algo=loha", "use_tucker=True"), "use_tucker", True),
    (("algo=lokr", "use_cp=True"), "use_tucker", True),
    (("algo=lokr", "use_conv_cp=yes"), "use_tucker", True),
    (("algo=lokr", "disable_conv_cp=False"), "use_tucker", True),
    (("algo=lokr", "disable_conv_cp=True"), "use_tucker", False),
    # LyCORIS lets a false use_cp override use_tucker=True (the kohya_ss GUI passes both for LoKr)
    (("algo=lokr", "use_tucker=True", "use_cp=False"), "use_tucker", True),
    (("algo=locon", "use_scalar=1"), "use_scalar", True),
    (("algo=lokr", "factor=8"), "factor", 8),
    (("algo=lokr", "factor=-1"), "factor", -1),
    (("algo=lokr", "decompose_both=True"), "decompose_both", True),
    (("algo=lokr", "full_matrix=True"), "full_matrix", True),
    (("algo=glora", "rank_dropout_scale=True"), "rank_dropout_scale", True),
    (("algo=lora", "dora_wd=True"), "dora_wd", True),
    (("algo=loha", "dora_wd=True", "wd_on_output=False"), "wd_on_output", False),
    (("algo=diag-oft", "constraint=1e-4"), "constraint", 1e-4),
    (("algo=boft", "constrain=0.001"), "constraint", 0.001),  # LyCORIS' old spelling
    (("algo=diag-oft", "rescaled=True"), "rescaled", True),
    (("algo=full", "train_norm=True"), "train_norm", True),
    (("algo=loha", "bypass_mode=False"), "bypass_mode", False),
    (("algo=locon", "bypass_mode=True"), "bypass_mode", True),
    (("algo=ia3", "train_on_input=True"), "train_on_input", True),
    (("preset=attn-mlp",), "preset", "attn-mlp"),
    (("preset=my presets/unet.TOML",), "preset", "my presets/unet.TOML"),
    (("rank_dropout=0.25",), "rank_dropout", 0.25),
    (("module_dropout=0.1",), "module_dropout", 0.1),
    (("dropout=0.1",), "dropout", 0.1),
]
KOHYA_KEYS = [
    (("rank_dropout=0.1",), "rank_dropout", 0.1),
    (("module_dropout=0.2",), "module_dropout", 0.2),
    (("dropout=0.3",), "dropout", 0.3),
    (("loraplus_lr_ratio=16",), "loraplus_lr_ratio", 16.0),
    (("loraplus_unet_lr_ratio=8",), "loraplus_unet_lr_ratio", 8.0),
    (("loraplus_text_encoder_lr_ratio=4",), "loraplus_text_encoder_lr_ratio", 4.0),
    (
        ("target_module=['Transformer2DModel', 'CLIPMLP']",),
        "target_module",
        ("Transformer2DModel", "CLIPMLP"),
    ),
    (("target_module=Transformer2DModel",), "target_module", ("Transformer2DModel",)),
    (("exclude_patterns=['.*attn2.*', '.*ff_net.*']",), "exclude_patterns", (".*attn2.*", ".*ff_net.*")),
    (("exclude_patterns='.*attn2.*'",), "exclude_patterns", (".*attn2.*",)),
    (("exclude_patterns=.*attn2.*",), "exclude_patterns", (".*attn2.*",)),  # kohya stops on the unquoted one
    (("include_patterns=['.*attn2_to_k']",), "include_patterns", (".*attn2_to_k",)),
]


@pytest.mark.parametrize(("args", "name", "value"), LYCORIS_KEYS)
def test_each_lycoris_key(args, name, value):
    assert getattr(spec("lycoris.kohya", *args), name) == value


@pytest.mark.parametrize(("args", "name", "value"), KOHYA_KEYS)
def test_each_networks_lora_key(args, name, value):
    assert getattr(spec("networks.lora", *args), name) == value


def test_the_defaults_of_keys_not_given():
    lycoris = spec("lycoris.kohya")
    assert (lycoris.bypass_mode, lycoris.wd_on_output, lycoris.factor, lycoris.preset) == (
        None,
        True,
        -1,
        "full",
    )
    assert (lycoris.rank_dropout, lycoris.module_dropout, lycoris.dropout, lycoris.constraint) == (
        0.0,
        0.0,
        None,
        0.0,
    )
    assert (lycoris.loraplus_lr_ratio, lycoris.target_module, lycoris.blocks) == (None, (), {})


BLOCK_ARGS = (
    "down_lr_weight=sine+.5", "mid_lr_weight=2", "up_lr_weight=1,1,1,1,1,1,1,1,1,1,1,0",
    "block_lr_zero_threshold=0.1", "block_lr=" + ",".join(["1e-4"] * 23), "block_dims=" + ",".join(["8"] * 25),
    "block_alphas=" + ",".join(["4"] * 25), "conv_block_dims=" + ",".join(["4"] * 25),
    "conv_block_alphas=" + ",".join(["1"] * 25),
)  # fmt: skip


@pytest.mark.parametrize("module", ["networks.lora", "networks.dylora", "lycoris.kohya"])
def test_block_keys_are_kept_as_given(module):
    network = spec(module, "conv_dim=8", *BLOCK_ARGS, network_dim=8)
    assert network.blocks == dict(arg.split("=", 1) for arg in BLOCK_ARGS)


def test_block_lr_weights_apply_to_oft_and_ia3_but_block_ranks_do_not():
    assert spec("networks.oft", "down_lr_weight=zeros").blocks == {"down_lr_weight": "zeros"}
    assert spec("lycoris.kohya", "algo=ia3", "mid_lr_weight=0").blocks == {"mid_lr_weight": "0"}


def test_network_dropout_is_the_neuron_dropout_unless_the_args_give_it():
    assert spec(network_dropout=0.1).dropout == 0.1
    assert spec("lycoris.kohya", "dropout=0.2").dropout == 0.2
    assert spec("networks.lora", "dropout=0.2", network_dropout=0.2).dropout == 0.2


def test_given_keeps_the_args_as_written_and_the_last_of_a_repeated_key():
    network = spec("lycoris.kohya", "algo=loha", " conv_dim = 4 ", "algo=LoKr")
    assert network.given == {"algo": "LoKr", "conv_dim": "4"} and network.algo == "lokr"


def test_a_key_that_does_not_apply_is_accepted_at_its_default():
    # The kohya_ss GUI prints use_tucker=False and constraint for types that do not use them.
    assert spec("lycoris.kohya", "algo=boft", "use_tucker=False", "factor=-1").use_tucker is False
    assert spec("networks.lora", "algo=lora").algo == "lora"


ERRORS = [
    ({"network_args": ["conv_dim"]}, "--network_args 'conv_dim': not KEY=VALUE; e.g. conv_dim=8"),
    ({"network_args": ["=4"]}, "--network_args '=4': not KEY=VALUE; e.g. conv_dim=8"),
    (
        {"network_args": ["conv_dimm=4"]},
        "--network_args conv_dimm: unknown key (did you mean conv_dim?); `loracraft train --help` lists the keys "
        "under --network_args",
    ),
    (
        {"network_args": ["rs_lora=True"]},
        "--network_args rs_lora: unknown key; `loracraft train --help` lists the keys under --network_args",
    ),
    (
        {"network_args": ["conv_dim=eight"]},
        "--network_args conv_dim: 'eight' is not a whole number of 0 or more; e.g. conv_dim=8",
    ),
    (
        {"network_args": ["conv_dim=4.5"]},
        "--network_args conv_dim: '4.5' is not a whole number of 0 or more; e.g. conv_dim=8",
    ),
    (
        {"network_args": ["conv_alpha=-1"]},
        "--network_args conv_alpha: '-1' is not a number of 0 or more; e.g. conv_alpha=4",
    ),
    (
        {"network_args": ["rank_dropout=1"]},
        "--network_args rank_dropout: '1' is not a number from 0 to below 1; e.g. rank_dropout=0.1",
    ),
    (
        {"network_args": ["module_dropout=nan"]},
        "--network_args module_dropout: 'nan' is not a number from 0 to below 1; e.g. module_dropout=0.1",
    ),
    (
        {"network_args": ["loraplus_lr_ratio=0"]},
        "--network_args loraplus_lr_ratio: '0' is not a number above 0; e.g. loraplus_lr_ratio=16",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["use_tucker=maybe"]},
        "--network_args use_tucker: 'maybe' is not true or false; e.g. use_tucker=True",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=lokr", "factor=0"]},
        "--network_args factor: '0' is not -1 (LyCORIS chooses) or a whole number of 1 or more; e.g. factor=8",
    ),
    (
        {"network_module": "networks.dylora", "network_args": ["unit=0"]},
        "--network_args unit: '0' is not a whole number of 1 or more; e.g. unit=4",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=lohaa"]},
        "--network_args algo: 'lohaa' is not a LyCORIS algorithm loracraft trains (did you mean loha?); choose lora, "
        "locon, loha, lokr, ia3, dylora, glora, diag-oft, boft or full",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=tlora"]},
        "--network_args algo: 'tlora' is not a LyCORIS algorithm loracraft trains (did you mean lora?); choose lora, "
        "locon, loha, lokr, ia3, dylora, glora, diag-oft, boft or full",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["preset=ful"]},
        "--network_args preset: 'ful' is not a LyCORIS preset loracraft trains (did you mean full?); choose full, "
        "full-lin, attn-mlp, attn-only, unet-only, unet-transformer-only, unet-convblock-only or a preset .toml file",
    ),
    (
        {"network_args": ["exclude_patterns=[.*attn2"]},
        "--network_args exclude_patterns: '[.*attn2' is not a regular expression or a Python list of them; "
        "e.g. exclude_patterns=['.*attn2.*']",
    ),
    (
        {"network_args": ["include_patterns=['(attn']"]},
        "--network_args include_patterns: '(attn' is not a regular expression (missing ), unterminated subpattern "
        "at position 0); e.g. include_patterns=['.*attn2_to_k']",
    ),
    (
        {"network_args": ["target_module=['to_q.weight']"]},
        "--network_args target_module: 'to_q.weight' is not a module class name; e.g. target_module=['Transformer2DModel']",
    ),
    (
        {"network_args": ["algo=loha"]},
        "--network_args algo: a key of lycoris.kohya, not of networks.lora; use --network_module lycoris.kohya or "
        "remove it",
    ),
    (
        {"network_args": ["dora_wd=True"]},
        "--network_args dora_wd: a key of lycoris.kohya, not of networks.lora; use --network_module lycoris.kohya or "
        "remove it",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=dylora", "unit=4"]},
        "--network_args unit: a key of networks.dylora, not of lycoris.kohya; use --network_module networks.dylora or "
        "remove it; lycoris.kohya names it block_size",
    ),
    (
        {"network_module": "networks.dylora", "network_args": ["block_size=2"]},
        "--network_args block_size: a key of lycoris.kohya, not of networks.dylora; use --network_module "
        "lycoris.kohya or remove it; networks.dylora names it unit",
    ),
    (
        {"network_module": "networks.oft", "network_args": ["conv_dim=4"]},
        "--network_args conv_dim: a key of networks.lora, networks.dylora and lycoris.kohya, not of networks.oft; "
        "use --network_module networks.lora or remove it",
    ),
    (
        {"network_args": ["enable_conv=True"]},
        "--network_args enable_conv: a key of networks.oft, not of networks.lora; use --network_module networks.oft "
        "or remove it",
    ),
    (
        {"network_module": "networks.oft", "network_args": ["block_dims=" + ",".join(["4"] * 25)]},
        "--network_args block_dims: a key of networks.lora, networks.dylora and lycoris.kohya, not of networks.oft; "
        "use --network_module networks.lora or remove it",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=loha", "factor=4"]},
        "--network_args factor: does nothing for algo loha (it applies to lokr); remove it",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=boft", "use_tucker=True"]},
        "--network_args use_tucker: does nothing for algo boft (it applies to lora, locon, loha and lokr); remove it",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=lokr", "rescaled=True"]},
        "--network_args rescaled: does nothing for algo lokr (it applies to diag-oft and boft); remove it",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=ia3", "conv_dim=8"]},
        "--network_args conv_dim: does nothing for algo ia3 (it applies to lora, locon, loha, lokr, dylora, glora, "
        "diag-oft and boft); remove it",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=loha", "loraplus_lr_ratio=16"]},
        "--network_args loraplus_lr_ratio: does nothing for algo loha (it applies to lora, locon and dylora); "
        "remove it",
    ),
    (
        {
            "network_module": "lycoris.kohya",
            "network_args": ["algo=full", "block_dims=" + ",".join(["4"] * 25)],
        },
        "--network_args block_dims: does nothing for algo full (it applies to lora, locon, loha, lokr, dylora and "
        "glora); remove it",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=loha", "wd_on_output=False"]},
        "--network_args wd_on_output: sets the axis of DoRA's weight norm; add dora_wd=True or remove it",
    ),
    (
        {"network_args": ["dropout=0.2"], "network_dropout": 0.1},
        "--network_args dropout: 0.2 and --network_dropout 0.1 both set the neuron dropout; keep one",
    ),
    (
        {"network_module": "networks.dylora", "network_args": ["conv_dim=8"]},
        "--network_args conv_dim: networks.dylora needs conv_dim equal to --network_dim (4); give conv_dim=4 or "
        "remove it",
    ),
    (
        {"network_module": "networks.dylora", "network_args": ["unit=3"], "network_dim": 8},
        "--network_args unit: DyLoRA trains the rank in steps of 3 and --network_dim 8 is not a multiple of it; "
        "give a unit that divides 8",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=dylora"], "network_dim": 6},
        "--network_args block_size: DyLoRA trains the rank in steps of 4 (block_size's default) and --network_dim 6 "
        "is not a multiple of it; give a block_size that divides 6",
    ),
    (
        {"network_module": "lycoris.kohya", "network_args": ["algo=dylora", "conv_dim=6"], "network_dim": 8},
        "--network_args block_size: DyLoRA trains the rank in steps of 4 (block_size's default) and conv_dim 6 is "
        "not a multiple of it; give a block_size that divides 6",
    ),
    (
        {"network_module": "networks.lora_flux"},
        "--network_module: Input should be 'networks.lora', 'networks.dylora', 'networks.oft' or 'lycoris.kohya' "
        "(got 'networks.lora_flux')",
    ),
    (
        {"network_module": "networks.lora_fa"},
        "--network_module: LoRA-FA (a LoRA whose lora_down stays frozen) is not supported; use networks.lora "
        "(got 'networks.lora_fa')",
    ),
    (
        {"network_module": "networks.loha"},
        "--network_module: kohya's native LoHa: use lycoris.kohya with --network_args algo=loha, the same LoHa "
        "(got 'networks.loha')",
    ),
    (
        {"network_module": "networks.lokr"},
        "--network_module: kohya's native LoKr: use lycoris.kohya with --network_args algo=lokr, the same LoKr "
        "(got 'networks.lokr')",
    ),
    (
        {"network_module": "locon.locon_kohya"},
        "--network_module: the old LoCon extension: use networks.lora with --network_args conv_dim=N "
        "(got 'locon.locon_kohya')",
    ),
    ({"network_dropout": 1}, "--network_dropout: Input should be less than 1 (got 1)"),
    ({"scale_weight_norms": -1}, "--scale_weight_norms: Input should be greater than or equal to 0 (got -1)"),
]


@pytest.mark.parametrize(("flags", "message"), ERRORS)
def test_each_mistake_is_one_line_naming_the_key_and_the_fix(flags, message):
    assert refusal(**flags) == message


def test_the_rank_checks_wait_for_a_rank_from_the_weights_file():
    config = build_config(
        {},
        {
            "network_module": "networks.dylora",
            "network_args": ["unit=3"],
            "network_weights": "start.safetensors",
            "dim_from_weights": True,
        },
    )
    assert network_spec(config).dylora_unit == 3


def test_network_spec_itself_raises_a_user_error():
    unchecked = NetworkOptions.model_construct(network_module="lycoris.kohya", network_args=["algo=x"])
    with pytest.raises(UserError, match=r"^--network_args algo: 'x' is not a LyCORIS algorithm"):
        network_spec(unchecked)


def test_a_toml_config_file_gets_the_same_message(tmp_path):
    from loracraft.cli import config_from_flags

    path = tmp_path / "run.toml"
    path.write_text('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "factor=4"]\n')
    with pytest.raises(UserError) as refused:
        config_from_flags(["--config_file", str(path)])
    assert (
        str(refused.value)
        == "--network_args factor: does nothing for algo loha (it applies to lokr); remove it"
    )


def test_the_command_line_reads_the_network_flags():
    from loracraft.cli import config_from_flags

    config = config_from_flags(
        ["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "factor=4", "--network_dropout", "0.1",
         "--scale_weight_norms", "1"]
    )  # fmt: skip
    assert (config.network_args, config.network_dropout, config.scale_weight_norms) == (
        ["algo=lokr", "factor=4"],
        0.1,
        1,
    )
    assert network_spec(config).factor == 4


@pytest.mark.parametrize(
    ("flags", "recorded"),
    [
        ({}, None),
        ({"network_args": ["conv_dim=4"]}, {"conv_dim": "4", "dropout": None}),
        ({"network_args": ["conv_dim=4"], "network_dropout": 0.1}, {"conv_dim": "4", "dropout": 0.1}),
        (
            {"network_module": "lycoris.kohya", "network_args": ["algo=loha", "dropout=0.2", "factor=-1"]},
            {"algo": "loha", "dropout": "0.2", "factor": "-1"},
        ),
        (
            {"network_args": ["conv_dim=4"], "network_weights": "a.safetensors", "dim_from_weights": True},
            {"conv_dim": "4"},
        ),
    ],
)
def test_ss_network_args_is_what_kohya_records(flags, recorded):
    """train_network.py: the args as strings, plus `dropout` (--network_dropout) when they do not name it and
    the rank does not come from the weights; nothing without network args."""
    assert recorded_network_args(build_config({}, flags)) == recorded
    if recorded is not None:
        assert json.dumps(recorded_network_args(build_config({}, flags))) == json.dumps(recorded)


# The kohya_ss GUI's LoRA types, every form key set away from its default, and the network args the GUI's
# train_model builds from them (lora_gui.py), less what the type does not use.
FORM = {
    "network_dim": 8, "network_alpha": 4, "LyCORIS_preset": "attn-mlp", "conv_dim": 8, "conv_alpha": 2,
    "use_tucker": True, "use_cp": True, "use_scalar": True, "rank_dropout_scale": True, "constrain": 0.001,
    "rescaled": True, "train_norm": True, "decompose_both": True, "train_on_input": True, "factor": 4,
    "bypass_mode": True, "dora_wd": True, "unit": 2, "rank_dropout": 0.1, "module_dropout": 0.2,
    "down_lr_weight": "sine", "mid_lr_weight": "", "loraplus_lr_ratio": 16,
}  # fmt: skip
LYCORIS_COMMON = ["preset=attn-mlp", "conv_dim=8", "conv_alpha=2"]
GUI_TYPES = {
    "Standard": ("networks.lora", "lora", ["down_lr_weight=sine", "rank_dropout=0.1", "module_dropout=0.2", "loraplus_lr_ratio=16"]),
    "Kohya LoCon": ("networks.lora", "locon", ["conv_dim=8", "conv_alpha=2", "down_lr_weight=sine", "rank_dropout=0.1", "module_dropout=0.2", "loraplus_lr_ratio=16"]),
    "Kohya DyLoRA": ("networks.dylora", "dylora", ["conv_dim=8", "conv_alpha=2", "down_lr_weight=sine", "unit=2", "rank_dropout=0.1", "module_dropout=0.2", "loraplus_lr_ratio=16"]),
    "LyCORIS/LoCon": ("lycoris.kohya", "locon", [*LYCORIS_COMMON, "use_tucker=True", "rank_dropout=0.1", "bypass_mode=True", "dora_wd=True", "module_dropout=0.2", "use_scalar=True", "rank_dropout_scale=True", "algo=locon", "train_norm=True", "loraplus_lr_ratio=16"]),
    "LoCon": ("lycoris.kohya", "locon", [*LYCORIS_COMMON, "use_tucker=True", "rank_dropout=0.1", "bypass_mode=True", "dora_wd=True", "module_dropout=0.2", "use_scalar=True", "rank_dropout_scale=True", "algo=locon", "train_norm=True", "loraplus_lr_ratio=16"]),
    "LyCORIS/LoHa": ("lycoris.kohya", "loha", [*LYCORIS_COMMON, "use_tucker=True", "rank_dropout=0.1", "bypass_mode=True", "dora_wd=True", "module_dropout=0.2", "use_scalar=True", "rank_dropout_scale=True", "algo=loha", "train_norm=True"]),
    "LyCORIS/LoKr": ("lycoris.kohya", "lokr", [*LYCORIS_COMMON, "use_tucker=True", "rank_dropout=0.1", "bypass_mode=True", "dora_wd=True", "module_dropout=0.2", "factor=4", "use_cp=True", "use_scalar=True", "decompose_both=True", "rank_dropout_scale=True", "algo=lokr", "train_norm=True"]),
    "LyCORIS/iA3": ("lycoris.kohya", "ia3", ["preset=attn-mlp", "train_on_input=True", "algo=ia3"]),
    "LyCORIS/DyLoRA": ("lycoris.kohya", "dylora", [*LYCORIS_COMMON, "block_size=2", "rank_dropout=0.1", "module_dropout=0.2", "algo=dylora", "train_norm=True", "loraplus_lr_ratio=16"]),
    "LyCORIS/GLoRA": ("lycoris.kohya", "glora", [*LYCORIS_COMMON, "rank_dropout=0.1", "module_dropout=0.2", "rank_dropout_scale=True", "algo=glora", "train_norm=True"]),
    "LyCORIS/Diag-OFT": ("lycoris.kohya", "diag-oft", [*LYCORIS_COMMON, "module_dropout=0.2", "rank_dropout=0.1", "rank_dropout_scale=True", "constraint=0.001", "rescaled=True", "algo=diag-oft", "train_norm=True"]),
    "LyCORIS/BOFT": ("lycoris.kohya", "boft", [*LYCORIS_COMMON, "module_dropout=0.2", "rank_dropout=0.1", "rank_dropout_scale=True", "algo=boft", "train_norm=True"]),
    "LyCORIS/Native Fine-Tuning": ("lycoris.kohya", "full", ["preset=attn-mlp", "rank_dropout=0.1", "module_dropout=0.2", "rank_dropout_scale=True", "algo=full", "train_norm=True"]),
    "Kohya LoHa": ("lycoris.kohya", "loha", ["algo=loha", "conv_dim=8", "conv_alpha=2", "use_tucker=True", "rank_dropout=0.1", "module_dropout=0.2"]),
    "Kohya LoKr": ("lycoris.kohya", "lokr", ["algo=lokr", "conv_dim=8", "conv_alpha=2", "use_tucker=True", "factor=4", "rank_dropout=0.1", "module_dropout=0.2"]),
}  # fmt: skip


def gui_import(lora_type: str, form: dict, tmp_path):
    path = tmp_path / "gui.json"
    path.write_text(json.dumps({"LoRA_type": lora_type, **form}))
    return import_config(path)


def test_every_gui_lora_type_is_listed():
    assert set(GUI_TYPES) == set(GUI_LORA_TYPES)


@pytest.mark.parametrize("lora_type", sorted(GUI_TYPES))
def test_a_gui_lora_type_lands_on_the_network_the_gui_trains(lora_type, tmp_path):
    module, algo, args = GUI_TYPES[lora_type]
    report = gui_import(lora_type, FORM, tmp_path)
    assert (report.values["network_module"], report.values["network_args"]) == (module, args)
    network = network_spec(build_config(report.values, {}))
    assert (network.module, network.algo) == (module, algo)
    assert not any(entry.lost for entry in report.ignored)


def test_what_a_lycoris_type_does_not_use_is_left_out_with_the_reason(tmp_path):
    ignored = {entry.key: entry.reason for entry in gui_import("LyCORIS/iA3", FORM, tmp_path).ignored}
    assert (
        ignored["conv_dim"] == "LyCORIS/iA3 does not use it: the GUI passes conv_dim=8, which LyCORIS ignores"
    )
    assert ignored["loraplus_lr_ratio"] == (
        "LyCORIS/iA3 does not use it: the GUI passes loraplus_lr_ratio=16, which LyCORIS ignores"
    )
    assert ignored["factor"] == "LoRA_type LyCORIS/iA3 does not pass it (4)"


def test_kohyas_types_pass_only_what_is_set_and_an_old_config_gets_the_form_defaults(tmp_path):
    report = gui_import("Standard", {"network_dim": 8, "rank_dropout": 0, "down_lr_weight": ""}, tmp_path)
    assert "network_args" not in report.values
    mapped = {entry.key: entry.value for entry in report.mapped}
    assert (mapped["rank_dropout"], mapped["down_lr_weight"]) == (None, None)
    report = gui_import("LyCORIS/LoKr", {"network_dim": 8}, tmp_path)
    assert report.values["network_args"] == [
        "preset=full", "conv_dim=1", "conv_alpha=1", "use_tucker=False", "rank_dropout=0", "bypass_mode=False",
        "dora_wd=False", "module_dropout=0.0", "factor=-1", "use_cp=False", "use_scalar=False", "decompose_both=False",
        "rank_dropout_scale=False", "algo=lokr", "train_norm=False",
    ]  # fmt: skip
    assert [(entry.field, entry.value) for entry in report.mapped if entry.key == "LoRA_type"] == [
        ("network_module", "lycoris.kohya"),
        ("network_args", "preset=full conv_dim=1 conv_alpha=1 use_tucker=False rank_dropout=0 bypass_mode=False "
         "dora_wd=False module_dropout=0.0 factor=-1 use_cp=False use_scalar=False decompose_both=False "
         "rank_dropout_scale=False algo=lokr train_norm=False"),
    ]  # fmt: skip


def test_kohyas_native_loha_without_convolutions_keeps_them_out(tmp_path):
    report = gui_import("Kohya LoHa", {"network_dim": 8, "conv_dim": 0, "conv_alpha": 1}, tmp_path)
    assert report.values["network_args"] == ["algo=loha", "preset=attn-mlp"]


def test_lora_fa_is_imported_as_a_plain_lora_and_says_so(tmp_path):
    report = gui_import("LoRA-FA", {"network_dim": 8, "rank_dropout": 0.1}, tmp_path)
    assert "network_module" not in report.values and report.values["network_args"] == ["rank_dropout=0.1"]
    lora_type = next(entry for entry in report.ignored if entry.key == "LoRA_type")
    assert lora_type.lost and lora_type.reason == (
        "LoRA-FA (kohya's networks.lora_fa: a LoRA whose lora_down stays frozen) is not supported: imported as a "
        "plain LoRA (networks.lora)"
    )


def test_additional_parameters_network_args_replace_the_forms(tmp_path):
    report = gui_import(
        "Kohya LoCon",
        {"conv_dim": 8, "additional_parameters": '--network_args "conv_dim=4" "conv_alpha=4"'},
        tmp_path,
    )
    assert report.values["network_args"] == ["conv_dim=4", "conv_alpha=4"]  # kohya: flags win over the TOML


def test_a_network_arg_given_as_a_kohya_setting_says_where_it_belongs(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("network_dim = 8\nrank_dropout = 0.1\nconv_dim = 0\n")
    ignored = {entry.key: entry for entry in import_config(path).ignored}
    assert ignored["rank_dropout"].lost and ignored["rank_dropout"].reason == (
        "a --network_args key, which sd-scripts does not read as a setting: give it as network_args rank_dropout=0.1"
    )
    assert not ignored["conv_dim"].lost


def test_a_key_at_its_default_that_does_not_apply_changes_nothing():
    # bypass_mode is LyCORIS' (default False); networks.lora leaves the choice to the trainer (None).
    assert spec("networks.lora", "bypass_mode=False", "constraint=0").bypass_mode is None
    assert spec("networks.lora", "conv_alpha=4").conv_alpha is None  # no convolutions, no conv alpha
