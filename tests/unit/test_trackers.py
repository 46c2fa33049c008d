"""The trackers (TensorBoard, wandb through a fake module), their settings and the progress log's numbers."""

import math
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from loracraft.config.load import build_config
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.training import progress
from loracraft.training.progress import StepClock, TrainingLog
from loracraft.training.trackers import (
    api_key_warning,
    check_trackers,
    open_trackers,
    sanitized_config,
    tracker_settings,
)

SECRET = "0123456789abcdef-secret-key"


class FakeTracker:
    """Records every call, as (kind, payload, step)."""

    def __init__(self):
        self.calls: list[tuple[str, object, int | None]] = []

    def log_scalars(self, values, step):
        self.calls.append(("scalars", dict(values), step))

    def log_images(self, images, step, captions):
        self.calls.append(("images", (dict(images), dict(captions)), step))

    def log_config(self, values):
        self.calls.append(("config", dict(values), None))

    def close(self):
        self.calls.append(("close", None, None))


class BrokenTracker(FakeTracker):
    def log_scalars(self, values, step):
        raise OSError("No space left on device")


class FakeRun:
    def __init__(self):
        self.logged: list[dict] = []
        self.metrics: list[tuple[str, dict]] = []
        self.config_values: dict = {}
        self.finished = False
        run = self

        class Config:
            def update(self, values, allow_val_change=False):
                run.config_values.update(values)

        self.config = Config()

    def define_metric(self, name, **options):
        self.metrics.append((name, options))

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module that records login, init and the run's calls."""
    module = types.ModuleType("wandb")
    module.logins, module.inits, module.runs = [], [], []

    def init(**kwargs):
        module.inits.append(kwargs)
        module.runs.append(FakeRun())
        return module.runs[-1]

    class WandbImage:
        def __init__(self, image, caption=None):
            self.image, self.caption = image, caption

    module.login = lambda key: module.logins.append(key)
    module.init = init
    module.Image = WandbImage
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def config(**values) -> TrainConfig:
    return build_config({}, values)


@pytest.mark.parametrize(
    ("log_with", "logging_dir", "expected"),
    [
        (None, None, ()),
        (None, "logs", ("tensorboard",)),
        ("tensorboard", "logs", ("tensorboard",)),
        ("wandb", None, ("wandb",)),
        ("wandb", "logs", ("wandb",)),
        ("all", "logs", ("tensorboard", "wandb")),
    ],
)
def test_the_trackers_follow_kohyas_reading_of_log_with(log_with, logging_dir, expected):
    assert config(log_with=log_with, logging_dir=logging_dir).tracker_names == expected


@pytest.mark.parametrize("log_with", ["tensorboard", "all"])
def test_tensorboard_without_a_logging_dir_is_one_line(log_with):
    with pytest.raises(UserError) as error:
        config(log_with=log_with)
    assert str(error.value) == (
        f"--log_with {log_with} writes TensorBoard logs under --logging_dir: add --logging_dir FOLDER, "
        "or use --log_with wandb"
    )


@pytest.mark.parametrize("log_with", ["wandb", "all"])
def test_a_missing_wandb_package_is_one_line_with_the_install_command(monkeypatch, tmp_path, log_with):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(UserError) as error:
        check_trackers(config(log_with=log_with, logging_dir=str(tmp_path)))
    assert str(error.value) == (
        f"--log_with {log_with} needs the wandb package, which is not installed: pip install wandb"
    )


def test_tensorboard_alone_never_imports_wandb(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    check_trackers(config(logging_dir=str(tmp_path)))


def test_wandb_gets_kohyas_project_the_flags_and_the_tracker_config(fake_wandb, tmp_path):
    tracker_toml = tmp_path / "trackers.toml"
    tracker_toml.write_text('[wandb]\nentity = "me"\ntags = ["lora"]\nname = "from-toml"\n')
    trackers = open_trackers(
        config(
            log_with="wandb",
            logging_dir=str(tmp_path / "logs"),
            log_prefix="toy-",
            log_tracker_config=str(tracker_toml),
            wandb_run_name="run-1",
            wandb_api_key=SECRET,
        ),
        run_name="toy-20260102030405",
    )
    assert fake_wandb.logins == [SECRET]
    assert fake_wandb.inits == [
        {
            "project": "network_train",
            "entity": "me",
            "tags": ["lora"],
            "name": "run-1",  # the flag wins over the table
            "dir": str(tmp_path / "logs" / "toy-20260102030405"),
        }
    ]
    assert (tmp_path / "logs" / "toy-20260102030405").is_dir()
    run = fake_wandb.runs[0]
    assert run.config_values == {}  # --log_config not given
    trackers[0].close()
    assert run.finished


def test_wandb_logs_steps_and_epochs_on_their_own_axes(fake_wandb):
    (tracker,) = open_trackers(config(log_with="wandb", log_tracker_name="shapes"))
    assert fake_wandb.logins == [] and fake_wandb.inits == [{"project": "shapes"}]
    tracker.log_scalars({"loss/current": 0.5, "lr/unet": 1e-4}, 7)
    tracker.log_scalars({"loss/epoch_average": 0.25}, 2)
    image = Image.new("RGB", (8, 8), "red")
    tracker.log_images({"sample_0": image}, 7, {"sample_0": "a red square"})
    run = fake_wandb.runs[0]
    assert run.logged[:2] == [
        {"loss/current": 0.5, "lr/unet": 1e-4, "global_step": 7},
        {"loss/epoch_average": 0.25, "epoch": 2},
    ]
    picture = run.logged[2]["sample_0"]
    assert picture.image is image and picture.caption == "a red square" and run.logged[2]["global_step"] == 7
    assert run.metrics == [
        ("global_step", {"hidden": True}),
        ("epoch", {"hidden": True}),
        ("loss/current", {"step_metric": "global_step"}),
        ("lr/unet", {"step_metric": "global_step"}),
        ("loss/epoch_average", {"step_metric": "epoch"}),
        ("sample_0", {"step_metric": "global_step"}),
    ]


def test_a_wandb_start_failure_is_one_line(fake_wandb):
    def refuse(**kwargs):
        raise RuntimeError("api key not configured (no-tty)")

    fake_wandb.init = refuse
    with pytest.raises(UserError) as error:
        open_trackers(config(log_with="wandb"))
    assert (
        str(error.value) == "--log_with wandb: wandb could not start the run: api key not configured (no-tty)"
    )


def test_log_config_sends_the_settings_without_secrets_or_folders(fake_wandb, tmp_path):
    home_model = "/home/alice/models/base.safetensors"
    values = sanitized_config(
        config(
            pretrained_model_name_or_path=home_model,
            train_data_dir="img",
            output_dir="C:\\Users\\alice\\out",
            base_weights=["/home/alice/a.safetensors", "b.safetensors"],
            wandb_api_key=SECRET,
            network_dim=8,
        )
    )
    assert values["pretrained_model_name_or_path"] == "base.safetensors"
    assert values["output_dir"] == "out" and values["train_data_dir"] == "img"
    assert values["base_weights"] == "a.safetensors,b.safetensors"
    assert values["network_dim"] == 8 and values["resolution"] == "512,512"
    assert "wandb_api_key" not in values and "vae" not in values  # secrets and unset values left out
    assert not any(SECRET in str(value) or "alice" in str(value) for value in values.values())

    open_trackers(config(log_with="wandb", log_config=True, wandb_api_key=SECRET, output_dir=str(tmp_path)))
    logged = fake_wandb.runs[0].config_values
    assert logged["output_dir"] == tmp_path.name and "wandb_api_key" not in logged


def test_tensorboard_writes_scalars_images_and_config_in_kohyas_folder(tmp_path):
    (tracker,) = open_trackers(
        config(logging_dir=str(tmp_path), log_prefix="toy-", log_config=True), run_name="toy-20260102030405"
    )
    tracker.log_scalars({"loss/current": 0.5, "lr/unet": 1e-4}, 3)
    tracker.log_scalars({"loss/epoch_average": 0.25}, 1)
    tracker.log_images({"sample_0": Image.new("RGB", (8, 6), "blue")}, 3, {"sample_0": "a blue square"})
    tracker.close()
    assert [path.name for path in tmp_path.iterdir()] == ["toy-20260102030405"]
    events = EventAccumulator(str(tmp_path / "toy-20260102030405"), size_guidance={"images": 0}).Reload()
    assert [(event.step, event.value) for event in events.Scalars("loss/current")] == [(3, 0.5)]
    assert [(event.step, event.value) for event in events.Scalars("loss/epoch_average")] == [(1, 0.25)]
    (image,) = events.Images("sample_0")
    assert (image.step, image.width, image.height) == (3, 8, 6)
    assert {"sample_0/caption/text_summary", "config/text_summary"} <= set(events.Tags()["tensors"])


def test_a_setting_tensorboard_does_not_take_is_one_line(tmp_path):
    tracker_toml = tmp_path / "trackers.toml"
    tracker_toml.write_text("[tensorboard]\nflush_every = 5\n")
    with pytest.raises(UserError) as error:
        open_trackers(config(logging_dir=str(tmp_path / "logs"), log_tracker_config=str(tracker_toml)))
    assert str(error.value).startswith(f"--log_tracker_config {tracker_toml} [tensorboard]: ")
    assert "flush_every" in str(error.value)


def test_a_tracker_config_without_tables_is_one_line(tmp_path):
    tracker_toml = tmp_path / "trackers.toml"
    tracker_toml.write_text('entity = "me"\n')
    with pytest.raises(UserError) as error:
        tracker_settings(str(tracker_toml))
    assert str(error.value) == (
        f"--log_tracker_config {tracker_toml}: entity = ... is not a table; write the settings under "
        "[wandb] or [tensorboard]"
    )


def test_an_api_key_on_the_command_line_gets_kohyas_warning():
    assert api_key_warning({"network_dim": 8}) is None
    assert api_key_warning({"wandb_api_key": SECRET}) == (
        "warning: --wandb_api_key on the command line stays in your shell history (and wandb records the "
        "command line with the run): put wandb_api_key in a --config_file, or log in once with `wandb login`"
    )


def scalars_by_step(tracker: FakeTracker) -> dict[int, dict]:
    merged: dict[int, dict] = {}
    for kind, values, step in tracker.calls:
        if kind == "scalars":
            merged.setdefault(step, {}).update(values)
    return merged


def test_the_log_sends_kohyas_keys_and_the_speed_at_each_read_back(monkeypatch):
    ticks = iter([10.0, 13.0])  # the clock starts at step 1 and laps at the read-back after step 4
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(ticks))
    tracker = FakeTracker()
    log = TrainingLog(10, [tracker], show_bar=False, sync_every=4, average_window=2, images_per_step=6)
    lrs = {"unet": 1e-4, "d*lr/unet": 2e-6}
    for step, loss in enumerate([1.0, 3.0, 5.0, 7.0], start=1):
        log.step(step, 1, torch.tensor(loss), lrs)
    logged = scalars_by_step(tracker)
    assert sorted(logged) == [1, 2, 3, 4]
    assert logged[1] == {"loss/current": 1.0, "loss/average": 1.0, "lr/unet": 1e-4, "lr/d*lr/unet": 2e-6}
    assert logged[3]["loss/average"] == 4.0  # the last two steps' mean
    assert logged[4]["throughput/s_per_step"] == 1.0  # 3 s over steps 2 to 4
    assert logged[4]["throughput/images_per_s"] == 6.0
    assert logged[4]["memory/peak_gib"] > 0


def test_the_epoch_average_goes_against_the_epoch_and_to_the_run_log():
    tracker = FakeTracker()
    epochs = []

    class RunLogRecorder:
        def epoch(self, epoch, step, average):
            epochs.append((epoch, step, average))

    log = TrainingLog(10, [tracker], show_bar=False, run_log=RunLogRecorder())
    log.step(5, 2, torch.tensor(0.5), {})
    log.epoch_end(2, 0.75)
    assert tracker.calls[-1] == ("scalars", {"loss/epoch_average": 0.75}, 2)
    assert epochs == [(2, 5, 0.75)]


def test_validation_losses_and_samples_reach_every_tracker():
    first, second = FakeTracker(), FakeTracker()
    log = TrainingLog(10, [first, second], show_bar=False)
    image = Image.new("RGB", (4, 4))
    log.log_scalars({"loss/validation/step_average": 0.3}, 4)
    log.log_images({"sample_0": image}, 4, {"sample_0": "a circle"})
    log.close()
    expected = [
        ("scalars", {"loss/validation/step_average": 0.3}, 4),
        ("images", ({"sample_0": image}, {"sample_0": "a circle"}), 4),
        ("close", None, None),
    ]
    assert first.calls == expected and second.calls == expected


def test_a_failing_tracker_is_dropped_with_one_warning_and_the_others_go_on(capsys):
    broken, working = BrokenTracker(), FakeTracker()
    log = TrainingLog(10, [broken, working], show_bar=False, sync_every=1)
    log.step(1, 1, torch.tensor(0.5), {})
    log.step(2, 1, torch.tensor(0.25), {})
    assert sorted(scalars_by_step(working)) == [1, 2]
    assert log.trackers == [working]
    assert capsys.readouterr().out.splitlines() == [
        "warning: BrokenTracker stopped logging (No space left on device); training goes on"
    ]


def test_the_clock_leaves_out_the_time_outside_training(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    clock = StepClock()
    clock.step()  # starts the clock
    for _ in range(2):
        now[0] += 1.0
        clock.step()
    with clock.excluding():
        now[0] += 30.0  # saving a file
    assert clock.lap() == 1.0
    clock.stop()
    now[0] += 100.0  # between epochs
    assert clock.lap() is None
    clock.step()
    assert clock.lap() is None  # one step since the start: nothing timed yet


def test_the_log_stops_at_a_non_finite_loss_and_logs_nothing_after_it():
    tracker = FakeTracker()
    log = TrainingLog(10, [tracker], show_bar=False, sync_every=3)
    for step, value in enumerate([1.0, math.nan, 2.0], start=1):
        log.step(step, 1, torch.tensor(value), {})
    assert log.non_finite[:2] == (2, 1)
    assert sorted(scalars_by_step(tracker)) == [1, 2]


def test_the_log_folder_is_the_tensorboard_trackers(tmp_path):
    trackers = open_trackers(config(logging_dir=str(tmp_path)), run_name="run")
    log = TrainingLog(1, trackers, show_bar=False)
    assert log.run_dir == Path(tmp_path) / "run"
    log.close()
    assert TrainingLog(1, show_bar=False).run_dir is None
