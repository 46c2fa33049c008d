"""`loracraft sample`: draw a prompt file's images from saved LoRA (or LyCORIS) files, without training.

    loracraft sample --pretrained_model_name_or_path BASE --lora A.safetensors [B.safetensors ...]
        --prompts prompts.txt [--sampler euler_a] [--multiplier 0.6 1.0] [--output_dir DIR]

The prompt file is a --sample_prompts file (.txt, .toml, .json, with kohya's --n --w --h --d --s --l --ss).
Every LoRA (at every --multiplier) draws every prompt from the same seed: a prompt without --d gets one
random seed for all of them. Images are saved as `{LoRA}[_x{multiplier}]_{prompt:02d}_{time}_{seed}.png`
with their settings in the PNG text (see sampling/png_info.py); with more than one column (LoRAs times
multipliers), `grid_{time}.png` shows them side by side, a row per prompt. Everything the user can get
wrong (a missing or damaged LoRA file, a LoRA of another family, a bad prompt file) is one line, found
before anything is drawn. The drawing itself is sampling/lora_columns.py, shared with `loracraft grid`;
every LoRA and LyCORIS type is added to the weights as AUTOMATIC1111 adds it (sampling/lora_swap.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from loracraft.atomic import write_atomic
from loracraft.config.sample_options import SAMPLERS
from loracraft.sampling.grid import labelled_grid
from loracraft.sampling.lora_columns import (
    BaseModelSettings,
    Column,
    LoadedBase,
    add_base_model_flags,
    draw_rows,
    with_fixed_seeds,
)
from loracraft.sampling.lora_swap import LoRAFile
from loracraft.sampling.png_info import image_settings, write_sample_png
from loracraft.sampling.prompts import SamplePrompt, check_prompt_samplers, read_prompts
from loracraft.sampling.render import RenderedImage
from loracraft.tools.tool_parser import ToolParser, compute_device


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft sample", description="Draw a prompt file's images from saved LoRA files."
    )
    parser.add_argument(
        "--lora", required=True, nargs="+", action="extend", help="LoRA or LyCORIS files (several: a grid)."
    )
    parser.add_argument("--prompts", required=True, help="A --sample_prompts file: .txt, .toml or .json.")
    parser.add_argument(
        "--sampler", default="ddim", choices=SAMPLERS, help="Sampler of prompts without --ss."
    )
    parser.add_argument(
        "--multiplier", type=float, nargs="+", default=[1.0], help="LoRA strengths (several: a grid)."
    )
    parser.add_argument("--output_dir", help="Where the images go; default: sample/ beside the first LoRA.")
    add_base_model_flags(parser, model_help="The base model the LoRAs were trained on.", required=True)
    return parser


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    prompt_file = read_prompts(args.prompts, "--prompts")
    check_prompt_samplers(args.sampler, prompt_file.prompts, args.prompts, "--sampler")
    for note in prompt_file.notes:
        echo(f"note: {note}")
    loras = [LoRAFile.read(path) for path in args.lora]  # a bad file stops here, before the model loads
    base = LoadedBase.load(
        BaseModelSettings(
            path=Path(args.pretrained_model_name_or_path),
            tokenizer_path=args.tokenizer_path,
            tokenizer_2_path=args.tokenizer_2_path,
            clip_skip=args.clip_skip,
            v_parameterization=args.v_parameterization,
            mixed_precision=args.mixed_precision,
            device=compute_device(args.device) if args.device else None,
        )
    )
    several = len(args.multiplier) > 1
    columns = [
        base.column(lora, multiplier, f"{lora.path.stem} x{multiplier:g}" if several else lora.path.stem)
        for lora in loras
        for multiplier in args.multiplier
    ]
    output_dir = Path(args.output_dir) if args.output_dir else loras[0].path.parent / "sample"
    when = datetime.now()

    def save(prompt: SamplePrompt, column: Column, rendered: RenderedImage) -> None:
        stem = f"{column.lora.path.stem}_x{column.multiplier:g}" if several else column.lora.path.stem
        path = output_dir / f"{stem}_{prompt.index:02d}_{when:%Y%m%d%H%M%S}_{rendered.seed}.png"
        settings = image_settings(
            prompt, rendered, lora=column.lora.path.name, multiplier=column.multiplier, base_model=base.name
        )
        write_sample_png(path, rendered.image, settings)
        if rendered.problem is not None:
            echo(f"warning: {path} is no picture: {rendered.problem}")

    prompts = with_fixed_seeds(prompt_file.prompts)  # the columns differ by their LoRA only
    rows = draw_rows(base, columns, prompts, args.sampler, save)
    written = f"{len(columns) * len(prompts)} images"
    if len(columns) > 1:
        grid = labelled_grid(
            rows, [column.label for column in columns], [prompt.prompt for prompt in prompts]
        )
        grid_path = output_dir / f"grid_{when:%Y%m%d%H%M%S}.png"
        write_atomic(grid_path, lambda temporary: grid.save(temporary, format="PNG"))
        written += f" and {grid_path.name}"
    echo(f"wrote {written} to {output_dir}")
    return 0
