"""Sample images and the validation loss on CUDA, under the run's precision (fp16, bf16, a float8 base):
the samples are pictures (autocast around the U-Net, the VAE in its own dtype), a run with them trains
the LoRA of a run without them, and two evaluations of the same weights agree. All skip without CUDA."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from run_helpers import set_up, tiny_run_config, train_argv

pytestmark = pytest.mark.gpu


def flags(tiny_sd1, tree, output_dir: Path, *extra: str) -> list[str]:
    return train_argv(
        tiny_sd1.single_file, tree.train_dir, output_dir, "--resolution", "64", "--network_dim", "4",
        "--max_train_steps", "6", "--seed", "1", "--validation_split", "0.25", "--cache_latents",
        "--latent_sampling", "mean", *extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    "precision", [("--mixed_precision", "fp16"), ("--mixed_precision", "bf16"), ("--mixed_precision", "bf16", "--fp8_base")]
)  # fmt: skip
def test_samples_and_validation_on_cuda(tiny_sd1, tmp_path, capsys, precision):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "a red circle --d 1 --s 4 --w 64 --h 64\na blue square --n red --d 2 --s 4 --ss euler_a --w 64 --h 64\n"
    )
    watched = (
        "--sample_prompts", str(prompts), "--sample_every_n_steps", "3", "--sample_at_first",
        "--validate_every_n_steps", "3",
    )  # fmt: skip
    assert main(flags(tiny_sd1, tree, tmp_path / "plain", *precision)) == 0
    assert main(flags(tiny_sd1, tree, tmp_path / "watched", *precision, *watched)) == 0
    printed = capsys.readouterr().out
    assert "is no picture" not in printed and "sample images at step" not in printed
    assert len(list((tmp_path / "watched" / "sample").glob("*.png"))) == 2 * 3  # steps 0, 3, 6
    log = (tmp_path / "watched" / "toy.log").read_text()
    assert "validation loss at step 3: " in log and "validation loss at step 6: " in log
    plain = load_file(tmp_path / "plain" / "toy.safetensors")
    watched_lora = load_file(tmp_path / "watched" / "toy.safetensors")
    # The same draws: only CUDA's own run-to-run differences (atomics in some backward kernels) remain.
    for key, tensor in plain.items():
        assert torch.allclose(tensor.float(), watched_lora[key].float(), rtol=1e-3, atol=1e-6), key


def test_two_evaluations_of_the_same_weights_agree_on_cuda(tiny_sd1, tmp_path):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    config = tiny_run_config(
        tiny_sd1.single_file, tree.train_dir, tmp_path / "out", train_batch_size=2, max_train_steps=2,
        validation_split=0.5, mixed_precision="bf16", cache_latents=True,
    )  # fmt: skip
    start, setup, _ = set_up(config)
    assert start.accelerator.device.type == "cuda"
    first = setup.validation.evaluate(setup.step_models, start.accelerator, setup.parts.optimizer)
    torch.randn(1000, device="cuda")  # the generators move on; the evaluation does not depend on them
    second = setup.validation.evaluate(setup.step_models, start.accelerator, setup.parts.optimizer)
    assert abs(first.overall - second.overall) <= 1e-6 * abs(first.overall)
    assert first.per_subset.keys() == second.per_subset.keys()
