"""`loracraft extract` on tiny SD1 and SDXL models and a "fine-tune" of each made by adding known rank-2
deltas to the weights of kohya's LoRA targets: the extracted file reproduces the fine-tune's delta
(exactly when --dim covers the true rank and nothing is clamped, else within the reported norm), has
training's names and metadata, loads in diffusers and as --network_weights, and every bad input is one
line with nothing written."""

import copy
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors
import torch

from diffusers_checks import fuse_and_check, pipeline_of
from loracraft.errors import UserError
from loracraft.models.checkpoint_file import write_checkpoint
from loracraft.models.config_metadata import models_config_metadata
from loracraft.models.ldm_convert import to_ldm_checkpoint
from loracraft.models.loading import load_model_bundle
from loracraft.networks.lora_file import read_lora_file
from loracraft.networks.lora_network import build_lora_network
from loracraft.networks.merge_into_base import lora_delta
from loracraft.tools.extract_lora import ExtractSettings, extract_lora, extraction_targets, load_models, main

TRUE_RANK = 2


@dataclass(frozen=True)
class FineTune:
    org: Path
    tuned: Path
    family: str
    deltas: dict[str, torch.Tensor]
    """kohya module name -> the delta added to its weight."""
    without_conv: set[str]
    """The targets without --conv_dim: none of the ResNet blocks' and samplers' modules."""


def low_rank_delta(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    up = torch.randn(weight.shape[0], TRUE_RANK, generator=generator)
    down = torch.randn(TRUE_RANK, weight[0].numel(), generator=generator)
    return (0.05 * up @ down / weight[0].numel() ** 0.5).reshape(weight.shape)


def save_single_file(bundle, path: Path, tokenizer_dirs: list[Path]) -> None:
    """The bundle as a single file in its family's layout, its tokenizers beside it."""
    checkpoint = to_ldm_checkpoint(bundle.unet, bundle.vae, *bundle.text_encoders, family=bundle.family)
    write_checkpoint(path, checkpoint, models_config_metadata(bundle.unet, bundle.vae, bundle.text_encoders))
    for folder, suffix in zip(tokenizer_dirs, ("tokenizer", "tokenizer_2"), strict=False):
        shutil.copytree(folder, path.with_name(f"{path.stem}-{suffix}"))


def make_fine_tune(tiny, root: Path) -> FineTune:
    """The tiny model with a seeded rank-2 delta on every LoRA target (3x3 convolutions included), saved
    as a single file."""
    bundle = copy.deepcopy(load_model_bundle(tiny.single_file))
    text_targets, unet_targets = extraction_targets(bundle, conv=True)
    without_conv = {target.name for targets in extraction_targets(bundle, conv=False) for target in targets}
    generator = torch.Generator().manual_seed(0)
    deltas = {}
    with torch.no_grad():
        for target in unet_targets + text_targets:
            delta = low_rank_delta(target.module.weight, generator)
            target.module.weight.add_(delta)
            deltas[target.name] = delta
    tuned = root / f"tuned-{tiny.family}.safetensors"
    save_single_file(bundle, tuned, [d for d in (tiny.tokenizer_dir, tiny.tokenizer_2_dir) if d is not None])
    return FineTune(tiny.single_file, tuned, tiny.family, deltas, without_conv)


@pytest.fixture(scope="module")
def sd1(tiny_sd1, tmp_path_factory) -> FineTune:
    return make_fine_tune(tiny_sd1, tmp_path_factory.mktemp("sd1"))


@pytest.fixture(scope="module")
def sd2(tiny_sd2, tmp_path_factory) -> FineTune:
    return make_fine_tune(tiny_sd2, tmp_path_factory.mktemp("sd2"))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl, tmp_path_factory) -> FineTune:
    return make_fine_tune(tiny_sdxl, tmp_path_factory.mktemp("sdxl"))


def modules_of(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        modules.setdefault(name, {})[part] = tensor
    return modules


def run(argv: list[str]) -> list[str]:
    lines: list[str] = []
    assert main(argv, echo=lines.append) == 0
    return "\n".join(lines).splitlines()


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_extract_then_apply_is_the_fine_tune_exactly(request, family):
    fine_tune = request.getfixturevalue(family)
    org, tuned = load_models(str(fine_tune.org), str(fine_tune.tuned))
    result = extract_lora(org, tuned, ExtractSettings(dim=4, conv_dim=3, clamp_quantile=None), echo=print)
    modules = modules_of(result.tensors)
    assert set(modules) == set(fine_tune.deltas)
    for name, delta in fine_tune.deltas.items():
        parts = modules[name]
        assert parts["lora_down.weight"].shape[0] == (3 if is_3x3(delta) else 4)  # --conv_dim / --dim
        assert float(parts["alpha"]) == parts["lora_down.weight"].shape[0]  # alpha = rank: scale 1
        # the single file stores weights in float32 as tuned - org, so only rounding separates them
        torch.testing.assert_close(lora_delta(parts), delta, atol=2e-6, rtol=1e-4, msg=name)
    assert all(module.factored.fro_retained == pytest.approx(1.0, abs=1e-5) for module in result.modules)


def test_below_the_true_rank_the_error_is_the_reported_norm(sd1, tmp_path):
    out = tmp_path / "rank1.safetensors"
    lines = run(
        [
            "--model_org",
            str(sd1.org),
            "--model_tuned",
            str(sd1.tuned),
            "--save_to",
            str(out),
            "--dim",
            "1",
            "--verbose",
        ]
    )
    reported = reported_retention(lines)
    modules = modules_of(read_lora_file(out)[0])
    assert set(reported) == set(modules) == sd1.without_conv
    for name, parts in modules.items():
        delta = sd1.deltas[name].double().flatten(1)
        error = float((delta - lora_delta(parts).double().flatten(1)).pow(2).sum())
        full = torch.linalg.svdvals(delta)
        # the clamp (0.99) only adds to the truncation's error; the reported norm measures both
        assert error >= float(full[1:].pow(2).sum()) * (1 - 1e-3)
        assert error == pytest.approx(
            (1 - reported[name] ** 2) * float(delta.pow(2).sum()), rel=5e-2, abs=1e-9
        )
    assert re.match(
        r"^extracted \d+ modules \(12 in the text encoders\) from an SD1\.x model pair$", lines[-3]
    )
    assert re.match(r"^Frobenius norm retained by the modules: mean [\d.]+%", lines[-2])


def test_the_reported_norm_is_what_the_clamped_factors_reproduce(sd1):
    org, tuned = load_models(str(sd1.org), str(sd1.tuned))
    result = extract_lora(org, tuned, ExtractSettings(dim=1), echo=print)
    modules = modules_of(result.tensors)
    for module in result.modules:
        delta = sd1.deltas[module.name].double().flatten(1)
        error = float((delta - lora_delta(modules[module.name]).double().flatten(1)).pow(2).sum())
        energy = float(delta.pow(2).sum())
        assert error == pytest.approx((1 - module.factored.fro_retained**2) * energy, rel=1e-3), module.name


def is_3x3(weight: torch.Tensor) -> bool:
    return weight.dim() == 4 and weight.shape[2:] != (1, 1)


def reported_retention(lines: list[str]) -> dict[str, float]:
    """Each module's `fro retained` from the --verbose lines."""
    found = {}
    for line in lines:
        match = re.match(r"^(\S+)\s+\| rank \d+, fro retained: ([\d.]+)%", line)
        if match:
            found[match[1]] = float(match[2]) / 100
    return found


def test_the_file_is_what_training_writes_and_loads_in_diffusers(sd1, tmp_path):
    out = tmp_path / "extracted.safetensors"
    argv = ["--model_org", str(sd1.org), "--model_tuned", str(sd1.tuned), "--save_to", str(out), "--dim", "4"]
    reported = reported_retention(run([*argv, "--verbose"]))
    with safetensors.safe_open(out, framework="pt") as f:
        metadata = f.metadata()
    assert {key: metadata[key] for key in ("ss_v2", "ss_base_model_version", "ss_network_module")} == {
        "ss_v2": "False",
        "ss_base_model_version": "sd_v1",
        "ss_network_module": "networks.lora",
    }
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"], metadata["ss_network_args"]) == (
        "4",
        "4.0",
        "{}",
    )
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.title"] == "extracted"
    assert len(metadata["sshs_model_hash"]) == 64
    state, _ = read_lora_file(out)
    # as --network_weights: a network of training's modules at rank 4 takes every key and shape
    bundle = load_model_bundle(sd1.org)
    network = build_lora_network(bundle.unet, bundle.text_encoders, "sd1", 4, 4.0)
    network.load_kohya_state_dict(state)
    # in diffusers: fused into the base's weights, it misses the fine-tune's by the reported norm
    pipe = pipeline_of("sd1", bundle.unet, bundle.vae, bundle.text_encoders)
    targets = fuse_and_check(pipe, "sd1", out, 1.0, atol=1e-5)
    tuned = load_model_bundle(sd1.tuned)
    assert set(targets.values()) == set(reported) == sd1.without_conv
    for key, name in targets.items():
        component, path = key.split(".", 1)
        fused = getattr(pipe, component).get_parameter(path).double()
        missed = float((fused - getattr(tuned, component).get_parameter(path).double()).pow(2).sum())
        energy = float(sd1.deltas[name].double().pow(2).sum())
        # the figure is printed to 0.1%, which moves 1 - fro^2 by up to 0.001
        assert missed == pytest.approx((1 - reported[name] ** 2) * energy, abs=1.1e-3 * energy), name


def test_sd2_is_recorded_as_kohya_records_it(sd2, tmp_path):
    out = tmp_path / "sd2.safetensors"
    run(["--model_org", str(sd2.org), "--model_tuned", str(sd2.tuned), "--save_to", str(out), "--v2"])
    with safetensors.safe_open(out, framework="pt") as f:
        metadata = f.metadata()
    # kohya's --v_parameterization defaults to --v2; the tiny SD2 file says nothing of its prediction
    assert (metadata["ss_v2"], metadata["ss_base_model_version"]) == ("True", "sd_v2_v")
    assert metadata["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert set(modules_of(read_lora_file(out)[0])) == sd2.without_conv


def test_text_encoders_within_min_diff_are_left_out(sd1, tmp_path):
    out = tmp_path / "unet-only.safetensors"
    argv = [
        "--model_org",
        str(sd1.org),
        "--model_tuned",
        str(sd1.tuned),
        "--save_to",
        str(out),
        "--conv_dim",
        "2",
    ]
    lines = run([*argv, "--min_diff", "0.5"])
    largest = max(
        float(delta.abs().max()) for name, delta in sd1.deltas.items() if name.startswith("lora_te")
    )
    assert lines[0] == (
        f"the text encoders are the same (largest weight change {largest:.3g} <= --min_diff 0.5): extracting "
        "the U-Net only"
    )
    modules = modules_of(read_lora_file(out)[0])
    assert set(modules) == {name for name in sd1.deltas if name.startswith("lora_unet")}
    convs = [name for name in modules if is_3x3(modules[name]["lora_down.weight"])]
    assert convs and all(modules[name]["lora_down.weight"].shape[0] == 2 for name in convs)
    with safetensors.safe_open(out, framework="pt") as f:
        assert json.loads(f.metadata()["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2.0"}


def test_dynamic_ranks_and_sdxl_metadata(sdxl, tmp_path):
    out = tmp_path / "dynamic.safetensors"
    argv = [
        "--model_org",
        str(sdxl.org),
        "--model_tuned",
        str(sdxl.tuned),
        "--save_to",
        str(out),
        "--dim",
        "8",
    ]
    run([*argv, "--dynamic_method", "sv_fro", "--dynamic_param", "0.999", "--sdxl", "--no_metadata"])
    modules = modules_of(read_lora_file(out)[0])
    # kohya's sv_fro keeps the singular values reaching the target and one more: the true rank 2, plus 1
    assert {parts["lora_down.weight"].shape[0] for parts in modules.values()} == {TRUE_RANK + 1}
    assert {name.split("_")[1] for name in modules} == {"te1", "te2", "unet"}
    with safetensors.safe_open(out, framework="pt") as f:
        metadata = f.metadata()
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("Dynamic", "Dynamic")
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert not any(key.startswith("modelspec.") for key in metadata)


def other_width_model(tiny_sd1, root: Path) -> Path:
    """An SD1 model whose transformer blocks are wider: not the base of the fine-tune."""
    bundle = copy.deepcopy(load_model_bundle(tiny_sd1.single_file))
    config = {**dict(bundle.unet.config), "cross_attention_dim": 48}
    bundle.unet = type(bundle.unet).from_config(config)
    bundle.text_encoder = copy.deepcopy(bundle.text_encoder)
    path = root / "other.safetensors"
    save_single_file(bundle, path, [tiny_sd1.tokenizer_dir])
    return path


BAD_INPUTS = {
    "a family mismatch": (
        lambda fine, tmp, tiny: ["--model_org", str(tiny.single_file), "--model_tuned", str(fine.tuned)],
        r"--model_tuned \S+ is an SD1\.x model but --model_org \S+ is SDXL; give the base model",
    ),
    "a missing file": (
        lambda fine, tmp, tiny: [
            "--model_org",
            str(tmp / "none.safetensors"),
            "--model_tuned",
            str(fine.tuned),
        ],
        r"--model_org \S+none\.safetensors: no such file or folder",
    ),
    "a LoRA given as a model": (
        lambda fine, tmp, tiny: ["--model_org", str(fine.org), "--model_tuned", str(lora_file(tmp))],
        r"--model_tuned \S+ is not a Stable Diffusion checkpoint \(it is a LoRA/LyCORIS file",
    ),
    "--v2 on SD1": (
        lambda fine, tmp, tiny: ["--model_org", str(fine.org), "--model_tuned", str(fine.tuned), "--v2"],
        r"--v2: --model_org \S+ is an SD1\.x model; leave --v2 out",
    ),
    "a zero rank": (
        lambda fine, tmp, tiny: [
            "--model_org",
            str(fine.org),
            "--model_tuned",
            str(fine.tuned),
            "--dim",
            "0",
        ],
        r"--dim must be at least 1, got 0",
    ),
    "a clamp above 1": (
        lambda fine, tmp, tiny: [
            "--model_org",
            str(fine.org),
            "--model_tuned",
            str(fine.tuned),
            "--clamp_quantile",
            "99",
        ],
        r"--clamp_quantile 99 must be above 0 and at most 1",
    ),
}


def lora_file(root: Path) -> Path:
    path = root / "a-lora.safetensors"
    safetensors.torch.save_file({"lora_unet_x.lora_down.weight": torch.ones(1, 2)}, str(path))
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_one_line_and_write_nothing(request, tmp_path, case):
    make, message = BAD_INPUTS[case]
    fine_tune = request.getfixturevalue("sd1")
    other = request.getfixturevalue("tiny_sdxl")
    out = tmp_path / "out" / "x.safetensors"
    out.parent.mkdir()
    with pytest.raises(UserError) as error:
        main([*make(fine_tune, tmp_path, other), "--save_to", str(out)], echo=lambda line: None)
    assert re.search(message, str(error.value)), str(error.value)
    assert "\n" not in str(error.value)
    assert list(out.parent.iterdir()) == []


def test_different_architectures_are_one_line(sd1, tiny_sd1, tmp_path):
    other = other_width_model(tiny_sd1, tmp_path)
    out = tmp_path / "x.safetensors"
    with pytest.raises(UserError) as error:
        main(["--model_org", str(other), "--model_tuned", str(sd1.tuned), "--save_to", str(out)], echo=print)
    assert re.fullmatch(
        r"--model_tuned \S+ is not a fine-tune of --model_org \S+ \(its \S+ is \(\d+, \d+\), the base's \(\d+, \d+\)\); "
        r"give the base model the fine-tune was made from",
        str(error.value),
    ), str(error.value)
    assert not out.exists()


def test_an_existing_output_is_kept(sd1, tmp_path):
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"mine")
    with pytest.raises(UserError, match="already exists; choose another path or add --overwrite"):
        main(
            ["--model_org", str(sd1.org), "--model_tuned", str(sd1.tuned), "--save_to", str(out)], echo=print
        )
    assert out.read_bytes() == b"mine"


def test_single_files_without_tokenizers_take_tokenizer_path(sd1, tiny_sd1, tmp_path, monkeypatch):
    """Offline, with no tokenizer beside the files, the loader's message names --tokenizer_path, which
    extract takes (the tokenizer only sets the text encoder's special token ids)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bare = tmp_path / "bare"
    bare.mkdir()
    org, tuned = bare / "org.safetensors", bare / "tuned.safetensors"
    shutil.copy(sd1.org, org)
    shutil.copy(sd1.tuned, tuned)
    out = tmp_path / "x.safetensors"
    argv = ["--model_org", str(org), "--model_tuned", str(tuned), "--save_to", str(out)]
    with pytest.raises(UserError, match=r"^--model_org .*pass --tokenizer_path DIR"):
        main(argv, echo=print)
    assert not out.exists()
    main(
        [*argv, "--dim", "4", "--clamp_quantile", "1", "--tokenizer_path", str(tiny_sd1.tokenizer_dir)],
        echo=print,
    )
    tensors, _ = read_lora_file(out)
    for name, parts in modules_of(tensors).items():
        torch.testing.assert_close(lora_delta(parts), sd1.deltas[name], atol=2e-6, rtol=1e-4, msg=name)


@pytest.mark.gpu
def test_extract_on_cuda(sd1):
    org, tuned = load_models(str(sd1.org), str(sd1.tuned))
    exact = extract_lora(
        org, tuned, ExtractSettings(dim=4, clamp_quantile=None, device=torch.device("cuda")), print
    )
    for name, parts in modules_of(exact.tensors).items():
        assert parts["lora_up.weight"].device.type == "cpu"
        torch.testing.assert_close(lora_delta(parts), sd1.deltas[name], atol=2e-6, rtol=1e-4, msg=name)
    clamped = extract_lora(org, tuned, ExtractSettings(dim=1, device=torch.device("cuda")), print)
    assert all(0 < module.factored.fro_retained < 1 for module in clamped.modules)
