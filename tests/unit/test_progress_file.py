"""--progress_file: the tracker's JSON lines, and jobs/progress.py reading them back."""

import json

import pytest
from PIL import Image

from loracraft.config.load import build_config
from loracraft.jobs.progress import log_tail, read_events, read_progress_file, run_outcome
from loracraft.training.trackers import ProgressFileTracker, open_trackers


@pytest.fixture
def config(tmp_path):
    return build_config(
        {},
        {
            "output_dir": str(tmp_path / "out"),
            "output_name": "toy",
            "progress_file": str(tmp_path / "job" / "progress.jsonl"),
        },
    )


def steps(tracker, first, last, seconds_per_step=0.5):
    for step in range(first, last + 1):
        values = {
            "loss/current": 1.0 / step,
            "loss/average": 2.0 / step,
            "lr/unet": 1e-4,
            "lr/textencoder": 5e-5,
        }
        if step % 5 == 0:
            values |= {
                "throughput/s_per_step": seconds_per_step,
                "throughput/images_per_s": 4.0,
                "memory/peak_gib": 1.5,
            }
        tracker.log_scalars(values, step)


def test_open_trackers_opens_the_progress_file_alone_and_it_starts_with_the_run(config, tmp_path):
    trackers = open_trackers(config)
    assert len(trackers) == 1 and isinstance(trackers[0], ProgressFileTracker)
    (start,) = read_events(tmp_path / "job" / "progress.jsonl")
    assert start["event"] == "start" and start["output_name"] == "toy" and start["resumed"] is False
    assert start["lora_file"] == str(tmp_path / "out" / "toy.safetensors")


def test_a_run_read_back_step_epoch_eta_curves_and_samples(config, tmp_path):
    tracker = open_trackers(config)[0]
    tracker.begin(total_steps=20, epochs=2, steps_per_epoch=10, initial_step=0)
    steps(tracker, 1, 12)
    tracker.log_scalars({"loss/epoch_average": 0.3}, 1)
    tracker.log_scalars({"loss/validation/step_average": 0.25, "loss/validation/step_divergence": 0.1}, 10)
    tracker.log_images({"sample_0": Image.new("RGB", (8, 8), "red")}, 10, {"sample_0": "a red square"})

    progress = read_progress_file(tmp_path / "job" / "progress.jsonl")
    assert (progress.step, progress.total_steps, progress.epoch, progress.epochs) == (12, 20, 2, 2)
    assert progress.eta_s == pytest.approx(8 * 0.5)
    assert progress.loss_points[-1] == (12, 1.0 / 12, 2.0 / 12) and len(progress.loss_points) == 12
    assert progress.lr_points == {
        "unet": [(s, 1e-4) for s in range(1, 13)],
        "textencoder": [(s, 5e-5) for s in range(1, 13)],
    }
    assert (progress.images_per_s, progress.memory_gib) == (4.0, 1.5)
    assert progress.epoch_losses == [(1, 0.3)] and progress.validation_points == [(10, 0.25)]
    ((step, epoch, path, prompt),) = progress.samples
    assert (step, epoch, prompt) == (10, 1, "a red square")
    assert path == tmp_path / "job" / "progress-images" / "step00000010-sample_0.png"
    assert Image.open(path).getpixel((0, 0)) == (255, 0, 0)
    assert progress.outcome is None


def test_a_half_written_last_line_is_passed_over(config, tmp_path):
    tracker = open_trackers(config)[0]
    steps(tracker, 1, 3)
    path = tmp_path / "job" / "progress.jsonl"
    with path.open("a") as file:
        file.write('{"event": "scalars", "step": 4, "val')
    assert read_progress_file(path).step == 3


def test_a_resumed_run_replaces_what_was_logged_after_its_state(config, tmp_path):
    path = tmp_path / "job" / "progress.jsonl"
    tracker = ProgressFileTracker(path, config)
    tracker.begin(total_steps=20, epochs=2, steps_per_epoch=10, initial_step=0)
    steps(tracker, 1, 9)  # killed at step 9; the last state was saved at step 5
    resumed = ProgressFileTracker(path, config)
    resumed.begin(total_steps=20, epochs=2, steps_per_epoch=10, initial_step=5)
    steps(resumed, 6, 7)
    progress = read_progress_file(path)
    assert [point[0] for point in progress.loss_points] == [1, 2, 3, 4, 5, 6, 7]
    assert progress.lr_points["unet"][-1][0] == 7 and progress.step == 7


def test_how_a_run_ended(config, tmp_path):
    path = tmp_path / "job" / "progress.jsonl"
    tracker = ProgressFileTracker(path, config)
    assert run_outcome(path) is None  # killed: nothing says how it ended
    tracker.end("stopped", "stopped by SIGTERM at step 3 of 20")
    assert run_outcome(path) == ("stopped", "stopped by SIGTERM at step 3 of 20")
    assert read_progress_file(path).outcome == ("stopped", "stopped by SIGTERM at step 3 of 20")
    ProgressFileTracker(path, config)
    assert run_outcome(path) is None  # the resumed attempt has not ended
    lora = tmp_path / "out" / "toy.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"x")
    assert run_outcome(path) == ("done", None)  # it wrote its final file, then its end went unrecorded


def test_the_log_tail_shows_a_progress_bar_as_its_last_drawing(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"loading\n\rsteps: 10%\rsteps: 20%\rsteps: 30%\nerror: it broke\n")
    assert log_tail(log) == ["loading", "steps: 30%", "error: it broke"]
    assert log_tail(log, lines=1) == ["error: it broke"]
    assert log_tail(tmp_path / "missing.log") == []


def test_every_line_is_one_json_object(config, tmp_path):
    tracker = open_trackers(config)[0]
    steps(tracker, 1, 2)
    lines = (tmp_path / "job" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["start", "scalars", "scalars"]
