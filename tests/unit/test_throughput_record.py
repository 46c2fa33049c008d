"""Measured seconds per step, remembered per device and setting in the user's cache folder."""

import json

import pytest

from loracraft.atomic import leftover_temp_files
from loracraft.training.throughput_record import (
    RECORDS_FILE,
    Throughput,
    ThroughputKey,
    cache_folder,
    describe_throughput,
    duration,
    known_throughput,
    record_throughput,
)

KEY = ThroughputKey(
    device="NVIDIA GeForce RTX 4090", family="sdxl", bucket="1024x1024", batch_size=2, precision="bf16",
    gradient_checkpointing=True, latents_cached=True, text_encoder="cached", network_rank=32,
    num_processes=1, gradient_accumulation_steps=1,
)  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORACRAFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_cache_folder_is_loracraft_cache_or_the_users(cache, monkeypatch, tmp_path):
    assert cache_folder() == cache
    monkeypatch.delenv("LORACRAFT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder() == tmp_path / "home" / ".cache" / "loracraft"


def test_a_recorded_throughput_is_found_for_its_key_only(cache):
    assert known_throughput(KEY) is None
    path = record_throughput(KEY, 1.25, 400, measured_at=1_700_000_000)
    assert path == cache / RECORDS_FILE and leftover_temp_files(path) == []
    assert known_throughput(KEY) == Throughput(1.25, 1_700_000_000, 400)
    other = ThroughputKey(**{**KEY.__dict__, "batch_size": 4})
    assert known_throughput(other) is None


def test_a_newer_measurement_replaces_the_older_one_of_its_key(cache):
    other = ThroughputKey(**{**KEY.__dict__, "gradient_checkpointing": False})
    record_throughput(KEY, 1.25, 400, measured_at=1_700_000_000)
    record_throughput(other, 0.9, 100, measured_at=1_700_000_500)
    record_throughput(KEY, 1.5, 200, measured_at=1_700_001_000)
    assert known_throughput(KEY) == Throughput(1.5, 1_700_001_000, 200)
    assert known_throughput(other) == Throughput(0.9, 1_700_000_500, 100)
    assert len(json.loads((cache / RECORDS_FILE).read_text())["records"]) == 2


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "records": []}', '["a list"]'])
def test_an_unreadable_records_file_counts_as_none_and_is_written_anew(cache, content):
    cache.mkdir()
    (cache / RECORDS_FILE).write_text(content)
    assert known_throughput(KEY) is None
    record_throughput(KEY, 2.0, 10, measured_at=1_700_000_000)
    assert known_throughput(KEY) == Throughput(2.0, 1_700_000_000, 10)


def test_the_plan_line_gives_the_time_per_step_and_for_the_run():
    measured = Throughput(1.25, 1_700_000_000, 400)
    assert describe_throughput(measured, 2000) == (
        f"about 1.25 s/step, 41 min 40 s for the run's 2000 steps (measured on this device on {measured.date})"
    )
    assert describe_throughput(None, 2000) == (
        "no measured throughput for this device yet: the first run records one"
    )


@pytest.mark.parametrize(
    "seconds, text", [(42.4, "42 s"), (750, "12 min 30 s"), (3900, "1 h 05 min"), (0.2, "0 s")]
)
def test_durations_read_like_a_clock(seconds, text):
    assert duration(seconds) == text
