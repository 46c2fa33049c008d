"""`loracraft sample` on the tiny models: saved LoRA files drawn side by side from the same seeds, each
LoRA added into the base weights and taken out exactly, and every bad input one line before any drawing."""

import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from loracraft.cli import main
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_network import build_lora_network
from loracraft.sampling.png_info import read_sample_settings
from loracraft.sampling.prompts import read_prompts
from loracraft.sampling.render import SamplingModels, render_image

PROMPTS = "a red circle --w 64 --h 64 --s 2 --d 3\nsks toy --n blue --w 64 --h 64 --s 2\n"


def random_lora(bundle, path: Path, seed: int) -> Path:
    """A kohya LoRA file with random weights on the tiny model's U-Net and text encoders."""
    network = build_lora_network(bundle.unet, bundle.text_encoders, bundle.family, rank=4, alpha=2.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    save_lora_file(network.kohya_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def files(tiny_sd1_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_command")
    prompts = root / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    return {
        "prompts": prompts,
        "first": random_lora(tiny_sd1_bundle, root / "first.safetensors", seed=1),
        "second": random_lora(tiny_sd1_bundle, root / "second.safetensors", seed=2),
    }


def sample(model: Path, *extra: str) -> int:
    return main(["sample", "--pretrained_model_name_or_path", str(model), *extra])


def png(folder: Path, pattern: str) -> Path:
    (path,) = [path for path in folder.iterdir() if re.fullmatch(pattern, path.name)]
    return path


def test_two_loras_draw_side_by_side_from_the_same_seeds(tiny_sd1, files, tmp_path, capsys):
    lora_args = ["--lora", str(files["first"]), "--lora", str(files["second"])]
    assert (
        sample(
            tiny_sd1.diffusers_dir,
            *lora_args,
            "--prompts",
            str(files["prompts"]),
            "--output_dir",
            str(tmp_path),
        )
        == 0
    )
    assert re.fullmatch(
        rf"wrote 4 images and grid_\d{{14}}\.png to {re.escape(str(tmp_path))}\n", capsys.readouterr().out
    )
    cells = {
        (lora, index): png(tmp_path, rf"{lora}_{index:02d}_\d{{14}}_\d+\.png")
        for lora in ("first", "second")
        for index in (0, 1)
    }
    settings = {key: read_sample_settings(path) for key, path in cells.items()}
    assert settings["first", 0]["seed"] == settings["second", 0]["seed"] == 3
    assert settings["first", 1]["seed"] == settings["second", 1]["seed"]  # one random seed for the row
    assert (
        settings["second", 1]["lora"],
        settings["second", 1]["multiplier"],
        settings["second", 1]["negative_prompt"],
    ) == ("second.safetensors", 1.0, "blue")
    with Image.open(cells["first", 0]) as first, Image.open(cells["second", 0]) as second:
        assert first.size == (64, 64) and not np.array_equal(np.asarray(first), np.asarray(second))
        assert "Negative prompt" not in first.text["parameters"]
        assert first.text["parameters"].startswith(
            "a red circle\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 3, Size: 64x64"
        )
    with Image.open(png(tmp_path, r"grid_\d{14}\.png")) as grid:
        label_width = grid.width - 2 * 64
        assert grid.height == 24 + 2 * 64 and 0 < label_width <= 328
        assert np.array_equal(
            np.asarray(grid)[24 : 24 + 64, label_width + 64 :], np.asarray(Image.open(cells["second", 0]))
        )


def test_a_multiplier_list_is_one_column_each_and_the_base_comes_back_exactly(
    tiny_sd1, tiny_sd1_bundle, files, tmp_path
):
    """Multiplier 0 after multiplier 1 draws exactly the base model: the LoRA was taken out exactly."""
    assert sample(
        tiny_sd1.diffusers_dir, "--lora", str(files["first"]), "--multiplier", "1", "0", "--prompts", str(files["prompts"]),
        "--output_dir", str(tmp_path), "--sampler", "euler",
    ) == 0  # fmt: skip
    at_zero = png(tmp_path, r"first_x0_00_\d{14}_3\.png")
    at_one = png(tmp_path, r"first_x1_00_\d{14}_3\.png")
    bundle = tiny_sd1_bundle
    models = SamplingModels(bundle.unet, bundle.vae, bundle.text_encoders, bundle.tokenizers)
    prompt = read_prompts(files["prompts"]).prompts[0]
    base = render_image(
        models, prompt, default_sampler="euler", device=torch.device("cpu"), autocast=nullcontext
    )
    assert np.array_equal(np.asarray(Image.open(at_zero)), np.asarray(base.image))
    assert not np.array_equal(np.asarray(Image.open(at_one)), np.asarray(base.image))
    assert read_sample_settings(at_zero)["sampler"] == "euler"
    assert len(list(tmp_path.glob("grid_*.png"))) == 1


def test_sdxl_draws_its_own_loras_and_refuses_sd_ones(tiny_sdxl, tiny_sdxl_bundle, files, tmp_path, capsys):
    sdxl_lora = random_lora(tiny_sdxl_bundle, tmp_path / "xl.safetensors", seed=4)
    common = ["--prompts", str(files["prompts"]), "--output_dir", str(tmp_path / "out")]
    assert sample(tiny_sdxl.single_file, "--lora", str(sdxl_lora), *common) == 0
    assert len(list((tmp_path / "out").glob("xl_0[01]_*.png"))) == 2
    capsys.readouterr()
    assert sample(tiny_sdxl.single_file, "--lora", str(files["first"]), *common) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(
        rf"error: --lora {re.escape(str(files['first']))} is a LoRA for SD1.x/SD2.x models \(its names are like "
        r"lora_te_\w+\), but the base model is SDXL: use a LoRA made for an SDXL model",
        error,
    )


@pytest.mark.parametrize(
    ("lora", "prompts", "message"),
    [
        ("missing.safetensors", "ok.txt", "error: --lora {tmp}/missing.safetensors: LoRA file not found"),
        (
            "first",
            "bad.txt",
            "error: {tmp}/bad.txt line 1: --s 'many' is not a whole number of 0 or more; write e.g. --s 30",
        ),
        ("first", "missing.txt", "error: --prompts {tmp}/missing.txt does not exist"),
        (
            "first",
            "pndm.txt",
            "error: --sampler ({tmp}/pndm.txt prompt 1): the pndm sampler needs at least 4 steps, not 2: "
            "raise the prompt's steps (--s) or choose another sampler",
        ),  # fmt: skip
    ],
)
def test_bad_inputs_are_one_line_before_the_model_loads(files, tmp_path, capsys, lora, prompts, message):
    (tmp_path / "ok.txt").write_text("a cat\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_text("a cat --s many\n", encoding="utf-8")
    (tmp_path / "pndm.txt").write_text("a cat --s 2\n", encoding="utf-8")
    lora_path = files[lora] if lora in files else tmp_path / lora
    no_model = tmp_path / "no_model"  # never reached: the files are checked first
    extra = ["--sampler", "pndm"] if prompts == "pndm.txt" else []
    assert sample(no_model, "--lora", str(lora_path), "--prompts", str(tmp_path / prompts), *extra) == 2
    assert capsys.readouterr().err == message.format(tmp=tmp_path) + "\n"
    assert not (tmp_path / "sample").exists()


@pytest.mark.parametrize("change", ["wider", "damaged"])
def test_a_lora_for_another_base_model_or_damaged_is_one_line(tiny_sd1, files, tmp_path, capsys, change):
    """SD1 and SD2 share their module names: a LoRA for another base model is told apart by its shapes."""
    tensors = load_file(str(files["first"]))
    name = "lora_unet_mid_block_attentions_0_proj_in"
    up = tensors[f"{name}.lora_up.weight"]
    tensors[f"{name}.lora_up.weight"] = (
        torch.zeros(up.shape[0] + 8, *up.shape[1:]) if change == "wider" else up[:, :2].contiguous()
    )
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other))
    (tmp_path / "p.txt").write_text("a cat --s 2 --w 64 --h 64\n", encoding="utf-8")
    assert sample(tiny_sd1.diffusers_dir, "--lora", str(other), "--prompts", str(tmp_path / "p.txt")) == 2
    expected = {
        "wider": f"{name} changes a weight of shape (72, 64), but this model's is (64, 64, 1, 1); the LoRA was made "
        "for another base model",
        "damaged": f"{name}'s lora_up (64, 2, 1, 1) does not fit its lora_down (4, 64, 1, 1); the file is damaged: "
        "re-download or re-save it",
    }
    # The last line: transformers may draw its loading bar before it
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --lora {other}: {expected[change]}"
    assert not (tmp_path / "sample").exists()
