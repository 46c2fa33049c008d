"""`loracraft merge` without --sd_model: LoRAs into one LoRA, on the tiny SD1 model; and every bad input
of the command (into a checkpoint too), each one line with nothing written.

The merged file's change equals the sum of the inputs' changes at their ratios (module_delta of each
module, the function tested against the consumers' formulas): exactly at a rank that holds the sum, and
below it with each module's error the energy it reports as not kept; --concat is exact.
"""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from test_merge_command import lora_file, modules_of, run

from loracraft.errors import UserError
from loracraft.models.checkpoint_file import read_checkpoint
from loracraft.networks.algorithms import AdapterKind
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_network import build_lora_network
from loracraft.networks.module_delta import module_delta
from loracraft.tools.merge_lora import main
from model_helpers import tiny_family_modules

RANK = 4


@pytest.fixture(scope="module")
def sd1(tiny_sd1, tiny_sd1_bundle, tmp_path_factory):
    """(tiny model, a kohya LoCon of it)."""
    return tiny_sd1, lora_file(tiny_sd1_bundle, tmp_path_factory.mktemp("sd1") / "locon.safetensors", seed=0)


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory) -> Path:
    """A kohya LoCon of the in-memory tiny SDXL modules (LDM names, lora_te1_/lora_te2_)."""
    unet, text_encoders = tiny_family_modules("sdxl")
    model = SimpleNamespace(unet=unet, text_encoders=text_encoders, family="sdxl")
    return lora_file(model, tmp_path_factory.mktemp("sdxl") / "sdxl.safetensors", seed=7)


# LoRAs into one LoRA ------------------------------------------------------------------------------------


def expected_sum(files: list[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    """Σ ratio × change of every module, flattened to (out, in x kernel)."""
    total: dict[str, torch.Tensor] = {}
    for path, ratio in files:
        for name, parts in modules_of(path).items():
            change = ratio * module_delta(parts, None, name).flatten(1)
            total[name] = total[name] + change if name in total else change
    return total


def changes_of(path: Path) -> dict[str, torch.Tensor]:
    return {name: module_delta(parts, None, name).flatten(1) for name, parts in modules_of(path).items()}


@pytest.fixture(scope="module")
def two_loras(tiny_sd1_bundle, tmp_path_factory):
    """A LoCon at rank 4 and a LoRA of kohya's default targets at rank 2 (no convolutions: modules only
    the first file has)."""
    folder = tmp_path_factory.mktemp("two")
    first = lora_file(tiny_sd1_bundle, folder / "first.safetensors", seed=4)
    network = build_lora_network(tiny_sd1_bundle.unet, tiny_sd1_bundle.text_encoders, "sd1", 2, 1.0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    second = folder / "second.safetensors"
    save_lora_file(network.kohya_state_dict(), second, {"ss_base_model_version": "sd_v1"})
    return first, second


def assert_close_changes(actual: dict, expected: dict, tolerance: float = 5e-5) -> None:
    """Equal to float32 rounding of an SVD (a wrong scale or factor is off by far more)."""
    assert actual.keys() == expected.keys()
    for name, change in expected.items():
        scale = change.abs().max().item()
        assert scale > 0, name
        error = (actual[name] - change).abs().max().item() / scale
        assert error <= tolerance, f"{name}: off by {error:.2g} of the change"


def test_two_loras_at_a_rank_that_holds_the_sum_are_exactly_the_sum(two_loras, tmp_path) -> None:
    first, second = two_loras
    out = tmp_path / "sum.safetensors"
    lines = run(
        [
            "--models",
            str(first),
            str(second),
            "--ratios",
            "0.8",
            "-0.5",
            "--new_rank",
            "6",
            "--save_to",
            str(out),
        ]
    )
    assert_close_changes(changes_of(out), expected_sum([(first, 0.8), (second, -0.5)]))
    assert "mean 100.00%" in lines[-2]
    tensors, metadata = read_lora_file(out)
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["modelspec.merged_from"] == "lora4, second"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert {"sshs_model_hash", "sshs_legacy_hash"} <= metadata.keys()
    # alpha = rank everywhere: the file's scale is 1
    for key, tensor in tensors.items():
        if key.endswith(".alpha"):
            assert tensor.item() == tensors[key.replace("alpha", "lora_down.weight")].shape[0]


def test_below_the_sum_rank_each_module_keeps_what_it_reports(two_loras, tmp_path) -> None:
    """Default rank (the largest input rank, 4): the error of each module is the energy it does not keep."""
    first, second = two_loras
    out = tmp_path / "sum.safetensors"
    lines = run(["--models", str(first), str(second), "--save_to", str(out), "--verbose"])
    expected, actual = expected_sum([(first, 1.0), (second, 1.0)]), changes_of(out)
    retained = {}
    for line in lines:
        if match := re.fullmatch(r"(\S+)\s+\| rank (\d+) \| fro retained ([\d.]+)%", line):
            retained[match[1]] = float(match[3]) / 100
            assert int(match[2]) <= 4
    assert retained.keys() == expected.keys()
    truncated = 0
    for name, change in expected.items():
        error = (change - actual[name]).pow(2).sum() / change.pow(2).sum()
        assert abs(error.item() - (1 - retained[name] ** 2)) < 2e-3, name
        truncated += retained[name] < 0.999
    assert truncated > 0
    _, metadata = read_lora_file(out)
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "4")
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4"}


def test_concat_is_exact_with_the_summed_rank(two_loras, tmp_path) -> None:
    first, second = two_loras
    out = tmp_path / "concat.safetensors"
    lines = run(
        [
            "--models",
            str(first),
            str(second),
            "--ratios",
            "0.8",
            "-0.5",
            "--concat",
            "--shuffle",
            "--save_to",
            str(out),
        ]
    )
    assert "exactly (--concat)" in lines[-2]
    assert_close_changes(changes_of(out), expected_sum([(first, 0.8), (second, -0.5)]))
    tensors, _ = read_lora_file(out)
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"].item() == 6
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].item() == 4  # only the first has it


def test_lycoris_types_sum_exactly_into_a_lora(tiny_sd1_bundle, two_loras, tmp_path) -> None:
    loha = lora_file(tiny_sd1_bundle, tmp_path / "loha.safetensors", seed=6, kind=AdapterKind("loha"), rank=2)
    first, _ = two_loras
    out = tmp_path / "sum.safetensors"
    run(
        [
            "--models",
            str(loha),
            str(first),
            "--new_rank",
            "64",
            "--new_conv_rank",
            "64",
            "--save_to",
            str(out),
        ]
    )
    assert_close_changes(changes_of(out), expected_sum([(loha, 1.0), (first, 1.0)]))


@pytest.mark.gpu
def test_summing_on_the_gpu_gives_the_cpu_sum(two_loras, tmp_path) -> None:
    first, second = two_loras
    out = tmp_path / "sum.safetensors"
    run(["--models", str(first), str(second), "--new_rank", "6", "--device", "cuda", "--save_to", str(out)])
    assert_close_changes(changes_of(out), expected_sum([(first, 1.0), (second, 1.0)]))


# Bad inputs ---------------------------------------------------------------------------------------------


def refused(argv: list[str], out: Path, pattern: str) -> str:
    with pytest.raises(UserError) as caught:
        main(argv, echo=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), "something was written"
    return message


def test_ratio_count_must_match(sd1, tmp_path) -> None:
    tiny, lora = sd1
    out = tmp_path / "out.safetensors"
    argv = [
        "--sd_model",
        str(tiny.single_file),
        "--models",
        str(lora),
        "--ratios",
        "0.5",
        "0.5",
        "--save_to",
        str(out),
    ]
    refused(argv, out, r"--ratios: 2 values for 1 --models")


def test_a_file_of_other_tensors_is_not_a_lora(sd1, tmp_path) -> None:
    tiny, _ = sd1
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"embedding": torch.zeros(3, 4)}, other)
    out = tmp_path / "out.safetensors"
    refused(
        ["--sd_model", str(tiny.single_file), "--models", str(other), "--save_to", str(out)],
        out,
        rf"{other}.*not a LoRA|no network type",
    )


def test_a_checkpoint_given_as_a_lora_is_named_so(sd1, tmp_path) -> None:
    tiny, lora = sd1
    out = tmp_path / "out.safetensors"
    refused(
        ["--models", str(lora), str(tiny.single_file), "--save_to", str(out)],
        out,
        rf"{tiny.single_file}.*checkpoint",
    )


def test_an_sdxl_lora_on_an_sd1_checkpoint_is_refused(sd1, sdxl_lora, tmp_path) -> None:
    tiny, _ = sd1
    sdxl = sdxl_lora
    out = tmp_path / "out.safetensors"
    refused(
        ["--sd_model", str(tiny.single_file), "--models", str(sdxl), "--save_to", str(out)],
        out,
        r"LoRA for SDXL models.*base model is SD1.x",
    )


def test_loras_of_two_families_are_refused(sd1, sdxl_lora, tmp_path) -> None:
    _, lora = sd1
    sdxl = sdxl_lora
    out = tmp_path / "out.safetensors"
    refused(
        ["--models", str(lora), str(sdxl), "--save_to", str(out)],
        out,
        rf"{sdxl} is a LoRA for SDXL models, but {lora} is for SD1",
    )


def test_a_lora_of_other_shapes_is_refused(sd1, tmp_path) -> None:
    tiny, lora = sd1
    tensors, metadata = read_lora_file(lora)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors[f"{name}.lora_down.weight"] = torch.ones(RANK, 48)
    other = tmp_path / "other.safetensors"
    save_lora_file(tensors, other, metadata)
    out = tmp_path / "out.safetensors"
    refused(
        ["--sd_model", str(tiny.single_file), "--models", str(other), "--save_to", str(out)],
        out,
        rf"{name}.*made for another base model",
    )
    refused(
        ["--models", str(lora), str(other), "--save_to", str(out)],
        out,
        rf"{name} changes a weight of shape .*different base models",
    )


def test_a_module_the_model_lacks_is_refused(sd1, tmp_path) -> None:
    tiny, lora = sd1
    tensors, metadata = read_lora_file(lora)
    tensors["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.ones(RANK, 32)
    tensors["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.ones(32, RANK)
    other = tmp_path / "other.safetensors"
    save_lora_file(tensors, other, metadata)
    out = tmp_path / "out.safetensors"
    refused(
        ["--sd_model", str(tiny.single_file), "--models", str(other), "--save_to", str(out)],
        out,
        r"down_blocks_9.*matches no module of this SD1.x model",
    )


def test_a_truncated_file_is_refused(sd1, tmp_path) -> None:
    tiny, lora = sd1
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(lora.read_bytes()[: lora.stat().st_size // 2])
    out = tmp_path / "out.safetensors"
    refused(
        ["--sd_model", str(tiny.single_file), "--models", str(cut), "--save_to", str(out)],
        out,
        rf"--models {cut}",
    )


def test_an_existing_output_is_kept_unless_overwrite(sd1, tmp_path) -> None:
    tiny, lora = sd1
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"mine")
    with pytest.raises(UserError, match="already exists; choose another path or add --overwrite"):
        main(
            ["--sd_model", str(tiny.single_file), "--models", str(lora), "--save_to", str(out)],
            echo=lambda line: None,
        )
    assert out.read_bytes() == b"mine"
    run(["--sd_model", str(tiny.single_file), "--models", str(lora), "--save_to", str(out), "--overwrite"])
    assert read_checkpoint(out).tensors


@pytest.mark.parametrize(
    ("algo", "options", "what"),
    [("ia3", {}, "IA3"), ("locon", {"weight_decompose": True, "wd_on_out": False}, "DoRA")],
)
def test_weight_dependent_types_cannot_be_summed_into_a_lora(
    algo, options, what, sd1, tiny_sd1_bundle, tmp_path
) -> None:
    _, lora = sd1
    other = lora_file(
        tiny_sd1_bundle, tmp_path / f"{algo}.safetensors", seed=8, kind=AdapterKind(algo, options=options)
    )
    out = tmp_path / "out.safetensors"
    refused(
        ["--models", str(lora), str(other), "--save_to", str(out)],
        out,
        rf"{other}: \S+ is a {what} module, whose change depends on the base model's weight.*--sd_model",
    )


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--shuffle"], r"--shuffle permutes the ranks --concat joins"),
        (["--concat", "--new_rank", "8"], r"--concat keeps every rank"),
        (["--dynamic_method", "sv_fro"], r"--dynamic_method sv_fro needs --dynamic_param"),
    ],
)
def test_lora_merge_flags_that_contradict(extra, pattern, two_loras, tmp_path) -> None:
    first, second = two_loras
    out = tmp_path / "out.safetensors"
    refused(["--models", str(first), str(second), "--save_to", str(out), *extra], out, pattern)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--concat"], r"--concat shapes a merged LoRA"),
        (["--v2"], r"--v2: the --sd_model is an SD1.x model"),
        ([], None),
    ],
    ids=["concat", "v2", "suffix"],
)
def test_checkpoint_merge_flags_that_contradict(extra, pattern, sd1, tmp_path) -> None:
    tiny, lora = sd1
    out = tmp_path / ("out.safetensors" if pattern else "out.pt")
    pattern = pattern or r"use a .safetensors or .ckpt file name, or a path without suffix"
    refused(
        ["--sd_model", str(tiny.single_file), "--models", str(lora), "--save_to", str(out), *extra],
        out,
        pattern,
    )
