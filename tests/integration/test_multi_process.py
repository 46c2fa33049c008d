"""`loracraft train` as two processes (torch.distributed.run; gloo on the CPU, as `accelerate launch`
starts them on GPUs) against one launched process with the same global batch, on the tiny SD1 model.

One process with batch 1 and --gradient_accumulation_steps 2 and two processes with batch 1 train the
same two images per optimizer step: the first process the epoch's batches 0, 2, ..., the second 1, 3, ...
Both draw each image's noise and timesteps from a seed made of its name (tests/noise_per_image.py), so
the two runs compute the same gradients, and the LoRA files match up to float32 rounding.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import nan_on_one_process
import noise_per_image
from data_helpers import make_kohya_dataset
from run_helpers import train_argv

pytestmark = pytest.mark.slow


def flags(tiny_sd1, tree, output_dir: Path, *extra: str) -> list[str]:
    """4 images x 2 repeats = 8 batches of 1, of which 2 steps train: the text encoder's LoRA in the
    first, then it stops, so DDP must not wait for its gradients in the second."""
    return train_argv(
        tiny_sd1.single_file,
        tree.train_dir,
        output_dir,
        "--resolution", "64,64",
        "--network_dim", "4",
        "--network_alpha", "4",
        "--learning_rate", "1e-3",
        "--lr_scheduler", "constant",
        "--train_batch_size", "1",
        "--max_train_steps", "2",
        "--cache_latents",
        "--latent_sampling", "mean",
        "--stop_text_encoder_training", "1",
        "--seed", "7",
        *extra,
    )  # fmt: skip


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def steps_of(path: Path) -> str:
    with safe_open(path, "pt") as f:
        return f.metadata()["ss_steps"]


def relative_difference(ours: dict, theirs: dict, prefix: str) -> float:
    """|a - b| / |a| over every `lora_up` weight of one part: they start at zero, so they are the
    learned update itself."""
    keys = [key for key in ours if key.startswith(prefix) and key.endswith("lora_up.weight")]
    a = torch.cat([ours[key].flatten() for key in keys])
    b = torch.cat([theirs[key].flatten() for key in keys])
    return ((a - b).norm() / a.norm()).item()


def launch(processes: int, flags: list[str], script=noise_per_image, expect: int = 0, **env: str):
    """`loracraft train` as `processes` processes of torch.distributed.run, seeded per image."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    ran = subprocess.run(
        [*launcher, str(processes), script.__file__, *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )
    assert (ran.returncode == 0) == (expect == 0), ran.stderr[-3000:]
    return ran


@pytest.fixture(scope="module")
def runs(tiny_sd1, tmp_path_factory):
    """The reference is launched too, as one process: accelerate's distributed mode computes one of the
    tiny model's gradients 1% off a plain process's (on the CPU, for one image at timestep 20, with one
    process as with two), which would hide the 0.1% this test can see."""
    root = tmp_path_factory.mktemp("multi_process")
    tree = make_kohya_dataset(root / "data", reg_count=0)
    one = launch(1, flags(tiny_sd1, tree, root / "one", "--gradient_accumulation_steps", "2"))
    two = launch(
        2,
        flags(
            tiny_sd1,
            tree,
            root / "two",
            "--logging_dir",
            str(root / "logs"),
            "--save_every_n_steps",
            "1",
            "--save_state",
        ),
    )
    return root, one.stdout, two.stdout, tree


def test_two_processes_train_the_lora_of_one_process_with_the_same_global_batch(runs):
    root, printed_one, _, _ = runs
    assert "  8 batches / grad accumulation 2 = 4 optimizer steps per epoch" in printed_one.splitlines()
    one, two = root / "one" / "toy.safetensors", root / "two" / "toy.safetensors"
    assert steps_of(one) == steps_of(two) == "2"
    ours, theirs = adapter_weights(one), adapter_weights(two)
    assert ours.keys() == theirs.keys()
    # The text encoder's LoRA is the first step's update, made of both images' averaged gradients:
    # measured 1e-5. The U-Net's has a second step, where Adam amplifies float32 rounding (gloo's
    # average against accelerate's accumulated halves): measured 7e-4 to 3e-3 on two builds of the tiny
    # model. Training each image as its own step instead, as processes that did not average would,
    # differs by 0.8 (U-Net) and 0.96 (text encoder).
    assert relative_difference(ours, theirs, "lora_te_") < 1e-3
    assert relative_difference(ours, theirs, "lora_unet_") < 2e-2
    assert any(theirs[key].abs().sum() > 0 for key in theirs if key.startswith("lora_te_") and "up" in key)


def test_two_processes_write_one_set_of_files_and_print_the_plan_once(runs):
    root, _, printed, _ = runs
    assert sorted(path.name for path in (root / "two").iterdir()) == [
        "toy-state", "toy-step00000001-state", "toy-step00000001.safetensors", "toy.log", "toy.safetensors",
        "toy.toml",
    ]  # fmt: skip
    # NAME.log is written by the main process alone: one header, one end.
    log = (root / "two" / "toy.log").read_text()
    assert log.count("plan:") == 1 and log.count("finished: toy.safetensors") == 1
    # Every process's generators in one state.
    assert len(json.loads((root / "two" / "toy-step00000001-state" / "rng.json").read_text())) == 2
    assert len(list((root / "logs").iterdir())) == 1
    assert printed.count("base model: ") == 1
    for line in [
        "  8 batches / 2 processes = 4 batches per process per epoch",
        "  global batch: batch size 1 x 2 processes x grad accumulation 1 = 2 images per optimizer step",
        "  4 batches / grad accumulation 1 = 4 optimizer steps per epoch",
    ]:
        assert printed.splitlines().count(line) == 1


def test_two_processes_resume_a_state_to_the_same_lora(runs, tiny_sd1):
    root, _, _, tree = runs
    state = root / "two" / "toy-step00000001-state"
    launch(2, flags(tiny_sd1, tree, root / "resumed", "--resume", str(state)))
    resumed, whole = (
        adapter_weights(root / "resumed" / "toy.safetensors"),
        adapter_weights(root / "two" / "toy.safetensors"),
    )
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[key], whole[key]) for key in whole)


def test_a_nan_on_one_process_stops_every_process_in_one_line(tiny_sd1, tmp_path):
    # The second process's last loss is NaN: it spreads to every process's weights with the gradients,
    # so the first process must stop too (alone, it would save NaN weights or wait for the other).
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out = tmp_path / "out"
    ran = launch(
        2, flags(tiny_sd1, tree, out), nan_on_one_process, expect=1, POISON_RANK="1", POISON_BATCH="2"
    )
    # Each process says it (a progress bar may end on the same line as one of them).
    assert ran.stderr.count("error: the loss became nan at step 2 (epoch 1)") == 2, ran.stderr[-3000:]
    assert not list(out.glob("*.safetensors"))
    assert "failed: the loss became nan" in (out / "toy.toml").read_text().splitlines()[0]


def test_two_processes_sample_on_one_and_validate_on_both(tiny_sd1, tmp_path):
    """The main process draws the samples while the other waits at the next step; both evaluate the
    validation set (their forward passes must match under DDP) and the main one logs it, once."""
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle --d 1 --s 2 --w 64 --h 64\n")
    out = tmp_path / "out"
    extra = (
        "--sample_prompts", str(prompts), "--sample_every_n_steps", "1",
        "--validation_split", "0.25", "--validate_every_n_steps", "1",
    )  # fmt: skip
    launch(2, flags(tiny_sd1, tree, out, *extra))
    samples = sorted(path.name.rsplit("_", 2)[0] for path in (out / "sample").iterdir())
    assert samples == ["toy_000001_00", "toy_000002_00"]
    events = [line.split("  ", 1)[1].split(":")[0] for line in (out / "toy.log").read_text().splitlines()
              if line[:4].isdigit()]  # fmt: skip
    # The run's last step and its epoch's end come after the epoch's loss (the loop has ended there).
    assert events == [
        "samples at step 1", "validation loss at step 1", "epoch 1", "samples at step 2",
        "validation loss at step 2", "validation loss at epoch 1 (step 2)", "finished",
    ]  # fmt: skip
