"""The trackers and NAME.log on a tiny SD1 training: the keys kohya logs, at the right steps, with values
that agree with each other, and wandb's absence as one line."""

import re
import sys
from functools import partial

import pytest

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.data.summary import format_plan
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.progress import TrainingLog, images_per_step
from loracraft.training.run_log import RunLog
from loracraft.training.step import diffusion_loss
from run_helpers import set_up, tiny_run_config, train_argv

SECRET = "0123456789abcdef-secret-key"
STEP_KEYS = {"loss/current", "loss/average", "lr/unet", "lr/textencoder"}
READ_BACK_KEYS = {"throughput/s_per_step", "throughput/images_per_s", "memory/peak_gib"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("data"), reg_count=0)


class RecordingTracker:
    def __init__(self):
        self.scalars: list[tuple[int, dict]] = []

    def log_scalars(self, values, step):
        self.scalars.append((step, dict(values)))

    def close(self):
        pass


@pytest.fixture(scope="module")
def tracked_run(tiny_sd1, tree, tmp_path_factory):
    """Two epochs of the tiny model, read back every 3 steps, logged to a recording tracker and NAME.log."""
    output_dir = tmp_path_factory.mktemp("out")
    config = tiny_run_config(
        tiny_sd1.single_file, tree.train_dir, output_dir,
        train_batch_size=2, max_train_epochs=2, learning_rate=1e-3, wandb_api_key=SECRET,
    )  # fmt: skip
    start, setup, _ = set_up(config)
    run_log = RunLog.for_run(config, print, writes=True)
    run_log.begin(config, format_plan(start.plan))
    tracker = RecordingTracker()
    log = TrainingLog(
        start.plan.steps.max_train_steps,
        [tracker],
        show_bar=False,
        sync_every=3,
        average_window=start.plan.batches_per_epoch,
        images_per_step=images_per_step(start.plan),
        run_log=run_log,
    )
    loss_of = partial(diffusion_loss, setup.step_models, device=start.accelerator.device)
    run_epochs(
        start.accelerator, setup.parts, loss_of, start.plan.steps, config.max_grad_norm, log, LoopHooks()
    )
    log.close()
    run_log.end("finished")
    return start.plan, tracker, (output_dir / "toy.log").read_text()


def test_every_step_gets_kohyas_keys_and_each_read_back_the_speed(tracked_run):
    plan, tracker, _ = tracked_run
    per_epoch, total = plan.steps.steps_per_epoch, plan.steps.max_train_steps
    assert per_epoch >= 4 and plan.steps.num_epochs == 2
    step_logs = [(step, values) for step, values in tracker.scalars if "loss/current" in values]
    assert [step for step, _ in step_logs] == list(range(1, total + 1))
    # The losses are read back every 3 steps and at each epoch's end.
    read_backs = sorted(
        {epoch * per_epoch + offset for epoch in range(2) for offset in range(3, per_epoch + 1, 3)}
        | {per_epoch, total}
    )
    for step, values in step_logs:
        expected = STEP_KEYS | (READ_BACK_KEYS if step in read_backs else set())
        assert set(values) == expected, step
        if step in read_backs:
            assert values["throughput/s_per_step"] > 0 and values["memory/peak_gib"] > 0
            assert values["throughput/images_per_s"] == pytest.approx(
                images_per_step(plan) / values["throughput/s_per_step"]
            )


def test_the_epoch_averages_go_against_the_epochs_and_match_the_step_losses(tracked_run):
    plan, tracker, _ = tracked_run
    per_epoch = plan.steps.steps_per_epoch
    losses = {step: values["loss/current"] for step, values in tracker.scalars if "loss/current" in values}
    epoch_logs = [(step, values) for step, values in tracker.scalars if "loss/epoch_average" in values]
    assert [step for step, _ in epoch_logs] == [1, 2]
    for epoch, values in epoch_logs:
        steps = range((epoch - 1) * per_epoch + 1, epoch * per_epoch + 1)
        mean = sum(losses[step] for step in steps) / per_epoch
        assert values == {"loss/epoch_average": pytest.approx(mean, rel=1e-5)}
    # loss/average is the mean over the last epoch's worth of steps (kohya's avr_loss).
    last_of_first_epoch = next(
        values for step, values in tracker.scalars if step == per_epoch and "loss/average" in values
    )
    assert last_of_first_epoch["loss/average"] == pytest.approx(
        epoch_logs[0][1]["loss/epoch_average"], rel=1e-5
    )


def test_name_log_holds_the_plan_the_settings_and_each_epoch(tracked_run):
    plan, tracker, text = tracked_run
    epoch_averages = [
        values["loss/epoch_average"] for _, values in tracker.scalars if "loss/epoch_average" in values
    ]
    assert format_plan(plan).splitlines()[0] in text
    assert '  wandb_api_key = "(hidden)"' in text.splitlines() and SECRET not in text
    events = re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (.*)$", text, flags=re.MULTILINE)
    per_epoch = plan.steps.steps_per_epoch
    assert events == [
        f"epoch 1: average loss {epoch_averages[0]:.6f} (step {per_epoch})",
        f"epoch 2: average loss {epoch_averages[1]:.6f} (step {2 * per_epoch})",
        "finished",
    ]


def test_log_with_wandb_without_the_package_stops_in_one_line(tiny_sd1, tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    argv = train_argv(tiny_sd1.single_file, tree.train_dir, tmp_path / "out", "--log_with", "wandb")
    assert main([*argv, "--resolution", "64", "--max_train_steps", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --log_with wandb needs the wandb package, which is not installed: pip install wandb"
    )
    assert not (tmp_path / "out" / "toy.safetensors").exists()
