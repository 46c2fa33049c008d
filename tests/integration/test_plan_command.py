"""`loracraft plan` against what really happens: the run `train` then makes (steps, files), the messages a
bad run stops with, a real schedule's learning rates, and the memory a real training step takes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_helpers import make_kohya_dataset
from loracraft.cli import config_from_flags, main
from loracraft.config.load import build_config
from loracraft.tools.plan import plan_run
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.lr_curve import lr_curve
from loracraft.training.progress import TrainingLog
from loracraft.training.run_files import kept_files
from loracraft.training.step import diffusion_loss
from loracraft.training.throughput_record import ThroughputKey, record_throughput
from loracraft.training.trainer import start_run
from run_helpers import set_up, train_argv

TESTS = Path(__file__).parents[1]
# 4 images x 2 repeats in batches of 2, 2 batches a step: 2 optimizer steps an epoch, 3 epochs.
FLAGS = (
    "--resolution", "64,64", "--network_dim", "4", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
    "--max_train_epochs", "3", "--learning_rate", "1e-3", "--text_encoder_lr", "4e-4",
    "--lr_scheduler", "cosine_with_restarts", "--lr_scheduler_num_cycles", "2", "--lr_warmup_steps", "2",
    "--mixed_precision", "no", "--seed", "5", "--max_data_loader_n_workers", "0", "--cache_latents",
)  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A throughput cache of the test's own."""
    monkeypatch.setenv("LORACRAFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("plan-data"), sizes=((64, 64),) * 4, reg_count=0)


@pytest.mark.slow
def test_plan_lists_the_steps_and_files_train_then_makes(tiny_sd1, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    argv = train_argv(
        tiny_sd1.single_file, dataset.train_dir, out, *FLAGS,
        "--save_every_n_epochs", "1", "--save_last_n_epochs", "1", "--save_every_n_steps", "2",
        "--save_last_n_steps", "2", "--save_state",
    )  # fmt: skip
    # What a live (or killed) training of the same name is writing: a plan leaves it alone.
    out.mkdir()
    (out / ".toy-000001.safetensors.k3x9q.tmp").write_bytes(b"half written")
    printed: list[str] = []
    planned = plan_run(config_from_flags(argv[1:]), printed.append)
    # The plan writes nothing else.
    assert sorted(path.name for path in out.iterdir()) == [".toy-000001.safetensors.k3x9q.tmp", "toy-lr.png"]
    assert planned.curve_file == out / "toy-lr.png"
    text = "\n".join(printed)
    assert "  3 epochs x 2 = 6 optimizer steps" in text
    assert "  toy-000002.safetensors        after epoch 2 (step 4)" in text
    assert "Time: no measured throughput for this device yet: the first run records one" in text
    assert "with --gradient_checkpointing: activations" in text

    assert main(argv) == 0
    written = {path.name for path in out.iterdir()} - {"toy-lr.png"}
    assert written == set(kept_files(planned.files))
    steps = planned.plan.steps.max_train_steps
    assert f"finished after {steps} steps" in (out / "toy.toml").read_text().splitlines()[0]
    capsys.readouterr()


def test_the_curve_is_the_rate_every_step_of_a_real_run_uses(tiny_sd1, dataset, tmp_path):
    flags = {
        "pretrained_model_name_or_path": str(tiny_sd1.single_file), "train_data_dir": str(dataset.train_dir),
        "output_dir": str(tmp_path / "out"), "caption_extension": ".txt", "resolution": "64,64",
        "network_dim": 4, "train_batch_size": 2, "gradient_accumulation_steps": 2, "max_train_epochs": 3,
        "learning_rate": 1e-3, "text_encoder_lr": [4e-4], "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 2, "lr_warmup_steps": 2, "cache_latents": True, "seed": 5,
        "mixed_precision": "no", "max_data_loader_n_workers": 0,
    }  # fmt: skip
    config = build_config({}, flags)
    start, setup, _ = set_up(config)
    network = start.accelerator.unwrap_model(setup.parts.model).network
    groups = network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lrs)
    curve = lr_curve(start.config, groups, start.plan.steps.max_train_steps)

    used: list[list[float]] = []
    optimizer = setup.parts.optimizer.optimizer  # accelerate's wrapper steps the torch optimizer
    optimizer.register_step_pre_hook(lambda opt, *_: used.append([group["lr"] for group in opt.param_groups]))
    log = TrainingLog(start.plan.steps.max_train_steps, show_bar=False)
    loss_of = lambda batch: diffusion_loss(setup.step_models, batch, start.accelerator.device)  # noqa: E731
    run_epochs(start.accelerator, setup.parts, loss_of, start.plan.steps, 0.0, log, LoopHooks())

    assert curve.groups == ("unet", "textencoder") and curve.steps == len(used) == 6
    assert [list(rates) for rates in zip(*curve.rates, strict=True)] == used
    assert used[0] == [0.0, 0.0] and used[2] == pytest.approx([1e-3, 4e-4])  # warm-up, then the full rates


@pytest.mark.parametrize(
    "change, message",
    [
        (("--train_data_dir", "missing"), "does not exist"),
        (("--network_dim", "many"), "--network_dim"),
        (("--pretrained_model_name_or_path", "broken.safetensors"), "broken.safetensors"),
    ],
)
def test_plan_stops_with_trains_message_and_writes_nothing(
    tiny_sd1, dataset, tmp_path, capsys, change, message
):
    (tmp_path / "broken.safetensors").write_text("not a model")
    replaced = {
        "missing": str(tmp_path / "missing"),
        "broken.safetensors": str(tmp_path / "broken.safetensors"),
    }
    flag, value = change[0], replaced.get(change[1], change[1])

    def argv(command: str, out: Path) -> list[str]:
        return [command, *train_argv(tiny_sd1.single_file, dataset.train_dir, out, *FLAGS, flag, value)[1:]]

    def errors() -> list[str]:
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]

    assert main(argv("plan", tmp_path / "planned" / "out")) == 2
    planned = errors()
    assert main(argv("train", tmp_path / "trained" / "out")) == 2
    assert len(planned) == 1 and planned == errors() and message in planned[0]
    assert not (tmp_path / "planned").exists()  # the output folder it made on the way is gone again


@pytest.mark.slow
def test_a_measured_throughput_gives_the_runs_duration(tiny_sd1, dataset, tmp_path):
    argv = train_argv(tiny_sd1.single_file, dataset.train_dir, tmp_path / "out", *FLAGS)[1:]
    config = config_from_flags(argv)
    start = start_run(config, lambda _: None)
    key = ThroughputKey.for_run(start.config, start.plan, start.bundle.family, start.accelerator.device)
    record_throughput(key, 2.5, 100, measured_at=1_700_000_000)
    printed: list[str] = []
    planned = plan_run(config, printed.append)
    assert planned.throughput is not None and planned.throughput.seconds_per_step == 2.5
    line = next(line for line in printed if line.startswith("Time: "))
    assert (
        line
        == f"Time: about 2.5 s/step, 15 s for the run's 6 steps (measured on this device on {planned.throughput.date})"
    )


# The memory estimate against a real step's memory, measured in a child process: the process's peak
# resident memory (VmHWM, reset through /proc/self/clear_refs) above its resident memory just before the
# step. glibc's malloc would keep freed memory for reuse instead of returning it, hiding the step's new
# allocations from the count; a fixed mmap threshold makes every allocation of 64 KiB or more its own
# mapping, given back when freed, so the count follows the live tensors.
MEASURED_FLAGS = {
    "resolution": "256,256", "network_dim": 4, "train_batch_size": 2, "max_train_steps": 4,
    "mixed_precision": "no", "seed": 3, "max_data_loader_n_workers": 0, "caption_extension": ".txt",
}  # fmt: skip


def _resident(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def measure_step_memory(flags_json: str) -> None:
    """In the child: train 4 steps; print the peak increase of step 2 (without gradient checkpointing) and
    of step 3 (with it), as JSON."""
    torch.set_num_threads(1)
    start, setup, _ = set_up(build_config({}, json.loads(flags_json)))
    model = start.accelerator.unwrap_model(setup.parts.model)
    increases: dict[str, int] = {}
    before = 0

    def begin() -> None:
        nonlocal before
        before = _resident("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS

    def after_step(position) -> None:
        if position.step >= 2:
            increases[str(position.step == 3)] = _resident("VmHWM") - before
        if position.step == 2:
            model.enable_gradient_checkpointing()
            model.train()
        begin()

    log = TrainingLog(start.plan.steps.max_train_steps, show_bar=False)
    loss_of = lambda batch: diffusion_loss(setup.step_models, batch, start.accelerator.device)  # noqa: E731
    run_epochs(
        start.accelerator, setup.parts, loss_of, start.plan.steps, 1.0, log, LoopHooks(after_step=after_step)
    )
    print(json.dumps(increases))


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak memory reset"
)
def test_the_estimate_is_within_a_fifth_of_a_real_steps_memory(tiny_sd1, tmp_path):
    data = make_kohya_dataset(tmp_path / "data", sizes=((256, 256),) * 2, formats=("png", "png"), reg_count=0)
    flags = {
        **MEASURED_FLAGS, "pretrained_model_name_or_path": str(tiny_sd1.single_file),
        "train_data_dir": str(data.train_dir), "output_dir": str(tmp_path / "out"),
    }  # fmt: skip
    child = (
        f"import sys; sys.path[:0] = {[str(TESTS), str(TESTS / 'integration')]!r}; "
        f"import test_plan_command; test_plan_command.measure_step_memory({json.dumps(flags)!r})"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, check=True
    )
    measured = {key == "True": value for key, value in json.loads(result.stdout.splitlines()[-1]).items()}

    memory = plan_run(build_config({}, flags), lambda _: None).memory
    for checkpointing in (False, True):
        estimated = memory.activations[checkpointing] + memory.gradients
        # The estimate counts the tensors; the measurement also sees the image decoding, oneDNN's scratch
        # memory, allocations under the mmap threshold and Python's own objects: a fifth either way.
        assert estimated == pytest.approx(measured[checkpointing], rel=0.2), (
            checkpointing,
            estimated,
            measured,
        )
    assert memory.activations[True] < memory.activations[False] / 1.5


@pytest.mark.slow
def test_a_finished_run_records_its_speed_for_the_next_plan(tiny_sd1, dataset, tmp_path, cache):
    """20 steps of batch 2 (one batch a step): the run times its steps (not the first after each epoch's
    start) and `plan` of the same settings then tells the duration from that record."""
    argv = train_argv(
        tiny_sd1.single_file, dataset.train_dir, tmp_path / "out", *FLAGS,
        "--gradient_accumulation_steps", "1", "--max_train_epochs", "5",
    )  # fmt: skip
    assert main(argv) == 0
    assert (cache / "throughput.json").is_file()
    planned = plan_run(config_from_flags(argv[1:]), lambda _: None)
    measured = planned.throughput
    assert measured is not None and 10 <= measured.steps < 20 and 0 < measured.seconds_per_step < 10
    assert measured.date == time.strftime("%Y-%m-%d")
