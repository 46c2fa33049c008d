"""`loracraft sample`: draw a prompt file's images from saved LoRA files, without training.

    loracraft sample --pretrained_model_name_or_path BASE --lora A.safetensors [B.safetensors ...]
        --prompts prompts.txt [--sampler euler_a] [--multiplier 0.6 1.0] [--output_dir DIR]

The prompt file is a --sample_prompts file (.txt, .toml, .json, with kohya's --n --w --h --d --s --l --ss).
Every LoRA (at every --multiplier) draws every prompt from the same seed: a prompt without --d gets one
random seed for all of them. Images are saved as `{LoRA}[_x{multiplier}]_{prompt:02d}_{time}_{seed}.png`
with their settings in the PNG text (see sampling/png_info.py); with more than one column (LoRAs times
multipliers), `grid_{time}.png` shows them side by side, a row per prompt. Everything the user can get
wrong (a missing or damaged LoRA file, a LoRA of another family, a bad prompt file) is one line, found
before anything is drawn.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from loracraft.atomic import write_atomic
from loracraft.config.sample_options import SAMPLERS
from loracraft.models.loading import load_model_bundle
from loracraft.networks.merge_into_base import base_modules
from loracraft.sampling.grid import labelled_grid
from loracraft.sampling.lora_swap import LoRAFile, lora_applied
from loracraft.sampling.png_info import image_settings, write_sample_png
from loracraft.sampling.prompts import SamplePrompt, check_prompt_samplers, read_prompts
from loracraft.sampling.render import SamplingModels, render_image
from loracraft.tools.tool_parser import ToolParser

PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft sample", description="Draw a prompt file's images from saved LoRA files."
    )
    parser.add_argument(
        "--pretrained_model_name_or_path", required=True, help="The base model the LoRAs were trained on."
    )
    parser.add_argument(
        "--lora", required=True, nargs="+", action="extend", help="LoRA files (several: a grid)."
    )
    parser.add_argument("--prompts", required=True, help="A --sample_prompts file: .txt, .toml or .json.")
    parser.add_argument(
        "--sampler", default="ddim", choices=SAMPLERS, help="Sampler of prompts without --ss."
    )
    parser.add_argument(
        "--multiplier", type=float, nargs="+", default=[1.0], help="LoRA strengths (several: a grid)."
    )
    parser.add_argument("--output_dir", help="Where the images go; default: sample/ beside the first LoRA.")
    parser.add_argument(
        "--tokenizer_path", help="The CLIP tokenizer folder, when the model has none beside it."
    )
    parser.add_argument("--tokenizer_2_path", help="SDXL's second tokenizer folder.")
    parser.add_argument(
        "--clip_skip", type=int, help="SD1/SD2: the text encoder layer from the end (as trained)."
    )
    parser.add_argument("--v_parameterization", action="store_true", help="The base model predicts v.")
    parser.add_argument(
        "--mixed_precision", default="no", choices=tuple(PRECISIONS), help="The U-Net's precision."
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu...; default: cuda when there is one.")
    return parser


@dataclass(frozen=True)
class Column:
    """One LoRA at one multiplier: a column of the grid."""

    lora: LoRAFile
    targets: dict[str, nn.Module]
    multiplier: float
    label: str
    file_stem: str


@dataclass(frozen=True)
class Drawing:
    """How every image of this command is drawn and saved."""

    models: SamplingModels
    sampler: str
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    output_dir: Path
    base_model: str
    when: datetime
    echo: Callable[[str], None]

    def draw(self, prompt: SamplePrompt, column: Column) -> Image.Image:
        rendered = render_image(
            self.models, prompt, default_sampler=self.sampler, device=self.device, autocast=self.autocast
        )
        name = f"{column.file_stem}_{prompt.index:02d}_{self.when:%Y%m%d%H%M%S}_{rendered.seed}.png"
        settings = image_settings(
            prompt,
            rendered,
            lora=column.lora.path.name,
            multiplier=column.multiplier,
            base_model=self.base_model,
        )
        write_sample_png(self.output_dir / name, rendered.image, settings)
        if rendered.problem is not None:
            self.echo(f"warning: {self.output_dir / name} is no picture: {rendered.problem}")
        return rendered.image


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    prompt_file = read_prompts(args.prompts, "--prompts")
    check_prompt_samplers(args.sampler, prompt_file.prompts, args.prompts, "--sampler")
    for note in prompt_file.notes:
        echo(f"note: {note}")
    loras = [LoRAFile.read(path) for path in args.lora]  # a bad file stops here, before the model loads
    bundle = load_model_bundle(
        args.pretrained_model_name_or_path,
        tokenizer_path=args.tokenizer_path,
        tokenizer_2_path=args.tokenizer_2_path,
    )
    columns = _columns(
        loras, base_modules(bundle.unet, bundle.text_encoders, bundle.family), bundle.family, args.multiplier
    )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
        model.to(device)
    drawing = Drawing(
        models=SamplingModels(
            bundle.unet,
            bundle.vae,
            bundle.text_encoders,
            bundle.tokenizers,
            clip_skip=args.clip_skip,
            v_prediction=args.v_parameterization or bool(bundle.prediction.v_parameterization),
            zero_terminal_snr=bool(bundle.prediction.zero_terminal_snr),
        ),
        sampler=args.sampler,
        device=device,
        autocast=_autocast(args.mixed_precision, device),
        output_dir=Path(args.output_dir) if args.output_dir else loras[0].path.parent / "sample",
        base_model=bundle.source.name,
        when=datetime.now(),
        echo=echo,
    )
    # One seed per prompt for every column, so the columns differ by their LoRA only.
    prompts = [
        replace(prompt, seed=random.SystemRandom().randrange(2**32)) if prompt.seed is None else prompt
        for prompt in prompt_file.prompts
    ]
    images = []
    for column in columns:
        with lora_applied(column.lora, column.targets, column.multiplier):
            images.append([drawing.draw(prompt, column) for prompt in prompts])
    written = f"{len(columns) * len(prompts)} images"
    if len(columns) > 1:
        grid = labelled_grid(
            [list(row) for row in zip(*images, strict=True)],
            [column.label for column in columns],
            [prompt.prompt for prompt in prompts],
        )
        grid_path = drawing.output_dir / f"grid_{drawing.when:%Y%m%d%H%M%S}.png"
        write_atomic(grid_path, lambda temporary: grid.save(temporary, format="PNG"))
        written += f" and {grid_path.name}"
    echo(f"wrote {written} to {drawing.output_dir}")
    return 0


def _columns(
    loras: list[LoRAFile], modules: dict[str, nn.Module], family: str, multipliers: list[float]
) -> list[Column]:
    """Every LoRA at every multiplier, each matched to the base model's modules."""
    columns = []
    several = len(multipliers) > 1
    for lora in loras:
        targets = lora.targets(modules, family)
        for multiplier in multipliers:
            label = f"{lora.path.stem} x{multiplier:g}" if several else lora.path.stem
            stem = f"{lora.path.stem}_x{multiplier:g}" if several else lora.path.stem
            columns.append(Column(lora, targets, multiplier, label, stem))
    return columns


def _autocast(mixed_precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    dtype = PRECISIONS[mixed_precision]
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
