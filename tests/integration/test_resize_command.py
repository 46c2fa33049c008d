"""`loracraft resize` on a LoCon trained-format file of the tiny SD1 model: each module's new delta is the
best approximation of the old one at its rank (the old delta's top singular values, the rest its error),
the strength is kept, the metadata is kohya's, and every bad input is one line with nothing written."""

import copy
import hashlib
import re

import pytest
import safetensors
import safetensors.torch
import torch

from loracraft.cli import main as cli_main
from loracraft.errors import UserError
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_network import build_lora_network
from loracraft.networks.low_rank import choose_rank
from loracraft.networks.merge_into_base import lora_delta
from loracraft.tools.resize_lora import main

RANK, ALPHA, CONV_RANK, CONV_ALPHA = 8, 4.0, 6, 3.0
SMALL_MODULE = "lora_te_text_model_encoder_layers_0_mlp_fc1"  # cut to rank 2 in the file: kept as is
METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": str(RANK),
    "ss_network_alpha": str(ALPHA),
    "ss_network_args": '{"conv_dim": "6", "conv_alpha": "3.0"}',
    "ss_training_comment": "my character",
    "ss_tag_frequency": '{"img": {"sks": 3}}',
    "sshs_model_hash": "stale",
}


@pytest.fixture(scope="module")
def locon(tiny_sd1_bundle, tmp_path_factory):
    """A LoCon file as training writes it (rank 8 / alpha 4, 3x3 convolutions rank 6 / alpha 3), with
    every factor moved by seeded noise, and one text-encoder module at rank 2."""
    unet = copy.deepcopy(tiny_sd1_bundle.unet)
    text_encoder = copy.deepcopy(tiny_sd1_bundle.text_encoder)
    network = build_lora_network(
        unet, [text_encoder], "sd1", RANK, ALPHA, conv_dim=CONV_RANK, conv_alpha=CONV_ALPHA
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    state = {key: tensor.detach().clone() for key, tensor in network.kohya_state_dict().items()}
    state[f"{SMALL_MODULE}.lora_down.weight"] = state[f"{SMALL_MODULE}.lora_down.weight"][:2].clone()
    state[f"{SMALL_MODULE}.lora_up.weight"] = state[f"{SMALL_MODULE}.lora_up.weight"][:, :2].clone()
    state[f"{SMALL_MODULE}.alpha"] = torch.tensor(1.0)
    path = tmp_path_factory.mktemp("resize") / "locon.safetensors"
    save_lora_file(state, path, METADATA)
    return path


def modules_of(path) -> dict[str, dict[str, torch.Tensor]]:
    tensors, _ = read_lora_file(path)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        modules.setdefault(name, {})[part] = tensor
    return modules


def is_3x3(parts) -> bool:
    down = parts["lora_down.weight"]
    return down.dim() == 4 and down.shape[2:] != (1, 1)


def run(argv: list[str]) -> list[str]:
    lines: list[str] = []
    assert main(argv, echo=lines.append) == 0
    return "\n".join(lines).splitlines()


@pytest.fixture(scope="module")
def fixed(locon, tmp_path_factory):
    out = tmp_path_factory.mktemp("fixed") / "small.safetensors"
    lines = run(
        ["--model", str(locon), "--save_to", str(out), "--new_rank", "4", "--new_conv_rank", "2", "--verbose"]
    )
    return out, lines


def verbose_fro(lines: list[str]) -> dict[str, float]:
    """Each reduced module's `fro retained` from the --verbose lines."""
    found = {}
    for line in lines:
        match = re.match(r"^(\S+)\s+\| .*fro retained: ([\d.]+)%", line)
        if match:
            found[match[1]] = float(match[2]) / 100
    return found


def test_fixed_resize_keeps_each_delta_within_the_reported_norm(locon, fixed):
    out, lines = fixed
    old, new = modules_of(locon), modules_of(out)
    assert set(new) == set(old)
    reported = verbose_fro(lines)
    assert len(reported) == len(old) - 1  # every module but the rank-2 one
    convs = 0
    for name, parts in old.items():
        if name == SMALL_MODULE:
            continue
        rank = 2 if is_3x3(parts) else 4
        convs += is_3x3(parts)
        assert new[name]["lora_down.weight"].shape[0] == rank, name
        old_rank = parts["lora_down.weight"].shape[0]
        # alpha / rank, the module's strength, is kept
        assert float(new[name]["alpha"]) / rank == pytest.approx(float(parts["alpha"]) / old_rank)
        before, after = lora_delta(parts).double().flatten(1), lora_delta(new[name]).double().flatten(1)
        full = torch.linalg.svdvals(before)
        torch.testing.assert_close(torch.linalg.svdvals(after)[:rank], full[:rank], rtol=1e-4, atol=1e-6)
        error = float((before - after).pow(2).sum())
        assert error == pytest.approx(
            (1 - reported[name] ** 2) * float(before.pow(2).sum()), rel=2e-2, abs=1e-9
        )
        assert error == pytest.approx(float(full[rank:].pow(2).sum()), rel=1e-3, abs=1e-9)
        assert reported[name] == pytest.approx(float(full[:rank].norm() / full.norm()), abs=6e-4)
    assert convs > 0  # the LoCon's 3x3 convolutions were there and got --new_conv_rank


def test_a_module_not_above_the_new_rank_is_copied_unchanged(locon, fixed):
    out, lines = fixed
    old, new = modules_of(locon)[SMALL_MODULE], modules_of(out)[SMALL_MODULE]
    assert set(new) == set(old)
    for part in old:
        assert torch.equal(new[part], old[part])
    assert any(line.startswith(SMALL_MODULE) and "rank 2 kept" in line for line in lines)


def test_fixed_resize_metadata_and_hashes(locon, fixed):
    out, lines = fixed
    with safetensors.safe_open(out, framework="pt") as f:
        metadata = f.metadata()
    # the rank-2 module keeps its rank, so network_dim's modules no longer share one rank
    assert metadata["ss_network_dim"] == "Dynamic"
    assert metadata["ss_network_alpha"] == "Dynamic"
    assert metadata["ss_training_comment"] == "dimension is resized from 8 to 4 (conv: 2); my character"
    for key in ("ss_network_module", "ss_network_args", "ss_tag_frequency"):
        assert metadata[key] == METADATA[key]
    data = out.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    assert metadata["sshs_model_hash"] == hashlib.sha256(data[start:]).hexdigest()
    assert all(tensor.dtype == torch.float32 for tensor in read_lora_file(out)[0].values())
    assert re.search(
        r"^\d+ of \d+ modules reduced \(largest rank was 8\); ranks now: 4 x\d+, 2 x\d+$", lines[-3]
    )
    assert re.search(r"^Frobenius norm retained by the reduced modules: mean [\d.]+%", lines[-2])


def test_one_rank_for_every_module_writes_it_as_kohya(locon, tmp_path):
    uniform = tmp_path / "uniform.safetensors"
    tensors, metadata = read_lora_file(locon)
    tensors = {key: tensor for key, tensor in tensors.items() if not key.startswith(SMALL_MODULE)}
    save_lora_file(tensors, uniform, metadata)
    out = tmp_path / "out.safetensors"
    run(["--model", str(uniform), "--save_to", str(out), "--new_rank", "4", "--save_precision", "fp16"])
    with safetensors.safe_open(out, framework="pt") as f:
        assert (f.metadata()["ss_network_dim"], f.metadata()["ss_network_alpha"]) == ("4", "2.0")
        assert f.metadata()["ss_training_comment"] == "dimension is resized from 8 to 4; my character"
        assert (
            f.get_tensor("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight").dtype == torch.float16
        )
        assert f.get_tensor("lora_unet_mid_block_attentions_0_proj_in.alpha").dtype == torch.float32


@pytest.mark.parametrize(("method", "param"), [("sv_fro", 0.9), ("sv_ratio", 3.0), ("sv_cumulative", 0.7)])
def test_dynamic_resize_chooses_kohyas_ranks(locon, tmp_path, method, param):
    out = tmp_path / "dynamic.safetensors"
    lines = run(
        [
            "--model",
            str(locon),
            "--save_to",
            str(out),
            "--new_rank",
            "6",
            "--dynamic_method",
            method,
            "--dynamic_param",
            str(param),
        ]
    )
    old, new = modules_of(locon), modules_of(out)
    ranks = set()
    for name, parts in old.items():
        before = lora_delta(parts).double().flatten(1)
        old_rank = parts["lora_down.weight"].shape[0]
        s = torch.linalg.svdvals(before.float())[:old_rank]
        expected = min(choose_rank(s, 6, method, param), old_rank)
        rank = new[name]["lora_down.weight"].shape[0]
        assert rank == expected, name
        ranks.add(rank)
        after = lora_delta(new[name]).double().flatten(1)
        full = torch.linalg.svdvals(before)
        assert float((before - after).pow(2).sum()) == pytest.approx(
            float(full[rank:].pow(2).sum()), rel=1e-3, abs=1e-9
        )
        if method == "sv_fro" and rank < 6:
            assert float(full[:rank].norm() / full.norm()) >= param
    assert len(ranks) > 1  # the method chose per module
    with safetensors.safe_open(out, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["ss_network_dim"] == metadata["ss_network_alpha"] == "Dynamic"
    assert metadata["ss_training_comment"] == f"Dynamic resize with {method}: {param} from 8; my character"
    assert "modules reduced" in lines[-3]


def write_safetensors(path, tensors, metadata=None):
    safetensors.torch.save_file(tensors, str(path), metadata)
    return path


def other_type_file(path):
    """A LoHa module as LyCORIS writes it."""
    parts = {"hada_w1_a": (8, 2), "hada_w1_b": (2, 8), "hada_w2_a": (8, 2), "hada_w2_b": (2, 8)}
    tensors = {
        f"lora_unet_mid_block_attentions_0_proj_in.{part}": torch.ones(shape) for part, shape in parts.items()
    }
    return write_safetensors(
        path, {**tensors, "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(2.0)}
    )


def truncated(locon, path):
    path.write_bytes(locon.read_bytes()[: locon.stat().st_size // 2])
    return path


BAD_INPUTS = {
    "not a LoRA": (
        lambda locon, tmp, tiny: write_safetensors(tmp / "x.safetensors", {"foo.bar": torch.ones(2)}),
        [],
        r"--model \S+x\.safetensors is not a LoRA: .*foo",
    ),
    "a checkpoint": (
        lambda locon, tmp, tiny: tiny.single_file,
        [],
        r"--model \S+ is a .*checkpoint.* not a LoRA.*; give (the|a) LoRA file",
    ),
    "nothing to reduce": (
        lambda locon, tmp, tiny: locon,
        ["--new_rank", "8"],
        r"--new_rank 8: every module of \S+ already has a rank that low \(largest 8\); nothing to reduce",
    ),
    "conv rank reduces nothing either": (
        lambda locon, tmp, tiny: locon,
        ["--new_rank", "8", "--new_conv_rank", "6"],
        r"--new_rank 8 and --new_conv_rank 6: every module .* nothing to reduce",
    ),
    "a truncated file": (
        lambda locon, tmp, tiny: truncated(locon, tmp / "cut.safetensors"),
        [],
        r"--model \S+cut\.safetensors: not a readable \.safetensors file .*; re-download or re-save it",
    ),
    "a missing file": (
        lambda locon, tmp, tiny: tmp / "missing.safetensors",
        [],
        r"--model \S+missing\.safetensors: LoRA file not found",
    ),
    "another type": (
        lambda locon, tmp, tiny: other_type_file(tmp / "loha.safetensors"),
        [],
        r"--model \S+ is a LoHa file \(lora_unet_mid_block_attentions_0_proj_in\); resize reduces LoRA/LoCon files only",
    ),
    "a method without its parameter": (
        lambda locon, tmp, tiny: locon,
        ["--dynamic_method", "sv_fro"],
        r"--dynamic_method sv_fro needs --dynamic_param",
    ),
    "a share above 1": (
        lambda locon, tmp, tiny: locon,
        ["--dynamic_method", "sv_cumulative", "--dynamic_param", "90"],
        r"--dynamic_param 90: for sv_cumulative it is the share of the module to keep, above 0 and at most 1",
    ),
    "a zero rank": (
        lambda locon, tmp, tiny: locon,
        ["--new_rank", "0"],
        r"--new_rank must be at least 1, got 0",
    ),
    "an unknown method": (
        lambda locon, tmp, tiny: locon,
        ["--dynamic_method", "sv_max"],
        r"resize: argument --dynamic_method: invalid choice: 'sv_max'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_one_line_and_write_nothing(locon, tiny_sd1, tmp_path, case):
    make, flags, message = BAD_INPUTS[case]
    model = make(locon, tmp_path, tiny_sd1)
    before = locon.read_bytes()
    out = tmp_path / "out" / "resized.safetensors"
    out.parent.mkdir()
    with pytest.raises(UserError) as error:
        main(["--model", str(model), "--save_to", str(out), *flags], echo=lambda line: None)
    assert re.search(message, str(error.value)), str(error.value)
    assert "\n" not in str(error.value)
    assert list(out.parent.iterdir()) == []
    assert locon.read_bytes() == before


def test_an_existing_output_is_kept_without_overwrite(locon, tmp_path, capsys):
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"mine")
    assert cli_main(["resize", "--model", str(locon), "--save_to", str(out)]) == 2
    error = capsys.readouterr().err
    assert (
        error
        == f"error: --save_to {out} already exists; choose another path or add --overwrite to replace it\n"
    )
    assert out.read_bytes() == b"mine"
    assert cli_main(["resize", "--model", str(locon), "--save_to", str(out), "--overwrite"]) == 0
    assert modules_of(out)["lora_unet_mid_block_attentions_0_proj_in"]["lora_down.weight"].shape[0] == 4


def test_the_input_is_never_the_output(locon, tmp_path):
    before = locon.read_bytes()
    with pytest.raises(UserError, match=r"--save_to \S+ is the --model file; write the result to a new file"):
        main(["--model", str(locon), "--save_to", str(locon), "--overwrite"], echo=lambda line: None)
    assert locon.read_bytes() == before


@pytest.mark.gpu
def test_resize_on_cuda_gives_the_cpu_deltas(fixed, locon, tmp_path):
    cpu, _ = fixed
    out = tmp_path / "cuda.safetensors"
    flags = ["--new_rank", "4", "--new_conv_rank", "2", "--device", "cuda"]
    run(["--model", str(locon), "--save_to", str(out), *flags])
    on_cuda, on_cpu = modules_of(out), modules_of(cpu)
    assert set(on_cuda) == set(on_cpu)
    for name, parts in on_cuda.items():
        assert parts["lora_up.weight"].device.type == "cpu"
        torch.testing.assert_close(lora_delta(parts), lora_delta(on_cpu[name]), atol=1e-5, rtol=1e-4)
