"""`loracraft grid` on a real tiny run: the run's epoch files x weights in one labelled PNG whose cells are
exactly what `loracraft sample` draws for the same file, weight, prompt and seed, the base column exactly
the base model, the axes recorded in the PNG text, and every bad input one line before the model loads,
with nothing written."""

import copy
import json
import re
import shutil
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from consumer_math import delta
from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.sampling.lora_columns import BaseModelSettings, LoadedBase
from loracraft.sampling.lora_swap import LoRAFile, lora_applied
from loracraft.sampling.prompts import read_prompts
from loracraft.sampling.render import SamplingModels, render_image
from loracraft.tools import epoch_grid
from loracraft.tools.epoch_grid import chosen_files, run_files
from lycoris_files import VARIANTS, state_dict_of
from run_helpers import train_argv

CELL = 64
PROMPT = "a red circle --w 64 --h 64 --s 2 --d 3"


@pytest.fixture(scope="module")
def run(tiny_sd1, tmp_path_factory):
    """A 3-epoch run saving every epoch and every 3 steps (2 steps an epoch): toy-000001 (step 2),
    toy-step00000003, toy-000002 (step 4), toy (epoch 3, step 6), drawing with euler_a."""
    root = tmp_path_factory.mktemp("grid_run")
    dataset = make_kohya_dataset(
        root / "data", sizes=((64, 64),) * 2, formats=("png",) * 2, uncaptioned=(), reg_count=0, repeats=1
    )
    prompts = root / "prompts.txt"
    prompts.write_text(PROMPT + "\n", encoding="utf-8")
    out = root / "out"
    argv = train_argv(
        tiny_sd1.diffusers_dir, dataset.train_dir, out, "--resolution", "64,64", "--network_dim", "4",
        "--learning_rate", "1e-2", "--mixed_precision", "no", "--seed", "1", "--max_data_loader_n_workers", "0",
        "--max_train_epochs", "3", "--save_every_n_epochs", "1", "--save_every_n_steps", "3",
        "--sample_prompts", str(prompts), "--sample_sampler", "euler_a",
    )  # fmt: skip
    assert main(argv) == 0
    return out


def grid(*argv: str) -> int:
    return main(["grid", *map(str, argv)])


def header_height(image: Image.Image, rows: int) -> int:
    """The grid's header: the image's height less its rows of cells (labels may wrap onto more lines)."""
    return image.height - rows * CELL


def cell(image: Image.Image, label_width: int, row: int, column: int, rows: int = 2) -> np.ndarray:
    top, left = header_height(image, rows) + row * CELL, label_width + column * CELL
    return np.asarray(image)[top : top + CELL, left : left + CELL]


def test_the_run_s_files_in_training_order(run):
    name, saved = run_files(run, None)
    assert name == "toy"
    labels = [file.label for file in chosen_files(saved, None, name)]
    assert labels == ["epoch 1", "step 3", "epoch 2", "epoch 3 (final)"]
    assert [file.label for file in chosen_files(saved, (3, 1), name)] == ["epoch 1", "epoch 3 (final)"]
    assert [file.path.name for file in chosen_files(saved, ("final",), name)] == ["toy.safetensors"]


def test_files_without_metadata_go_epochs_then_steps_then_final(tmp_path):
    for stem in ("x-000010", "x", "x-step00000005", "x-000002"):
        (tmp_path / f"{stem}.ckpt").write_bytes(b"")
    (tmp_path / ".x-000003.safetensors.abc.tmp").write_bytes(b"")  # a killed run's leftover
    name, saved = run_files(tmp_path, None)
    assert (name, [file.label for file in chosen_files(saved, None, name)]) == (
        "x", ["epoch 2", "epoch 10", "step 5", "final"]
    )  # fmt: skip


def test_cells_are_sample_s_images_and_the_axes_are_recorded(
    run, tiny_sd1, tiny_sd1_bundle, tmp_path, monkeypatch, capsys
):
    passed = {}
    real_grid = epoch_grid.labelled_grid

    def recording_grid(rows, column_labels, row_labels):
        passed.update(columns=list(column_labels), rows=list(row_labels))
        return real_grid(rows, column_labels, row_labels)

    monkeypatch.setattr(epoch_grid, "labelled_grid", recording_grid)
    save_to = tmp_path / "grid.png"
    assert grid(
        run, "--epochs", "1,final", "--weights", "0.5,1", "--base", "--seeds", "5,6", "--save_to", save_to
    ) == 0  # fmt: skip
    assert capsys.readouterr().out.endswith(
        f"wrote {save_to}: 2 rows (prompts x seeds) x 5 columns (epochs x weights)\n"
    )
    assert passed == {
        "columns": ["base", "epoch 1 · 0.5", "epoch 1 · 1", "epoch 3 (final) · 0.5", "epoch 3 (final) · 1"],
        "rows": ["seed 5: a red circle", "seed 6: a red circle"],
    }
    image = Image.open(save_to)
    label_width = image.width - 5 * CELL
    # "epoch 3 (final) · 0.5" wraps in a 64-pixel cell: the header holds three lines of labels
    assert header_height(image, 2) > 24 and 0 < label_width <= 328
    axes = json.loads(image.text["loracraft"])
    assert [column["label"] for column in axes["columns"]] == passed["columns"]
    assert [(column["lora"], column["epoch"], column["step"], column["weight"]) for column in axes["columns"]] == [
        (None, None, None, 0.0), ("toy-000001.safetensors", 1, 2, 0.5), ("toy-000001.safetensors", 1, 2, 1.0),
        ("toy.safetensors", 3, 6, 0.5), ("toy.safetensors", 3, 6, 1.0),
    ]  # fmt: skip
    assert [(row["label"], row["seed"], row["sampler"]) for row in axes["rows"]] == [
        ("seed 5: a red circle", 5, "euler_a"), ("seed 6: a red circle", 6, "euler_a"),
    ]  # fmt: skip
    assert image.text["parameters"].startswith(
        "a red circle\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 5"
    )

    # `loracraft sample` on the same files, weights, prompt and seed draws the same pixels.
    prompt_file = tmp_path / "seed6.txt"
    prompt_file.write_text(PROMPT.replace("--d 3", "--d 6") + "\n", encoding="utf-8")
    drawn = tmp_path / "sample"
    assert main([
        "sample", "--pretrained_model_name_or_path", str(tiny_sd1.diffusers_dir), "--lora", str(run / "toy-000001.safetensors"),
        str(run / "toy.safetensors"), "--multiplier", "0.5", "1", "--prompts", str(prompt_file), "--sampler", "euler_a",
        "--output_dir", str(drawn),
    ]) == 0  # fmt: skip
    for column, stem in enumerate(("toy-000001_x0.5", "toy-000001_x1", "toy_x0.5", "toy_x1"), start=1):
        (path,) = drawn.glob(f"{stem}_00_*_6.png")
        assert np.array_equal(cell(image, label_width, 1, column), np.asarray(Image.open(path)))
    assert not np.array_equal(cell(image, label_width, 1, 1), cell(image, label_width, 1, 2))

    # The base column is the base model's own drawing.
    bundle = tiny_sd1_bundle
    models = SamplingModels(bundle.unet, bundle.vae, bundle.text_encoders, bundle.tokenizers)
    prompt = read_prompts(prompt_file).prompts[0]
    base = render_image(
        models, prompt, default_sampler="euler_a", device=torch.device("cpu"), autocast=nullcontext
    )
    assert np.array_equal(cell(image, label_width, 1, 0), np.asarray(base.image))
    assert not np.array_equal(cell(image, label_width, 1, 0), cell(image, label_width, 1, 3))


def test_defaults_the_run_s_prompts_and_seed_and_an_existing_grid_needs_overwrite(run, tmp_path, capsys):
    """A row per sample prompt at its --d; the default output NAME-epochs.png is refused once it exists."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    assert grid(folder, "--epochs", "2", "--weights", "1") == 0
    written = folder / "toy-epochs.png"
    first = written.read_bytes()
    rows = json.loads(Image.open(written).text["loracraft"])["rows"]
    assert [(row["label"], row["seed"]) for row in rows] == [("seed 3: a red circle", 3)]
    capsys.readouterr()
    assert grid(folder, "--epochs", "2", "--weights", "0.5") == 2
    assert capsys.readouterr().err == (
        f"error: --save_to {written} already exists; choose another path or add --overwrite to replace it\n"
    )
    assert written.read_bytes() == first
    assert grid(folder, "--epochs", "2", "--weights", "0.5", "--overwrite") == 0
    assert written.read_bytes() != first


def _moved(setting: str):
    """A copy of the run whose NAME.toml names a `setting` file that is no longer there."""

    def make(run: Path, folder: Path) -> None:
        shutil.copytree(run, folder)
        toml = folder / "toy.toml"
        lines = toml.read_text(encoding="utf-8").splitlines()
        moved = [
            f'{setting} = "{folder}/moved"' if line.startswith(f"{setting} =") else line for line in lines
        ]
        toml.write_text("\n".join(moved) + "\n", encoding="utf-8")

    return make


def _lora_only(run: Path, folder: Path) -> None:
    folder.mkdir()
    shutil.copy(run / "toy-000001.safetensors", folder)


@pytest.mark.parametrize(
    ("make", "argv", "message"),
    [
        (lambda run, folder: folder.mkdir(), (), "OUTPUT_DIR {folder} holds no LoRA files (.safetensors, .ckpt, .pt); "
         "give a training run's --output_dir"),
        (lambda run, folder: None, (), "OUTPUT_DIR {folder} is not a folder; give a training run's --output_dir"),
        (_lora_only, ("--prompts", "{prompts}"), "{folder}/toy.toml not found, so the base model is unknown; give "
         "--pretrained_model_name_or_path BASE"),
        (_lora_only, ("--pretrained_model_name_or_path", "{folder}"), "no prompts: toy's run had no sample_prompts; "
         "give --prompts FILE (.txt, .toml or .json)"),
        (_moved("pretrained_model_name_or_path"), (), "{folder}/toy.toml: the run's base model {folder}/moved is "
         "not there; give --pretrained_model_name_or_path BASE"),
        (_moved("sample_prompts"), (), "{folder}/toy.toml: the run's sample_prompts {folder}/moved is not there; give "
         "--prompts FILE"),
        (shutil.copytree, ("--weights", "0.5,x"), "grid: argument --weights: '0.5,x' is not a list of numbers; write "
         "e.g. --weights 0.4,0.7,1.0 or 0.7-1.5 [5]"),
        (shutil.copytree, ("--weights", "1,nan"), "grid: argument --weights: '1,nan' is not a list of numbers; write "
         "e.g. --weights 0.4,0.7,1.0 or 0.7-1.5 [5]"),
        (shutil.copytree, ("--epochs", "2,last"), "grid: argument --epochs: '2,last' is not a list of epochs; write "
         "e.g. --epochs 2,4,final or --epochs all"),
        (shutil.copytree, ("--seeds", "-2"), "grid: argument --seeds: '-2' is not a list of seeds (whole numbers from "
         "0 to 4294967295, -1 for a random one); write e.g. --seeds 1,2 or -1--1 [8]"),
        (shutil.copytree, ("--epochs", "1,7"), "--epochs 7: toy has no file of epoch 7; it has epoch 1, step 3, "
         "epoch 2, epoch 3 (final)"),
        (shutil.copytree, ("--output_name", "other"), "--output_name other: OUTPUT_DIR {folder} holds no LoRA files "
         "of that name; its runs: toy"),
        (shutil.copytree, ("--device", "cuda:7"), "--device cuda:7: this machine has no such CUDA device; leave "
         "--device out to use the CPU"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line_and_write_nothing(run, tmp_path, capsys, make, argv, message):
    folder = tmp_path / "run"
    make(run, folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n", encoding="utf-8")
    before = sorted(folder.iterdir()) if folder.exists() else None
    assert grid(folder, *(arg.format(folder=folder, prompts=prompts) for arg in argv)) == 2
    assert capsys.readouterr().err == f"error: {message.format(folder=folder)}\n"
    assert (sorted(folder.iterdir()) if folder.exists() else None) == before


def test_several_runs_a_damaged_file_or_unknown_parts_are_one_line(run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    shutil.copy(run / "toy.safetensors", folder / "other.safetensors")
    assert grid(folder) == 2
    assert capsys.readouterr().err == (
        f"error: OUTPUT_DIR {folder} holds the LoRA files of several runs (other, toy); choose one with "
        "--output_name\n"
    )
    damaged = folder / "toy-000002.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    assert grid(folder, "--output_name", "toy", "--epochs", "2") == 2
    assert re.fullmatch(
        rf"error: --epochs {re.escape(str(damaged))}: not a readable \.safetensors file \(.*\); re-download or "
        r"re-save it\n",
        capsys.readouterr().err,
    )
    unknown = folder / "toy-000001.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.weird": torch.zeros(2)}, str(unknown))
    assert grid(folder, "--output_name", "toy", "--epochs", "1") == 2
    assert capsys.readouterr().err == (
        f"error: --epochs {unknown}: lora_unet_mid_block_attentions_0_proj_in has parts of no LoRA or LyCORIS "
        "type (weird); give a kohya LoRA or LyCORIS file\n"
    )
    assert not list(folder.glob("*grid*"))


def randomised(state: dict[str, torch.Tensor], seed: int, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """lycoris_files' zero parts filled with seeded noise (a DoRA magnitude or OFT rescale near 1); alpha
    and IA3's on_input kept."""
    generator = torch.Generator().manual_seed(seed)
    filled = {}
    for key, tensor in state.items():
        part = key.split(".", 1)[1]
        noise = torch.randn(tensor.shape, generator=generator)
        if part in ("alpha", "on_input"):
            filled[key] = tensor
        else:
            filled[key] = 1.0 + 0.05 * noise if part in ("dora_scale", "rescale") else scale * noise
    return filled


@pytest.fixture(scope="module")
def loaded(tiny_sd1):
    return LoadedBase.load(BaseModelSettings(path=tiny_sd1.diffusers_dir, device=torch.device("cpu")))


# A1111 applies what LyCORIS trains for every type but GLoRA (lycoris_files writes A1111's layout, not
# LyCORIS') and IA3 (A1111 patches Linear layers only): module_delta's own tests check those two against
# LyCORIS' modules.
LYCORIS_TYPES = sorted(set(VARIANTS) - {"glora", "ia3"}) + ["kohya_oft"]


def lycoris_state(variant: str) -> dict[str, torch.Tensor]:
    """lycoris_files' file of `variant`; kohya's OFT: Diag-OFT's U-Net blocks under kohya's oft_unet_ names."""
    state, _ = state_dict_of("sd1", "oft" if variant == "kohya_oft" else variant)
    if variant == "kohya_oft":
        return {
            "oft_unet_" + key.removeprefix("lora_unet_"): tensor
            for key, tensor in state.items()
            if key.startswith("lora_unet_") and not key.endswith(".rescale")
        }
    if variant == "boft":  # BOFT cannot factor the tiny text encoder's MLP width (37)
        return {key: tensor for key, tensor in state.items() if not key.startswith("lora_te_")}
    return state


@pytest.mark.parametrize("variant", LYCORIS_TYPES)
def test_every_lycoris_type_changes_each_layer_as_a1111_does_and_comes_out_exactly(loaded, tmp_path, variant):
    path = tmp_path / f"{variant}.safetensors"
    save_file(randomised(lycoris_state(variant), seed=len(variant)), str(path))
    lora = LoRAFile.read(path)
    column = loaded.column(lora, 0.6, variant)
    before = {name: [_clone(layer.weight), _clone(layer.bias)] for name, layer in column.targets.items()}
    with lora_applied(lora, column.targets, 0.6):
        for name, layer in column.targets.items():
            parts = lora.modules[name]
            if variant == "norm":  # LyCORIS' NormModule: w_norm and b_norm added to the weight and bias
                expected = [parts["w_norm"], parts["b_norm"]]
            else:
                change = delta(parts, before[name][0], "a1111")
                expected = [change.weight, change.bias]
            for tensor, original, added in zip(
                (layer.weight, layer.bias), before[name], expected, strict=True
            ):
                if original is not None:
                    added = (
                        torch.zeros_like(original) if added is None else added.float().reshape(original.shape)
                    )
                    assert_added(tensor - original, 0.6 * added, name)
    for name, layer in column.targets.items():
        weight, bias = before[name]
        assert torch.equal(layer.weight, weight) and (bias is None or torch.equal(layer.bias, bias)), name


def assert_added(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    scale = max(expected.abs().max().item(), 1e-3)
    assert (actual - expected).abs().max().item() <= 1e-4 * scale, name


def _clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().clone()


def test_a_lycoris_run_s_epochs_draw_as_a1111_applies_them(run, tiny_sd1_bundle, tmp_path):
    """A LoHa epoch file in the run's folder: its cell is the base model with A1111's LoHa change added."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    state = randomised(state_dict_of("sd1", "loha")[0], seed=7, scale=0.5)
    save_file(state, str(folder / "toy-000002.safetensors"))
    assert grid(folder, "--epochs", "2", "--weights", "0.8", "--base", "--seeds", "4") == 0
    image = Image.open(folder / "toy-epochs.png")
    label_width = image.width - 2 * CELL

    patched = copy.deepcopy(tiny_sd1_bundle)
    modules = LoRAFile.read(folder / "toy-000002.safetensors").modules
    with torch.no_grad():
        for name, base_name in state_dict_of("sd1", "loha")[1].items():
            component, path = base_name.split(".", 1)
            model = patched.unet if component == "unet" else patched.text_encoders[int(component[2:]) - 1]
            weight = model.get_submodule(path).weight
            weight += 0.8 * delta(modules[name], weight, "a1111").weight.float().reshape(weight.shape)
    models = SamplingModels(patched.unet, patched.vae, patched.text_encoders, patched.tokenizers)
    prompt = replace(read_prompts(run.parent / "prompts.txt").prompts[0], seed=4)
    expected = np.asarray(
        render_image(
            models, prompt, default_sampler="euler_a", device=torch.device("cpu"), autocast=nullcontext
        ).image
    )
    drawn = cell(image, label_width, 0, 1, rows=1).astype(int)
    assert np.abs(drawn - expected).max() <= 2
    assert np.abs(drawn - cell(image, label_width, 0, 0, rows=1)).mean() > 5
