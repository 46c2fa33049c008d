"""bench/gpu.py runs end to end: the tiny SD1/SDXL-topology models through the trainer's real step on the
CPU (and on CUDA where there is a GPU), one row per model with positive figures in the table and the JSON.

Each run is a subprocess, as the lead runs it: `--device cpu` hides CUDA before torch looks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"
MODELS = ("sd15-tiny", "sdxl-tiny")


def run_bench(tmp_path: Path, *flags: str) -> tuple[dict, str]:
    out = tmp_path / "gpu.json"
    argv = [sys.executable, str(BENCH), "--tiny", "--steps", "2", "--warmup", "1", "--batches", "1"]
    result = subprocess.run(
        [*argv, "--threads", "1", "--json", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH.parents[1],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The markdown table's data rows by model name."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in MODELS:
            rows[cells[0]] = cells
    return rows


def check_rows(report: dict, stdout: str, on_gpu: bool) -> None:
    rows = report["rows"]
    assert [row["model"] for row in rows] == list(MODELS)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["batch"] == 1 and row["latent"] == 16
        for key in ("ms_per_step", "images_per_s", "tflops_per_s", "counted_flops_per_image"):
            assert row[key] > 0, (key, row)
        assert (row["peak_gib"] is not None and row["peak_gib"] > 0) == on_gpu
        assert (row["mfu"] is not None and row["mfu"] > 0) == on_gpu
    # The SDXL layout (10-layer transformer stacks, 722 LoRA modules) costs more than SD1's per image.
    assert rows[1]["counted_flops_per_image"] > rows[0]["counted_flops_per_image"]

    table = table_rows(stdout)
    assert list(table) == list(MODELS)
    for cells in table.values():
        _, res, batch, ms, img_s, tf_s, *_ = cells
        assert (res, batch) == ("128", "1")
        assert float(ms) > 0 and float(img_s) > 0 and float(tf_s) > 0
    assert "| model | res | batch | ms/step | img/s | TF/s | MFU | peak GiB |" in stdout


@pytest.mark.slow
def test_tiny_models_on_the_cpu(tmp_path):
    report, stdout = run_bench(tmp_path, "--device", "cpu")
    assert report["settings"]["mixed_precision"] == "no"
    check_rows(report, stdout, on_gpu=False)


@pytest.mark.gpu
def test_tiny_models_on_cuda_in_bf16(tmp_path):
    report, stdout = run_bench(tmp_path, "--device", "cuda")
    assert report["settings"]["mixed_precision"] == "bf16"
    assert "GPU: " in stdout
    check_rows(report, stdout, on_gpu=True)
