"""`loracraft train` with kohya's optimizers and schedules on the tiny SD1 model: each one trains and is
recorded as kohya records it; the text encoder stops training at --stop_text_encoder_training; schedule-
free optimizers save their evaluation weights; D-Adaptation and Prodigy log d * lr."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.training import run_outputs
from loracraft.training.optimizer import check_optimizer


def needs(package: str) -> None:
    """Skip unless `package` is installed and, for bitsandbytes, its 8-bit optimizers run on this CPU
    (older bitsandbytes has no CPU kernels; tests/unit/test_optimizers.py checks the refusal)."""
    pytest.importorskip(package)
    if package == "bitsandbytes":
        try:
            check_optimizer(TrainConfig(optimizer_type="AdamW8bit"), torch.device("cpu"), echo=lambda _: None)
        except UserError as refusal:
            pytest.skip(str(refusal))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("optimizer-data"), reg_count=0)


def train_flags(tiny_sd1, tree, output_dir: Path, *extra: str) -> list[str]:
    """Four images at 64x64, batch 2: two optimizer steps an epoch."""
    return [
        "train",
        "--pretrained_model_name_or_path", str(tiny_sd1.single_file),
        "--train_data_dir", str(tree.train_dir),
        "--output_dir", str(output_dir),
        "--output_name", "opt",
        "--caption_extension", ".txt",
        "--resolution", "64,64",
        "--network_dim", "4",
        "--train_batch_size", "4",
        "--max_data_loader_n_workers", "0",
        "--seed", "3",
        *extra,
    ]  # fmt: skip


def lora_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata()


def train(tiny_sd1, tree, output_dir: Path, *extra: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    assert main(train_flags(tiny_sd1, tree, output_dir, *extra)) == 0
    return lora_tensors(output_dir / "opt.safetensors")


def up_weights(tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    return [value for key, value in sorted(tensors.items()) if key.startswith(prefix) and "lora_up" in key]


RUNS = {
    "Prodigy": (["--optimizer_type", "Prodigy", "--learning_rate", "1.0"], "prodigyopt.prodigy.Prodigy"),
    "Lion": (["--optimizer_type", "Lion", "--learning_rate", "1e-4", "--optimizer_args", "weight_decay=0.01"],
             "lion_pytorch.lion_pytorch.Lion(weight_decay=0.01)"),
    "use_8bit_adam": (["--use_8bit_adam", "--learning_rate", "1e-3"], "bitsandbytes.optim.adamw.AdamW8bit"),
    "AdaFactor": (["--optimizer_type", "Adafactor"], "transformers.optimization.Adafactor(relative_step=True)"),
    "DAdaptAdam+cosine_with_restarts": (
        ["--optimizer_type", "DAdaptAdam", "--learning_rate", "1.0", "--lr_scheduler", "cosine_with_restarts",
         "--lr_scheduler_num_cycles", "2", "--lr_warmup_steps", "1"],
        "dadaptation.dadapt_adam.DAdaptAdam",
    ),
    "SGDNesterov8bit": (["--optimizer_type", "SGDNesterov8bit", "--learning_rate", "1e-2"],
                        "bitsandbytes.optim.sgd.SGD8bit(momentum=0.9)"),
}  # fmt: skip
PACKAGES = {"Prodigy": "prodigyopt", "Lion": "lion_pytorch", "use_8bit_adam": "bitsandbytes"}
PACKAGES |= {"DAdaptAdam+cosine_with_restarts": "dadaptation", "SGDNesterov8bit": "bitsandbytes"}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_optimizer_trains_and_is_recorded_as_kohya_does(tiny_sd1, tree, tmp_path, run):
    if run in PACKAGES:
        needs(PACKAGES[run])
    flags, recorded = RUNS[run]
    tensors, metadata = train(tiny_sd1, tree, tmp_path / "out", "--max_train_steps", "2", *flags)
    assert metadata["ss_optimizer"] == recorded
    assert all(up.abs().sum() > 0 for up in up_weights(tensors, "lora_unet_")[:4])


def test_text_encoder_stops_training_at_its_step(tiny_sd1, tree, tmp_path, capsys):
    """Trained 1 step, and 3 steps with the text encoder stopped after step 1: the text encoder's LoRA
    is the same in both files, the U-Net's trained on."""
    one_step, _ = train(tiny_sd1, tree, tmp_path / "one", "--max_train_steps", "1", "--learning_rate", "1e-3")
    stopped, _ = train(
        tiny_sd1, tree, tmp_path / "stopped", "--max_train_steps", "3", "--learning_rate", "1e-3",
        "--stop_text_encoder_training", "1",
    )  # fmt: skip
    assert "text encoder: its LoRA stops training at step 1" in capsys.readouterr().out
    text_encoder_keys = [key for key in one_step if key.startswith("lora_te_")]
    assert text_encoder_keys and all(torch.equal(one_step[key], stopped[key]) for key in text_encoder_keys)
    assert any(up.abs().sum() > 0 for up in up_weights(stopped, "lora_te_"))
    unet_keys = [key for key in one_step if key.startswith("lora_unet_") and "lora_up" in key]
    assert any(not torch.equal(one_step[key], stopped[key]) for key in unet_keys)


def test_text_encoder_never_trained_with_minus_one(tiny_sd1, tree, tmp_path):
    tensors, _ = train(
        tiny_sd1, tree, tmp_path / "out", "--max_train_steps", "2", "--learning_rate", "1e-3",
        "--stop_text_encoder_training", "-1",
    )  # fmt: skip
    assert all(up.abs().sum() == 0 for up in up_weights(tensors, "lora_te_"))
    assert any(up.abs().sum() > 0 for up in up_weights(tensors, "lora_unet_"))


def test_schedule_free_optimizer_saves_its_evaluation_weights(tiny_sd1, tree, tmp_path, monkeypatch):
    schedulefree = pytest.importorskip("schedulefree")
    events = []
    for mode in ("train", "eval"):
        original = getattr(schedulefree.AdamWScheduleFree, mode)

        def switch(self, original=original, mode=mode):
            events.append(mode)
            return original(self)

        monkeypatch.setattr(schedulefree.AdamWScheduleFree, mode, switch)
    save_lora = run_outputs.save_lora

    def save_and_note(*args, **kwargs):
        events.append("save")
        return save_lora(*args, **kwargs)

    monkeypatch.setattr(run_outputs, "save_lora", save_and_note)
    train(
        tiny_sd1, tree, tmp_path / "out", "--optimizer_type", "AdamWScheduleFree", "--learning_rate", "1e-3",
        "--max_train_epochs", "2", "--save_every_n_epochs", "1",
    )  # fmt: skip
    assert events == ["train", "eval", "save", "train", "eval", "save", "train"]


def test_adaptive_optimizer_logs_d_times_lr(tiny_sd1, tree, tmp_path):
    pytest.importorskip("prodigyopt")
    logs = tmp_path / "logs"
    train(
        tiny_sd1, tree, tmp_path / "out", "--optimizer_type", "Prodigy", "--learning_rate", "1.0",
        "--max_train_steps", "3", "--logging_dir", str(logs),
    )  # fmt: skip
    run_dir = next(logs.iterdir())
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    # kohya's tags: lr/unet, lr/textencoder (SDXL: lr/textencoder 1, lr/textencoder 2)
    assert {"lr/unet", "lr/textencoder", "lr/d*lr/unet", "lr/d*lr/textencoder"} <= set(tags)
    d_times_lr = [event.value for event in events.Scalars("lr/d*lr/unet")]
    assert len(d_times_lr) == 3 and d_times_lr[0] == pytest.approx(1e-6)  # Prodigy's d0 times lr 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW8bit", "PagedLion8bit", "SGDNesterov8bit"])
def test_bitsandbytes_optimizers_train_on_cuda(tiny_sd1, tree, tmp_path, capsys, name):
    pytest.importorskip("bitsandbytes")
    tensors, metadata = train(
        tiny_sd1, tree, tmp_path / "out", "--optimizer_type", name, "--learning_rate", "1e-3",
        "--max_train_steps", "2", "--mixed_precision", "bf16",
    )  # fmt: skip
    assert metadata["ss_optimizer"].startswith("bitsandbytes.optim.")
    assert "not supported on CPU" not in capsys.readouterr().out  # paging works on CUDA
    assert all(up.abs().sum() > 0 for up in up_weights(tensors, "lora_unet_")[:4])
