"""NAME.log: the header, the settings without secrets, the events, the resume line, and a log that
cannot be written."""

import re

from loracraft import __version__
from loracraft.config.load import build_config
from loracraft.training.run_log import RunLog

SECRET = "0123456789abcdef-secret-key"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
PLAN = "Dataset: 4 images\n  train  sks toy: 4 images x 2 repeats = 8 samples"


def run_config(output_dir, **values):
    return build_config(
        {},
        {
            "output_dir": str(output_dir),
            "output_name": "toy",
            "network_dim": 8,
            "wandb_api_key": SECRET,
            **values,
        },
    )


def events(text: str) -> list[str]:
    """The timestamped lines, without their time."""
    return [line.split("  ", 1)[1] for line in text.splitlines() if re.match(STAMP, line)]


def test_the_log_tells_the_run_in_plain_text(tmp_path):
    config = run_config(tmp_path)
    log = RunLog.for_run(config, print, writes=True)
    log.begin(config, PLAN)
    log.epoch(1, 4, 0.1234567)
    log.line("validation loss 0.200000 (step 4)")
    log.end("finished", "toy.safetensors")

    text = (tmp_path / "toy.log").read_text()
    lines = text.splitlines()
    assert re.fullmatch(rf"==== {STAMP}  loracraft {re.escape(__version__)}: training toy ====", lines[0])
    assert lines[1:4] == [
        "plan:",
        "  Dataset: 4 images",
        "    train  sks toy: 4 images x 2 repeats = 8 samples",
    ]
    assert lines[4] == "settings:"
    assert "  network_dim = 8" in lines and '  output_name = "toy"' in lines
    assert '  wandb_api_key = "(hidden)"' in lines
    assert SECRET not in text
    assert events(text) == [
        "epoch 1: average loss 0.123457 (step 4)",
        "validation loss 0.200000 (step 4)",
        "finished: toy.safetensors",
    ]


def test_a_resumed_run_continues_the_same_log(tmp_path):
    config = run_config(tmp_path)
    first = RunLog.for_run(config, print, writes=True)
    first.begin(config, PLAN)
    first.epoch(1, 4, 0.5)
    first.end("stopped", "SIGTERM at step 6")

    resumed = RunLog.for_run(config, print, writes=True)
    resumed.begin(config, PLAN, resumed_at=6)
    resumed.epoch(2, 8, 0.25)
    resumed.end("finished")

    text = (tmp_path / "toy.log").read_text()
    assert text.count("==== ") == 1 and text.count("settings:") == 1
    assert events(text) == [
        "epoch 1: average loss 0.500000 (step 4)",
        "stopped: SIGTERM at step 6",
        f"resumed at step 6 (loracraft {__version__})",
        "epoch 2: average loss 0.250000 (step 8)",
        "finished",
    ]


def test_a_resumed_run_without_its_log_starts_one_with_the_header(tmp_path):
    config = run_config(tmp_path)
    log = RunLog.for_run(config, print, writes=True)
    log.begin(config, PLAN, resumed_at=6)
    text = (tmp_path / "toy.log").read_text()
    assert text.startswith("==== ") and events(text) == [f"resumed at step 6 (loracraft {__version__})"]


def test_a_new_run_of_the_same_name_keeps_the_old_runs_lines(tmp_path):
    config = run_config(tmp_path)
    for average in (0.5, 0.25):
        log = RunLog.for_run(config, print, writes=True)
        log.begin(config, PLAN)
        log.epoch(1, 4, average)
    text = (tmp_path / "toy.log").read_text()
    assert text.count("==== ") == 2
    assert events(text) == [
        "epoch 1: average loss 0.500000 (step 4)",
        "epoch 1: average loss 0.250000 (step 4)",
    ]


def test_an_unwritable_log_is_one_warning_and_the_run_goes_on(tmp_path):
    (tmp_path / "toy.log").mkdir()  # a folder where the file should be
    config = run_config(tmp_path)
    warnings: list[str] = []
    log = RunLog.for_run(config, warnings.append, writes=True)
    log.begin(config, PLAN)
    log.epoch(1, 4, 0.5)
    log.end("finished")
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: cannot write {tmp_path / 'toy.log'} (")
    assert warnings[0].endswith("); training goes on without it")


def test_other_processes_write_nothing(tmp_path):
    config = run_config(tmp_path)
    log = RunLog.for_run(config, print, writes=False)
    log.begin(config, PLAN)
    log.epoch(1, 4, 0.5)
    assert list(tmp_path.iterdir()) == []
