"""What a run saves along the way: kohya's names, the retention options, the formats."""

import json

import pytest
import torch
from safetensors.torch import load_file

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.training.state_folder import verify_state_folder
from run_helpers import train_argv

pytestmark = pytest.mark.slow

FLAGS = (
    "--resolution", "64,64", "--network_dim", "4", "--train_batch_size", "2", "--learning_rate", "1e-3",
    "--mixed_precision", "no", "--seed", "3", "--max_data_loader_n_workers", "0", "--cache_latents",
)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 4 images x 2 repeats in one 64x64 bucket: 4 batches, so 4 optimizer steps per epoch.
    return make_kohya_dataset(tmp_path_factory.mktemp("saving-data"), sizes=((64, 64),) * 4, reg_count=0)


def test_step_and_epoch_files_and_states_keep_the_newest_as_asked(tiny_sd1, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    argv = train_argv(
        tiny_sd1.single_file, dataset.train_dir, out, *FLAGS, "--max_train_epochs", "4",
        "--save_every_n_epochs", "1", "--save_last_n_epochs", "2",
        "--save_every_n_steps", "3", "--save_last_n_steps", "5", "--save_state", "--save_last_n_steps_state", "2",
    )  # fmt: skip
    assert main(argv) == 0

    names = sorted(path.name for path in out.iterdir())
    # 16 steps: step saves at 3, 6, 9, 12, 15; keeping 5 steps back leaves 12 and 15 (and states of the
    # last 2 steps: 15). Epoch saves after epochs 1-3 (the 4th is toy.safetensors); keeping 2 leaves 2, 3.
    assert names == [
        "toy-000002-state", "toy-000002.safetensors", "toy-000003-state", "toy-000003.safetensors",
        "toy-state", "toy-step00000012.safetensors", "toy-step00000015-state", "toy-step00000015.safetensors",
        "toy.log", "toy.safetensors", "toy.toml",
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "removed old LoRA file toy-step00000003.safetensors" in printed
    assert "removed old state toy-step00000012-state" in printed
    for state in out.glob("*-state"):
        verify_state_folder(state, "test")
    progress = json.loads((out / "toy-step00000015-state" / "progress.json").read_text())
    assert progress["position"] == {"epoch": 4, "batch": 3, "step": 15}
    assert json.loads((out / "toy-000003-state" / "progress.json").read_text())["position"] == {
        "epoch": 4, "batch": 0, "step": 12,
    }  # fmt: skip
    assert "finished after 16 steps" in (out / "toy.toml").read_text().splitlines()[0]


@pytest.mark.parametrize("suffix", ["ckpt", "pt"])
def test_torch_formats_hold_the_same_tensors(suffix, tiny_sd1, dataset, tmp_path):
    common = (*FLAGS, "--max_train_epochs", "1", "--save_precision", "fp16")
    assert main(train_argv(tiny_sd1.single_file, dataset.train_dir, tmp_path / "st", *common)) == 0
    assert main(train_argv(tiny_sd1.single_file, dataset.train_dir, tmp_path / "pt", *common,
                           "--save_model_as", suffix)) == 0  # fmt: skip

    reference = load_file(tmp_path / "st" / "toy.safetensors")
    saved = torch.load(tmp_path / "pt" / f"toy.{suffix}", weights_only=True)
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[key], reference[key]) for key in reference)
