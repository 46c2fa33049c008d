"""bench/state_saving.py runs end to end, in this process, with one round and a few steps: both rows
measure a complete state of the expected size."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "state_saving.py"
SD15_RANK32_PARAMS = 18_874_368  # 192 U-Net + 72 text-encoder modules (kohya's SD1 targets) at rank 32


def load_bench():
    sys.path.insert(0, str(BENCH.parent))  # as `python bench/state_saving.py` has it: its sibling modules
    spec = importlib.util.spec_from_file_location("state_saving", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_state_saving_benchmark_measures_both_loras(capsys):
    rows = {row.model: row for row in load_bench().main(["--rounds", "1", "--steps", "2", "--warmup", "1"])}

    assert sorted(rows) == ["sd15-r32", "tiny"]
    for row in rows.values():
        files = row.state_files
        assert {"adapter.safetensors", "optimizer.pt", "manifest.json"} <= set(files)
        # float32 weights; AdamW keeps two moments of each.
        assert files["adapter.safetensors"] > 4 * row.lora_params
        assert files["optimizer.pt"] > 2 * 4 * row.lora_params
        assert row.lora_bytes > 4 * row.lora_params
        assert min(row.state_seconds + row.sha256_seconds + row.lora_seconds) > 0
    assert rows["sd15-r32"].lora_params == SD15_RANK32_PARAMS
    assert rows["tiny"].step_seconds > 0
    printed = capsys.readouterr().out
    assert "| sd15-r32 | 18.87 M | 227.1 (75.6 / 151.4 /" in printed
    assert "--save_every_n_steps 100 --save_state, tiny: " in printed and "of its step" in printed
