"""`loracraft train` with kohya's --network_module / --network_args on the tiny SD1 model: each type
trains, writes its own parts under kohya's names and records the type as kohya does (ss_network_module,
ss_network_args); per-block args shape the network; an option loracraft does not build yet stops the run in
one line before any file."""

import json

import pytest
from safetensors import safe_open

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.networks.blocks import block_index
from run_helpers import train_argv

TYPES = {
    "kohya-locon": (["--network_args", "conv_dim=4", "conv_alpha=2"], "networks.lora", "lora_down.weight"),
    "loha": (
        ["--network_module", "lycoris.kohya", "--network_args", "algo=loha"],
        "lycoris.kohya",
        "hada_w1_a",
    ),
    "lokr": (
        ["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "factor=4"],
        "lycoris.kohya",
        "lokr_w1",
    ),
    "loraplus": (["--network_args", "conv_dim=4", "loraplus_lr_ratio=16"], "networks.lora", "lora_up.weight"),
    "dora": (
        ["--network_module", "lycoris.kohya", "--network_args", "algo=locon", "dora_wd=True"],
        "lycoris.kohya",
        "dora_scale",
    ),
}


def train(tiny_sd1, tmp_path, *extra: str) -> int:
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    argv = train_argv(tiny_sd1.single_file, tree.train_dir, tmp_path / "out", *extra)
    argv += ["--resolution", "64,64", "--network_dim", "4", "--max_train_steps", "2"]
    return main(argv + ["--mixed_precision", "no", "--seed", "0", "--max_data_loader_n_workers", "0"])


@pytest.mark.parametrize("label", list(TYPES))
def test_each_type_trains_and_records_itself_as_kohya_does(tiny_sd1, tmp_path, label):
    extra, module, part = TYPES[label]
    assert train(tiny_sd1, tmp_path, *extra) == 0
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), "pt") as file:
        keys = set(file.keys())
        recorded = file.metadata()
    assert any(key.endswith(f".{part}") for key in keys)
    # LoCon's conv targets: kohya's with conv_dim, LyCORIS' by default (conv_dim = network_dim).
    assert f"lora_unet_down_blocks_0_resnets_0_conv1.{part}" in keys
    assert recorded["ss_network_module"] == module
    args = json.loads(recorded["ss_network_args"])
    given = dict(item.split("=", 1) for item in extra[extra.index("--network_args") + 1 :])
    assert {key: args[key] for key in given} == given


def test_a_preset_with_train_norm_trains_its_targets_and_norms(tiny_sd1, tmp_path):
    args = [
        "--network_module",
        "lycoris.kohya",
        "--network_args",
        "algo=loha",
        "preset=attn-mlp",
        "train_norm=True",
    ]
    assert train(tiny_sd1, tmp_path, *args) == 0
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), "pt") as file:
        parts = {key.split(".")[0]: key.split(".", 1)[1] for key in file.keys()}
    unet = {name for name in parts if name.startswith("lora_unet_")}
    # attn-mlp: the transformer blocks (attention, feed-forward and, with train_norm, their norms), no ResNets
    assert unet and all("_attentions_" in name for name in unet)
    assert any(name.endswith("_ff_net_2") for name in unet)
    assert parts["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1"] in ("w_norm", "b_norm")
    assert any(name.startswith("lora_te_") and "_mlp_" in name for name in parts)


def test_exclude_patterns_leave_modules_out_as_kohya_matches_them(tiny_sd1, tmp_path):
    assert train(tiny_sd1, tmp_path, "--network_args", "exclude_patterns=['.*attn2.*']") == 0
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), "pt") as file:
        names = {key.split(".")[0] for key in file.keys()}
    assert any("_attn1_" in name for name in names) and not any("_attn2_" in name for name in names)


def test_a_bad_pattern_stops_before_any_file(tiny_sd1, tmp_path, capsys):
    assert train(tiny_sd1, tmp_path, "--network_args", "exclude_patterns=['(']") == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: --network_args exclude_patterns") and "\n" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_block_args_give_each_block_its_rank_and_leave_zero_lr_blocks_out(tiny_sd1, tmp_path, capsys):
    dims = [1 + index % 3 for index in range(25)]
    code = train(
        tiny_sd1,
        tmp_path,
        "--network_args",
        "block_dims=" + ",".join(map(str, dims)),
        "up_lr_weight=zeros",
    )
    assert code == 0
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), "pt") as file:
        ranks = {
            key.removesuffix(".lora_down.weight"): file.get_tensor(key).shape[0]
            for key in file.keys()
            if key.startswith("lora_unet_") and key.endswith(".lora_down.weight")
        }
    blocks = {name: block_index(name, "sd1") for name in ranks}
    assert ranks and all(blocks[name] <= 12 for name in ranks)  # the OUT blocks (lr 0) have none
    assert {name: rank for name, rank in ranks.items()} == {name: dims[blocks[name]] for name in ranks}
    out = capsys.readouterr().out
    assert out.count("have no attention layers, so these ranks are not used") == 1


def test_kohya_oft_trains_the_unet_and_writes_kohyas_oft_file(tiny_sd1, tmp_path):
    code = train(tiny_sd1, tmp_path, "--network_module", "networks.oft", "--network_alpha", "1e-3")
    assert code == 0
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), "pt") as file:
        keys = set(file.keys())
        recorded = file.metadata()
        blocks = file.get_tensor(
            "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.oft_blocks"
        )
    assert keys and all(key.startswith("oft_unet_") for key in keys)
    assert {key.rsplit(".", 1)[1] for key in keys} == {"oft_blocks", "alpha"}
    assert blocks.shape[0] == 4 and blocks.abs().sum() > 0  # --network_dim 4 blocks, trained away from 0
    assert recorded["ss_network_module"] == "networks.oft"


def test_kohya_oft_refuses_a_dropout_it_would_ignore(tiny_sd1, tmp_path, capsys):
    code = train(tiny_sd1, tmp_path, "--network_module", "networks.oft", "--network_dropout", "0.1")
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --network_dropout 0.1: kohya's OFT (--network_module networks.oft) has no dropout, so this "
        "changes nothing; leave it out"
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
