"""`loracraft demo`: teach the embedded tiny model a new word, measure it, and draw the comparison grid.

The base model knows red, green, blue and yellow shapes on white, black and gray backgrounds. Its VAE also
saw other colours, but its U-Net was never told their names. The demo makes a kohya dataset where the
made-up word "zxq" means one of those colours, trains a LoRA on it through the same code path as
`loracraft train`, and measures how often "a zxq circle ..." comes out in that colour, before and after.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler

from loracraft.atomic import write_atomic, write_text_atomic
from loracraft.config.load import updated_config
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.models.tiny import shipped
from loracraft.models.tiny.architecture import VPRED_SCHEDULER_CONFIG
from loracraft.models.tiny.palette import BACKGROUNDS, SHAPES
from loracraft.models.tiny.shapes import caption_for, render_shape
from loracraft.tools.concept_probe import ConceptProbe, ProbeResult, render_grid
from loracraft.tools.lora_preview import LoRAPreview
from loracraft.training.trainer import TrainResult, train


@dataclass(frozen=True)
class DemoConcept:
    """A trigger word and the colour it stands for in the demo dataset."""

    trigger: str = "zxq"
    colour: str = "magenta"
    class_word: str = "shape"
    repeats: int = 10
    images: int = 12

    @property
    def folder_name(self) -> str:
        return f"{self.repeats}_{self.trigger} {self.class_word}"


def make_demo_dataset(root: Path, concept: DemoConcept, seed: int = 0) -> Path:
    """A kohya `img/` tree: one `N_trigger class/` folder of captioned images of the concept.

    (Regularization images of the known colours were tried: they halve what the trigger learns in the
    same time; bench/RESULTS.md has the figures.)"""
    rng = np.random.default_rng(seed)
    backgrounds = tuple(BACKGROUNDS)
    for i in range(concept.images):
        shape = SHAPES[i % len(SHAPES)]
        background = backgrounds[(i // len(SHAPES)) % len(backgrounds)]
        write_example(root / "img" / concept.folder_name / f"{i:03d}", shape, concept.colour, concept.trigger,
                       background, rng)  # fmt: skip
    return root / "img"


def write_example(stem: Path, shape: str, colour: str, word: str, background: str, rng) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    image = render_shape(shape, colour, background, rng=rng)
    write_atomic(stem.with_suffix(".png"), lambda tmp: image.save(tmp, format="PNG"))
    write_text_atomic(stem.with_suffix(".txt"), caption_for(shape, word, background) + "\n")


def demo_config(data_dir: Path, output_dir: Path, seed: int, epochs: int) -> TrainConfig:
    """Settings that teach the tiny model a word in about a minute on two CPU cores.

    Latents are kohya's draws from the VAE posterior. The tiny VAE's posterior is wide, but training on
    its mean (`latent_sampling="mean"`) measured no better: the other colours drift as much, and the
    word is learnt a little less over three seeds (bench/RESULTS.md, 2026-12-02)."""
    return TrainConfig(
        pretrained_model_name_or_path=str(shipped.CHECKPOINT),
        tokenizer_path=str(shipped.TOKENIZER_DIR),
        train_data_dir=str(data_dir),
        output_dir=str(output_dir),
        output_name="zxq",
        caption_extension=".txt",
        resolution=(64, 64),
        enable_bucket=False,
        cache_latents=True,
        max_data_loader_n_workers=0,  # the latents are cached: loading in the training process is fastest
        train_batch_size=4,
        max_train_epochs=epochs,
        save_every_n_epochs=max(1, epochs // 3),
        network_dim=8,
        network_alpha=8,
        learning_rate=1e-3,
        unet_lr=1e-3,
        text_encoder_lr=1e-3,
        lr_scheduler="constant",
        mixed_precision="no",
        save_precision="float",
        seed=seed,
        logging_dir=str(output_dir / "logs"),
    )


def train_demo_lora(
    root: Path,
    concept: DemoConcept,
    epochs: int,
    add_data: Callable[[Path], None] | None = None,
    **overrides,
) -> tuple[TrainResult, float]:
    """Train the demo's LoRA quietly (no log, no epoch files, no console output) for the learning test and
    the benchmarks: the demo dataset under `root`, `add_data(img_dir)` to put more folders beside it, and
    `overrides` of any training setting. Returns the result and the training time in seconds."""
    data_dir = make_demo_dataset(root / "dataset", concept, seed=0)
    if add_data is not None:
        add_data(data_dir)
    config = updated_config(
        demo_config(data_dir, root / "out", seed=0, epochs=epochs),
        {"logging_dir": None, "save_every_n_epochs": None, **overrides},
    )
    started = time.monotonic()
    result = train(config, show_progress=False, echo=lambda _: None)
    return result, time.monotonic() - started


def probe_lora(
    concept: DemoConcept, lora_file: Path, *multipliers: float, v_prediction: bool = False
) -> list[ProbeResult]:
    """The concept probe's rates for the shipped tiny model (its v-prediction variant with `v_prediction`)
    with `lora_file` at each multiplier."""
    base = shipped.VPRED_CHECKPOINT if v_prediction else shipped.CHECKPOINT
    preview = LoRAPreview.from_files(base, shipped.TOKENIZER_DIR, lora_file)
    if v_prediction:
        preview.pipeline.scheduler = DDIMScheduler.from_config(VPRED_SCHEDULER_CONFIG)
    probe = ConceptProbe.for_colour(concept.trigger, concept.colour)
    return [probe.measure(preview, multiplier) for multiplier in multipliers]


def run_demo(output_dir: Path, seed: int = 0, epochs: int = 10, show_progress: bool = True) -> dict:
    concept = DemoConcept()
    started = time.monotonic()
    data_dir = make_demo_dataset(output_dir / "dataset", concept, seed)
    result: TrainResult = train(demo_config(data_dir, output_dir, seed, epochs), show_progress=show_progress)
    trained_s = time.monotonic() - started

    probe = ConceptProbe.for_colour(concept.trigger, concept.colour)
    preview = LoRAPreview.from_files(shipped.CHECKPOINT, shipped.TOKENIZER_DIR, result.lora_file)
    before = probe.measure(preview, multiplier=0.0)
    after = probe.measure(preview, multiplier=1.0)
    grid_path = output_dir / "zxq-grid.png"
    columns = [("base", None, 0.0)]
    columns += [(f"epoch {_epoch_of(path)}", path, 1.0) for path in result.epoch_files]
    columns += [("final x0.5", result.lora_file, 0.5), ("final x1.0", result.lora_file, 1.0)]
    grid = render_grid(preview, probe.grid_prompts(), columns, seed=seed)
    write_atomic(grid_path, lambda tmp: grid.save(tmp, format="PNG"))
    return {
        "lora_file": result.lora_file,
        "grid": grid_path,
        "log_dir": result.log_dir,
        "trigger_before": before.trigger_rate,
        "trigger_after": after.trigger_rate,
        "control_before": before.control_rate,
        "control_after": after.control_rate,
        "bleed_before": before.control_concept_rate,
        "bleed_after": after.control_concept_rate,
        "train_seconds": trained_s,
        "total_seconds": time.monotonic() - started,
        "steps": result.steps,
    }


def _epoch_of(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loracraft demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="loracraft-demo", help="where the dataset, LoRA and grid go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: the demo trains at least one epoch; use --epochs 1 or more")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a folder; name a folder (it is created)")
    # The tiny model's matrices are too small for a second CPU thread to pay off, and torch's worker
    # threads stall badly when another process shares the cores (bench/RESULTS.md has the figures).
    torch.set_num_threads(1)
    report = run_demo(output_dir, seed=args.seed, epochs=args.epochs)
    print(f"LoRA: {report['lora_file']}")
    print(f"grid: {report['grid']}")
    print(f"training log: {report['log_dir']} (tensorboard --logdir {report['log_dir']})")
    print(
        f"result: 'zxq' prompts drawn in magenta {report['trigger_before']:.0%} -> {report['trigger_after']:.0%}; "
        f"prompts without 'zxq' in magenta {report['bleed_before']:.0%} -> {report['bleed_after']:.0%}, in their "
        f"own colour {report['control_before']:.0%} -> {report['control_after']:.0%} "
        f"({report['steps']} steps, {report['total_seconds']:.0f} s)"
    )
    return 0
