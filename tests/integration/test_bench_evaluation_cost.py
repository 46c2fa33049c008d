"""bench/evaluation_cost.py runs end to end, in this process, with one round and a few steps: it times a
training step, a sample per denoising-step count and a validation, and prints the table."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "evaluation_cost.py"


def load_bench():
    sys.path.insert(0, str(BENCH.parent))  # as `python bench/evaluation_cost.py` has it: its sibling modules
    spec = importlib.util.spec_from_file_location("evaluation_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_evaluation_benchmark_times_samples_and_validation(capsys):
    argv = ["--rounds", "1", "--steps", "2", "--warmup", "1", "--sample_steps", "2", "3"]
    step, rows = load_bench().main(argv)
    assert step > 0
    assert [name for name, _ in rows] == [
        "sample, 1 image, DDIM 2 steps", "sample, 1 image, DDIM 3 steps", "validation, 1 batch x 4 timesteps",
    ]  # fmt: skip
    assert all(len(seconds) == 1 and seconds[0] > 0 for _, seconds in rows)
    printed = capsys.readouterr().out
    assert "| validation, 1 batch x 4 timesteps | " in printed
