"""A NaN or inf loss stops the run with one line naming the step and the likely causes; the epoch files
saved before it stay exactly as they were, and nothing is saved after it."""

import math

import pytest
import torch
from safetensors import safe_open

import loracraft.training.trainer as trainer
from data_helpers import make_kohya_dataset
from loracraft.cli import main
from run_helpers import train_argv

pytestmark = pytest.mark.slow


def flags(tiny_sd1, train_dir, out, *extra: str) -> list[str]:
    """4 images x 2 repeats at batch size 2: 4 batches an epoch; an epoch file after every epoch."""
    return train_argv(
        tiny_sd1.single_file,
        train_dir,
        out,
        "--resolution",
        "64",
        "--enable_bucket",
        "false",
        "--network_dim",
        "2",
        "--train_batch_size",
        "2",
        "--max_train_epochs",
        "3",
        "--save_every_n_epochs",
        "1",
        "--learning_rate",
        "1e-3",
        "--seed",
        "5",
        *extra,
    )


def poison_batch(monkeypatch, number: int, value: float = math.nan) -> None:
    """The loss of the `number`-th batch (counted from 1) becomes `value`, as an overflow would make it."""
    calls = []
    real = trainer.diffusion_loss

    def loss(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        return result * value if len(calls) == number else result

    monkeypatch.setattr(trainer, "diffusion_loss", loss)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_epoch_file(tiny_sd1, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    train_dir = make_kohya_dataset(tmp_path / "data", reg_count=0).train_dir
    clean, stopped = tmp_path / "clean", tmp_path / "stopped"
    assert main(flags(tiny_sd1, train_dir, clean)) == 0
    capsys.readouterr()

    poison_batch(monkeypatch, 6)  # epoch 2's second batch
    assert main(flags(tiny_sd1, train_dir, stopped)) == 2

    assert error_line(capsys) == (
        "error: the loss became nan at step 6 (epoch 2), so training stopped there; the last epoch file, "
        "toy-000001.safetensors, is intact. Likely causes: a learning rate too high (lower --learning_rate / "
        "--unet_lr / --text_encoder_lr), or an fp16 overflow (try --mixed_precision bf16, and --no_half_vae)"
    )
    assert sorted(p.name for p in stopped.glob("*.safetensors")) == ["toy-000001.safetensors"]
    # The epoch file is the one a run without the NaN writes, byte for byte.
    assert (stopped / "toy-000001.safetensors").read_bytes() == (
        clean / "toy-000001.safetensors"
    ).read_bytes()


def test_an_inf_loss_in_the_first_epoch_writes_no_lora_file(tiny_sd1, tmp_path, capsys, monkeypatch):
    train_dir = make_kohya_dataset(tmp_path / "data", reg_count=0).train_dir
    poison_batch(monkeypatch, 2, math.inf)
    assert main(flags(tiny_sd1, train_dir, tmp_path / "out")) == 2
    message = error_line(capsys)
    assert message.startswith("error: the loss became inf at step 2 (epoch 1), so training stopped there; ")
    assert "no LoRA file was written" in message
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_a_nan_inside_an_accumulation_window_stops_before_the_epoch_file(
    tiny_sd1, tmp_path, capsys, monkeypatch
):
    train_dir = make_kohya_dataset(tmp_path / "data", reg_count=0).train_dir
    # 4 batches, 2 per window: steps 1 and 2. Batch 3 is not the one a step logs (batch 4 is).
    poison_batch(monkeypatch, 3)
    out = tmp_path / "out"
    assert main(flags(tiny_sd1, train_dir, out, "--gradient_accumulation_steps", "2")) == 2
    assert error_line(capsys).startswith("error: the loss became nan at step 2 (epoch 1)")
    assert not list(out.glob("*.safetensors"))


def test_a_learning_rate_that_explodes_the_weights_stops_the_run(tiny_sd1, tmp_path, capsys):
    train_dir = make_kohya_dataset(tmp_path / "data", reg_count=0).train_dir
    out = tmp_path / "out"
    explode = flags(tiny_sd1, train_dir, out, "--max_train_epochs", "1")
    explode[explode.index("--learning_rate") + 1] = "1e30"
    assert main(explode) == 2
    message = error_line(capsys)
    assert message.startswith("error: the loss became nan at step ") and "(epoch 1)" in message
    assert "a learning rate too high" in message
    assert not list(out.glob("*.safetensors"))


def test_an_epoch_file_written_before_the_stop_loads_with_finite_weights(tiny_sd1, tmp_path, monkeypatch):
    train_dir = make_kohya_dataset(tmp_path / "data", reg_count=0).train_dir
    poison_batch(monkeypatch, 9)  # epoch 3's first batch
    out = tmp_path / "out"
    assert main(flags(tiny_sd1, train_dir, out)) == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "toy-000001.safetensors",
        "toy-000002.safetensors",
    ]
    with safe_open(out / "toy-000002.safetensors", "pt") as f:
        assert all(torch.isfinite(f.get_tensor(key)).all() for key in f.keys())
