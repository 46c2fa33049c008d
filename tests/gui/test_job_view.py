"""The job page from a job's recorded files: a progress file written as a run's ProgressFileTracker
writes it (training/trackers.py), its console log and its LoRA file."""

import json
import math

import pytest

from loracraft.gui.job_view import job_page
from loracraft.jobs.progress import read_progress
from loracraft.jobs.queue import JobQueue
from loracraft.training.throughput_record import duration


def write_events(path, events):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"time": 0.0, **event}) + "\n" for event in events), encoding="utf-8")


@pytest.fixture
def recorded_job(tmp_path):
    """A job whose run did 4 of 8 steps (2 epochs of 4), with a sample at step 2 and 4 and a validation."""
    queue = JobQueue(tmp_path / "queue.sqlite")
    output_dir = tmp_path / "out"
    job = queue.add(f'output_dir = "{output_dir}"\noutput_name = "toy"\n', name="toy run")
    images = job.folder / "progress-images"
    images.mkdir(parents=True)
    for step in (4, 2):
        (images / f"step{step:08d}-0.png").write_bytes(b"png")
    scalars = [
        {"loss/current": 0.5, "loss/average": math.nan, "lr/unet": 1e-4, "lr/textencoder": 5e-5},
        {"loss/current": 0.3, "loss/average": 0.4, "lr/unet": 1e-4, "lr/textencoder": 5e-5},
        {"loss/current": 0.2, "loss/average": 0.33, "lr/unet": 9e-5, "lr/textencoder": 4e-5},
        {
            "loss/current": 0.1,
            "loss/average": 0.275,
            "loss/epoch_average": 0.275,
            "loss/validation/step_average": 0.6,
            "lr/unet": 8e-5,
            "lr/textencoder": 3e-5,
            "throughput/s_per_step": 2.0,
            "throughput/images_per_s": 1.5,
            "memory/peak_gib": 3.25,
        },
    ]
    write_events(
        job.progress_file,
        [
            {"event": "start", "logging_dir": str(tmp_path / "logs")},
            {"event": "plan", "total_steps": 8, "epochs": 2, "steps_per_epoch": 4, "initial_step": 0},
            *({"event": "scalars", "step": step, "values": values} for step, values in enumerate(scalars, 1)),
            *(
                {
                    "event": "images",
                    "step": step,
                    "images": [{"path": str(path), "caption": f"a {color} circle"}],
                }
                for step, path, color in (
                    (4, images / "step00000004-0.png", "red"),
                    (2, images / "step00000002-0.png", "blue"),
                )
            ),
        ],
    )
    job.console_log.write_text("loading\nsteps:  10%|#\rsteps:  50%|#####\n", encoding="utf-8")
    output_dir.mkdir()
    (output_dir / "toy-000001.safetensors").write_bytes(b"lora")
    return queue.get(job.id)


def test_running_job_page(recorded_job, tmp_path):
    page = job_page(recorded_job, read_progress(recorded_job))

    assert page.headline == f"Job {recorded_job.id} · toy run · queued"
    assert page.progress == (
        "<progress value='4' max='8'></progress>"
        "<span class='job-progress-line'>step 4/8 (50%) · epoch 1/2 · ETA 8 s</span>"
    )
    assert page.speed == "1.50 images/s · 3.25 GiB peak memory"

    curves = page.loss.groupby("curve")["loss"].apply(list).to_dict()
    assert curves == {"loss": [0.5, 0.3, 0.2, 0.1], "average": [0.4, 0.33, 0.275], "epoch average": [0.275]}
    assert page.loss[page.loss["curve"] == "average"]["step"].tolist() == [2, 3, 4]
    lrs = page.lr.groupby("parameters")["lr"].apply(list).to_dict()
    assert lrs == {"unet": [1e-4, 1e-4, 9e-5, 8e-5], "textencoder": [5e-5, 5e-5, 4e-5, 3e-5]}
    assert page.validation.values.tolist() == [[4, 0.6, "validation"]]

    images = recorded_job.folder / "progress-images"
    assert page.samples == [
        (str(images / "step00000002-0.png"), "step 2 · epoch 1: a blue circle"),
        (str(images / "step00000004-0.png"), "step 4 · epoch 1: a red circle"),
    ]
    assert page.log == "loading\nsteps:  50%|#####"
    assert page.outputs.split("\n\n") == [
        f"**LoRA files** (in `{tmp_path / 'out'}`): "
        f"[toy-000001.safetensors](api/jobs/{recorded_job.id}/files/toy-000001.safetensors)",
        f"**TensorBoard**: `tensorboard --logdir {tmp_path / 'logs'}`",
        f"**Job folder**: `{recorded_job.folder}`",
    ]


def test_finished_job_page_has_no_eta_and_says_how_it_ended(recorded_job, tmp_path):
    with recorded_job.progress_file.open("a", encoding="utf-8") as file:
        file.write(json.dumps({"event": "end", "outcome": "failed", "detail": "CUDA out of memory"}) + "\n")
    job = JobQueue(tmp_path / "queue.sqlite").record_exit(recorded_job.id, "failed", 1, "CUDA out of memory")

    page = job_page(job, read_progress(job))
    assert page.headline == f"Job {job.id} · toy run · failed: CUDA out of memory"
    assert page.progress.endswith("<span class='job-progress-line'>step 4/8 (50%) · epoch 1/2</span>")


def test_job_without_progress_yet(tmp_path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    job = queue.add(f'output_dir = "{tmp_path / "out"}"\n')
    page = job_page(job, read_progress(job))
    assert page.progress == "<span class='job-progress-line'>step 0</span>"  # no bar: no step count yet
    assert page.speed == ""
    assert page.loss is None and page.lr is None and page.validation is None  # no plot until a point
    assert page.samples == []
    assert page.outputs.split("\n\n") == [
        f"**LoRA files**: none yet in `{tmp_path / 'out'}`",
        f"**Job folder**: `{job.folder}`",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (59, "59 s"), (61, "1 min 01 s"), (3600 + 5 * 60 + 9, "1 h 05 min")]
)
def test_duration_text(seconds, text):
    assert duration(seconds) == text


def test_a_tool_job_that_counts_its_work_shows_a_bar_over_its_command(tmp_path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    job = queue.add_tool(["caption", str(tmp_path), "--overwrite"], workdir=tmp_path)
    assert "<progress" not in job_page(job, read_progress(job)).progress  # nothing counted yet
    write_events(
        job.progress_file,
        [
            {"event": "tool_progress", "done": 0, "total": 8, "unit": "images"},
            {"event": "tool_progress", "done": 6, "total": 8, "unit": "images"},
        ],
    )
    shown = job_page(job, read_progress(job)).progress
    assert "<progress value='6' max='8'></progress>" in shown
    assert "6/8 images (75%)" in shown and f"loracraft caption {tmp_path} --overwrite" in shown
