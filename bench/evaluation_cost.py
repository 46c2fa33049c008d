"""What looking at a run costs: one sample image and one validation evaluation on the shipped tiny model,
against one training step of the same run.

    python bench/evaluation_cost.py [--rounds 5] [--steps 20] [--warmup 3] [--sample_steps 20 30]
    python bench/evaluation_cost.py --rounds 1 --steps 2 --warmup 1 --sample_steps 2   # smoke run

The run is the demo's (rank 8 on U-Net and text encoder, batch 4 at 64 px, cached latents, AdamW) with
`--validation_split 0.25` (3 of its 12 images held out: one batch, evaluated at kohya's 4 timesteps),
set up by the trainer. Its step time is measured over `--steps` steps after `--warmup`. Then, on the
weights those steps left:

- a sample: `TrainingSamples.draw` with one 64x64 prompt (DDIM, CFG 7.5, seed 1) for each of
  `--sample_steps` denoising step counts (kohya's default is 30), each timed `--rounds` times; the time
  includes everything a run pays (putting modes, multipliers and generators back, the PNG written);
- a validation: `Validation.evaluate` of the held-out batch, timed `--rounds` times.

Both are reported in seconds and in training steps, with what they add to every step of a run that
samples or validates every N steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from loracraft.sampling.during_training import TrainingSamples
from step_timing import timed_demo_run

INTERVALS = (10, 100)


def timed(call, rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def run(root: Path, args: argparse.Namespace) -> tuple[float, list[tuple[str, list[float]]]]:
    """(training step seconds, [(what, seconds of each round)])."""
    prompts = root / "prompts.txt"
    timed_run = timed_demo_run(
        root, args.steps, args.warmup, validation_split=0.25, sample_prompts=str(prompts)
    )
    config, start, setup, step = timed_run.config, timed_run.start, timed_run.setup, timed_run.step_seconds
    quiet = lambda _: None  # noqa: E731
    rows = []
    for steps in args.sample_steps:
        prompts.write_text(f"a zxq circle on white --w 64 --h 64 --d 1 --l 7.5 --s {steps}\n")
        samples = TrainingSamples(config, start.bundle, setup.parts.model, start.accelerator, quiet)
        seconds = timed(partial(samples.draw, step=1, epoch=None), args.rounds)
        rows.append((f"sample, 1 image, DDIM {steps} steps", seconds))
    validation = setup.validation
    batches = validation.batch_count
    seconds = timed(
        lambda: validation.evaluate(setup.step_models, start.accelerator, setup.parts.optimizer), args.rounds
    )
    rows.append((f"validation, {batches} batch x 4 timesteps", seconds))
    return step, rows


def report(step: float, rows: list[tuple[str, list[float]]], args: argparse.Namespace) -> None:
    print(f"training step (batch 4, 64 px, cached latents): {step * 1e3:.1f} ms over {args.steps} steps")
    every = " | ".join(f"every {n} steps" for n in INTERVALS)
    print(f"| what | s (median; rounds) | in training steps | added a step, {every} |")
    print("|---|---|---|" + "---|" * len(INTERVALS))
    for name, seconds in rows:
        median = statistics.median(seconds)
        rounds = ", ".join(f"{value:.3f}" for value in seconds)
        added = " | ".join(f"{median / n / step:.1%}" for n in INTERVALS)
        print(f"| {name} | {median:.3f} ({rounds}) | {median / step:.1f} | {added} |")


def main(argv: list[str] | None = None) -> tuple[float, list[tuple[str, list[float]]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample_steps", type=int, nargs="+", default=[20, 30])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as `loracraft demo` runs the tiny model
    with tempfile.TemporaryDirectory() as folder:
        step, rows = run(Path(folder), args)
    report(step, rows, args)
    return step, rows


if __name__ == "__main__":
    main()
