"""Sample images and the validation loss inside whole `train()` runs on the tiny SD1 model: they do not
change the LoRA a run trains, a failing sampler does not stop it, and the trackers and NAME.log get
their numbers and pictures at kohya's moments."""

from pathlib import Path

import pytest
from safetensors.torch import load_file

import loracraft.sampling.during_training as during_training
import loracraft.training.trainer as trainer
from data_helpers import make_kohya_dataset
from loracraft.jobs.progress import read_progress_file
from loracraft.training.trackers import open_trackers as real_open_trackers
from loracraft.training.trainer import train
from run_helpers import tiny_run_config

PROMPTS = (
    "a red circle --d 1 --s 2 --w 64 --h 64\na blue square --n red --d 2 --s 2 --w 64 --h 64 --ss euler\n"
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("data"), reg_count=0, repeats=1)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


def run_config(tiny_sd1, tree, output_dir: Path, **values):
    """Two epochs of 2 steps (3 training images, 1 held out, batches of 2), latents drawn from the VAE's
    posterior at every step (not cached): the step draws from the same generators sampling and
    validation must leave alone."""
    return tiny_run_config(
        tiny_sd1.single_file, tree.train_dir, output_dir,
        train_batch_size=2, max_train_epochs=2, network_dim=4, learning_rate=1e-3, seed=3,
        validation_split=0.25, **values,
    )  # fmt: skip


class RecordingTracker:
    """A tracker that keeps what it is sent."""

    def __init__(self):
        self.scalars: list[tuple[int, dict]] = []
        self.images: list[tuple[int, dict, dict]] = []

    def log_scalars(self, values, step):
        self.scalars.append((step, dict(values)))

    def log_images(self, images, step, captions):
        self.images.append((step, dict(images), dict(captions)))

    def log_config(self, values):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module")
def plain_run(tiny_sd1, tree, tmp_path_factory):
    """No samples, and the validation set held out but never evaluated (every 99 epochs)."""
    output_dir = tmp_path_factory.mktemp("plain")
    train(run_config(tiny_sd1, tree, output_dir, validate_every_n_epochs=99), show_progress=False, echo=print)
    return output_dir


@pytest.fixture(scope="module")
def watched_run(tiny_sd1, tree, prompt_file, tmp_path_factory):
    """The same run, drawing samples first and every step, validating every step and every epoch,
    logged to a recording tracker."""
    output_dir = tmp_path_factory.mktemp("watched")
    tracker = RecordingTracker()
    config = run_config(
        tiny_sd1, tree, output_dir,
        sample_prompts=str(prompt_file), sample_at_first=True, sample_every_n_steps=1,
        validate_every_n_steps=1, validate_every_n_epochs=1, progress_file=str(output_dir / "progress.jsonl"),
    )  # fmt: skip
    patch = pytest.MonkeyPatch()
    patch.setattr(trainer, "open_trackers", lambda config: [tracker, *real_open_trackers(config)])
    printed: list[str] = []
    try:
        train(config, show_progress=False, echo=printed.append)
    finally:
        patch.undo()
    return output_dir, tracker, printed


def test_samples_and_validation_leave_the_trained_lora_unchanged(plain_run, watched_run):
    plain = load_file(plain_run / "toy.safetensors")
    watched = load_file(watched_run[0] / "toy.safetensors")
    assert plain.keys() == watched.keys()
    assert all(plain[key].equal(watched[key]) for key in plain)


def test_samples_are_drawn_at_kohyas_moments_with_kohyas_names(watched_run):
    output_dir, _, _ = watched_run
    names = sorted(path.name for path in (output_dir / "sample").iterdir())
    # Step 0 (sample_at_first, as epoch 0), then every step 1-4: kohya names step samples by the step.
    stems = sorted({name.rsplit("_", 3)[0] + "_" + name.rsplit("_", 3)[1] for name in names})
    assert stems == ["toy_000001_00", "toy_000001_01", "toy_000002_00", "toy_000002_01", "toy_000003_00",
                     "toy_000003_01", "toy_000004_00", "toy_000004_01", "toy_e000000_00", "toy_e000000_01"]  # fmt: skip
    assert all(name.endswith(("_1.png", "_2.png")) for name in names)  # the prompt's seed ends the name


def test_trackers_get_losses_validation_and_images_at_their_steps(watched_run):
    _, tracker, _ = watched_run
    step_validation = [step for step, values in tracker.scalars if "loss/validation/step_average" in values]
    epoch_validation = [at for at, values in tracker.scalars if "loss/validation/epoch_average" in values]
    assert step_validation == [1, 2, 3, 4] and epoch_validation == [1, 2]  # epoch values at the epoch
    training = [step for step, values in tracker.scalars if "loss/current" in values]
    assert training == [1, 2, 3, 4]
    last = next(
        values for _, values in reversed(tracker.scalars) if "loss/validation/epoch_average" in values
    )
    folder = next(key for key in last if key.endswith("/epoch_average") and "sks_toy" in key)
    # One folder: its average is the overall one; the divergence is against the training average.
    assert last[folder] == last["loss/validation/epoch_average"]
    assert {f"loss/validation/t{t}/epoch_average" for t in (200, 400, 600, 800)} <= last.keys()
    assert "loss/validation/epoch_divergence" in last
    assert [step for step, _, _ in tracker.images] == [0, 1, 2, 3, 4]
    _, images, captions = tracker.images[0]
    assert sorted(images) == ["sample_0", "sample_1"] and captions["sample_1"] == "a blue square"


def test_validation_repeats_exactly_at_the_same_weights(watched_run):
    """The last step's validation and the last epoch's are the same weights: the same number."""
    _, tracker, _ = watched_run
    at_step_4 = next(v for s, v in tracker.scalars if s == 4 and "loss/validation/step_average" in v)
    at_epoch_2 = next(v for s, v in tracker.scalars if s == 2 and "loss/validation/epoch_average" in v)
    assert at_step_4["loss/validation/step_average"] == at_epoch_2["loss/validation/epoch_average"]


def test_name_log_lists_samples_and_validation(watched_run):
    output_dir, _, _ = watched_run
    events = [line.split("  ", 1)[1] for line in (output_dir / "toy.log").read_text().splitlines()
              if line[:4].isdigit()]  # fmt: skip
    assert events[0].startswith("samples at step 0: toy_e000000_00_")
    assert any(event.startswith("validation loss at epoch 2 (step 4): ") for event in events)
    assert events[-1] == "finished: toy.safetensors after 4 steps"


def test_a_failing_sampler_costs_a_warning_not_the_run(
    tiny_sd1, tree, prompt_file, tmp_path, monkeypatch, plain_run
):
    def broken(*_args, **_kwargs):
        raise RuntimeError("scheduler exploded")

    monkeypatch.setattr(during_training, "render_image", broken)
    printed: list[str] = []
    config = run_config(
        tiny_sd1, tree, tmp_path, sample_prompts=str(prompt_file), sample_every_n_epochs=1,
        validate_every_n_epochs=99,
    )  # fmt: skip
    result = train(config, show_progress=False, echo=printed.append)
    warnings = [line for line in printed if line.startswith("warning: sample images")]
    assert warnings == [
        f"warning: sample images at step {step} failed: RuntimeError: scheduler exploded; training goes on"
        for step in (2, 4)
    ]
    plain = load_file(plain_run / "toy.safetensors")
    assert all(tensor.equal(plain[key]) for key, tensor in load_file(result.lora_file).items())


def test_the_progress_file_tells_the_runs_course(watched_run):
    """What the queue's job page reads: the run's length, its losses and validation, its samples, and
    how it ended."""
    output_dir, _, _ = watched_run
    progress = read_progress_file(output_dir / "progress.jsonl")
    assert (progress.step, progress.total_steps, progress.epochs) == (4, 4, 2)
    assert [step for step, _, _ in progress.loss_points] == [1, 2, 3, 4]
    assert [step for step, _ in progress.validation_points] == [1, 2, 3, 4]
    assert sorted({step for step, _, _, _ in progress.samples}) == [0, 1, 2, 3, 4]
    assert progress.outcome == ("finished", "toy.safetensors after 4 steps")
