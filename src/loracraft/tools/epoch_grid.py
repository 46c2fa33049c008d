"""`loracraft grid`: a training run's epoch files x LoRA weights as one labelled image, to pick the epoch
and the weight to keep.

    loracraft grid OUTPUT_DIR [--output_name NAME] [--weights 0.7,1.0,1.3] [--epochs 2,4,final | all]
        [--prompts FILE] [--seeds 1,2] [--sampler ddim] [--base] [--save_to grid.png] [--overwrite]

This is the comparison seed 003 builds in AUTOMATIC1111's X/Y/Z plot (X: every epoch's LoRA file, Y: a
range of weights such as 0.7-1.5) to see where the LoRA has learnt enough and where it starts to break.
Columns are the run's saved files in training order (NAME-000001, ..., NAME-step00000200, the final
NAME.safetensors) times `--weights`, with the base model alone first under `--base`; rows are the prompts
times `--seeds`. A prompt's seed is fixed for its whole row (`--seeds`, else its --d, else one random seed
drawn for the grid and shown in the row label), so the cells of a row differ by epoch and weight only.
Every LoRA and LyCORIS type draws, added to the weights as AUTOMATIC1111 adds it (sampling/lora_swap.py).

The run is read from its folder: NAME.toml (the effective config the run wrote) gives the base model,
its tokenizers, VAE, clip skip, v-prediction, the sample prompts and sampler, each of which a flag here
overrides. The prompt file is kohya's --sample_prompts format (prompts.py). The PNG's text records the
axes: "loracraft" holds every column's file, epoch, step and weight and every row's prompt and seed as
JSON; "parameters" is the first cell's AUTOMATIC1111 infotext, as A1111 writes on its own grids.
Everything the user can get wrong is one line, found before the base model loads.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from loracraft.atomic import write_atomic
from loracraft.config.load import build_config, read_config_file
from loracraft.config.sample_options import SAMPLERS
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.networks.lora_file import read_lora_metadata
from loracraft.sampling.axis_values import axis_numbers, axis_seeds
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
from loracraft.sampling.png_info import PARAMETERS_KEY, SETTINGS_KEY, image_settings, parameters_text
from loracraft.sampling.prompts import PromptFile, SamplePrompt, check_prompt_samplers, read_prompts
from loracraft.sampling.render import RenderedImage
from loracraft.tools.tool_parser import ToolParser, add_overwrite_flag, check_new_output, compute_device

DEFAULT_WEIGHTS = (0.7, 1.0, 1.3)
"""Seed 003's range (0.7 to 1.5) in three steps: below 1 shows what the LoRA keeps at a lower weight,
above 1 shows an overtrained epoch breaking first."""
LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")
# kohya's names (training/save_points.py): NAME, NAME-000004, NAME-step00000200.
_SAVED_NAME = re.compile(r"(?P<name>.+?)(?:-(?P<epoch>\d{6})|-step(?P<step>\d{8}))?")
FINAL = "final"
EPOCHS_FLAG = "epochs"


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft grid",
        description="A training run's epoch files x LoRA weights as one labelled image.",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="The run's --output_dir.")
    parser.add_argument("--output_name", help="The run's NAME; default: the one run in OUTPUT_DIR.")
    parser.add_argument(
        "--weights",
        type=weight_list,
        default=DEFAULT_WEIGHTS,
        help="LoRA weights, comma-separated or as A1111's X/Y plot ranges: 0.7-1.5 [5] (default: 0.7,1.0,1.3).",
    )
    parser.add_argument(
        "--epochs",
        type=epoch_list,
        help="Epochs to show, e.g. 2,4,final; default: all, every saved file (epochs, steps, final).",
    )
    parser.add_argument(
        "--prompts", help="A --sample_prompts file (.txt, .toml, .json); default: the run's sample_prompts."
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        help="Seeds, comma-separated (-1: random; A1111 ranges: -1--1 [8]): a row per prompt and seed; "
        "default: --d.",
    )
    parser.add_argument(
        "--sampler", choices=SAMPLERS, help="Sampler of prompts without --ss; default: the run's."
    )
    parser.add_argument("--base", action="store_true", help="Add the base model alone (weight 0) first.")
    parser.add_argument("--save_to", help="The grid PNG; default: OUTPUT_DIR/NAME-epochs.png.")
    add_overwrite_flag(parser)
    add_base_model_flags(
        parser, model_help="The base model; default: the run's (from NAME.toml).", required=False
    )
    return parser


def weight_list(text: str) -> tuple[float, ...]:
    """`0.4,0.7,1.0` or A1111's `0.7-1.5 [5]` -> the weights (sampling/axis_values.py)."""
    try:
        return tuple(round(weight, 10) for weight in axis_numbers(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of numbers; write e.g. --weights 0.4,0.7,1.0 or 0.7-1.5 [5]"
        ) from None


def epoch_list(text: str) -> tuple[int | str, ...] | None:
    """`all` -> None (every file); `2,4,final` -> (2, 4, "final")."""
    if text.strip().lower() == "all":
        return None
    parts = [part.strip().lower() for part in text.split(",")]
    if not all(part == FINAL or (part.isdigit() and int(part) > 0) for part in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of epochs; write e.g. --epochs 2,4,final or --epochs all"
        )
    return tuple(part if part == FINAL else int(part) for part in parts)


def seed_list(text: str) -> tuple[int, ...]:
    """`1,2`, a range (`1-4`) or -1 for a random seed (`-1--1 [8]`: eight), as A1111's seed axis."""
    try:
        return tuple(axis_seeds(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of seeds (whole numbers from 0 to 4294967295, -1 for a random one); "
            "write e.g. --seeds 1,2 or -1--1 [8]"
        ) from None


@dataclass(frozen=True)
class SavedLoRA:
    """One LoRA file a run saved: an epoch file, a step file or the final file."""

    path: Path
    kind: str
    """"epoch", "step" or "final"."""
    epoch: int | None
    """The epoch file's number, else the file's ss_epoch (None: a .ckpt/.pt file has no metadata)."""
    step: int | None
    """The step file's number, else the file's ss_steps."""

    @property
    def label(self) -> str:
        if self.kind == "step":
            return f"step {self.step}"
        if self.kind == "epoch":
            return f"epoch {self.epoch}"
        return FINAL if self.epoch is None else f"epoch {self.epoch} ({FINAL})"


@dataclass(frozen=True)
class GridRequest:
    """What `loracraft grid` draws; None: the run's own setting (from NAME.toml) or the default."""

    output_dir: Path
    output_name: str | None = None
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    epochs: tuple[int | str, ...] | None = None
    prompts: Path | None = None
    seeds: tuple[int, ...] | None = None
    sampler: str | None = None
    include_base: bool = False
    save_to: Path | None = None
    overwrite: bool = False
    base_model: Path | None = None
    tokenizer_path: str | None = None
    tokenizer_2_path: str | None = None
    clip_skip: int | None = None
    v_parameterization: bool = False
    mixed_precision: str = "no"
    device: str | None = None


@dataclass(frozen=True)
class GridColumn:
    label: str
    lora: SavedLoRA | None
    """None: the base model alone."""
    weight: float


@dataclass(frozen=True)
class EpochGrid:
    path: Path
    image: Image.Image
    columns: list[GridColumn]
    rows: list[SamplePrompt]
    """Each row's prompt, its seed fixed."""


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    request = GridRequest(
        output_dir=Path(args.output_dir),
        output_name=args.output_name,
        weights=args.weights,
        epochs=args.epochs,
        prompts=Path(args.prompts) if args.prompts else None,
        seeds=args.seeds,
        sampler=args.sampler,
        include_base=args.base,
        save_to=Path(args.save_to) if args.save_to else None,
        overwrite=args.overwrite,
        base_model=Path(args.pretrained_model_name_or_path) if args.pretrained_model_name_or_path else None,
        tokenizer_path=args.tokenizer_path,
        tokenizer_2_path=args.tokenizer_2_path,
        clip_skip=args.clip_skip,
        v_parameterization=args.v_parameterization,
        mixed_precision=args.mixed_precision,
        device=args.device,
    )
    grid = render_epoch_grid(request, echo)
    echo(
        f"wrote {grid.path}: {len(grid.rows)} rows (prompts x seeds) x {len(grid.columns)} columns "
        f"(epochs x weights)"
    )
    return 0


def render_epoch_grid(request: GridRequest, echo: Callable[[str], None] = print) -> EpochGrid:
    """Draw the grid `request` asks for and write it; every input is checked before the model loads."""
    name, saved = run_files(request.output_dir, request.output_name)
    chosen = chosen_files(saved, request.epochs, name)
    save_to = check_new_output(
        request.save_to or request.output_dir / f"{name}-epochs.png", request.overwrite, "--save_to"
    )
    config = run_config(request.output_dir, name)
    prompt_file = _prompt_file(request, config, name)
    for note in prompt_file.notes:
        echo(f"note: {note}")
    sampler = request.sampler or (config.sample_sampler if config is not None else "ddim")
    check_prompt_samplers(sampler, prompt_file.prompts, prompt_file.path, "--sampler")
    loras = {file.path: LoRAFile.read(file.path, EPOCHS_FLAG) for file in chosen}
    base = LoadedBase.load(_base_settings(request, config, name))

    grid_columns = [GridColumn("base", None, 0.0)] if request.include_base else []
    grid_columns += [
        GridColumn(f"{file.label} · {weight:g}", file, weight)
        for file in chosen
        for weight in request.weights
    ]
    columns = [
        base.column(loras[column.lora.path] if column.lora else None, column.weight, column.label)
        for column in grid_columns
    ]
    rows = grid_rows(prompt_file.prompts, request.seeds)
    first: list[tuple[SamplePrompt, Column, RenderedImage]] = []

    def keep(prompt: SamplePrompt, column: Column, rendered: RenderedImage) -> None:
        if not first:
            first.append((prompt, column, rendered))
        if rendered.problem is not None:
            echo(
                f"warning: {column.label}, seed {prompt.seed}: {prompt.prompt!r} is no picture: {rendered.problem}"
            )

    images = labelled_grid(
        draw_rows(base, columns, rows, sampler, keep),
        [column.label for column in grid_columns],
        [row_label(prompt) for prompt in rows],
    )
    axes = _axes(name, base.name, sampler, grid_columns, rows)
    _write_grid(save_to, images, axes, _first_cell_settings(*first[0], base.name))
    return EpochGrid(save_to, images, grid_columns, rows)


def run_files(folder: Path, name: str | None) -> tuple[str, list[SavedLoRA]]:
    """The run's NAME and the LoRA files it saved in `folder` (every run's when `name` is None: there
    must be one)."""
    if not folder.is_dir():
        raise UserError(f"OUTPUT_DIR {folder} is not a folder; give a training run's --output_dir")
    runs: dict[str, list[SavedLoRA]] = {}
    for path in sorted(folder.iterdir()):
        match = _SAVED_NAME.fullmatch(path.stem)
        if (
            path.suffix.lower() in LORA_SUFFIXES
            and path.is_file()
            and not path.name.startswith(".")
            and match
        ):
            runs.setdefault(match["name"], []).append(_saved_lora(path, match))
    if not runs:
        raise UserError(
            f"OUTPUT_DIR {folder} holds no LoRA files (.safetensors, .ckpt, .pt); give a training run's --output_dir"
        )
    if name is None:
        if len(runs) > 1:
            raise UserError(
                f"OUTPUT_DIR {folder} holds the LoRA files of several runs ({', '.join(runs)}); choose one with --output_name"
            )
        (name,) = runs
    if name not in runs:
        raise UserError(
            f"--output_name {name}: OUTPUT_DIR {folder} holds no LoRA files of that name; its runs: {', '.join(runs)}"
        )
    return name, runs[name]


def chosen_files(saved: list[SavedLoRA], epochs: Sequence[int | str] | None, name: str) -> list[SavedLoRA]:
    """The files `--epochs` names (all when None), in training order: by step where every file records
    its step, else epoch files, then step files, then the final one."""
    if all(file.step is not None for file in saved):
        ordered = sorted(saved, key=lambda file: (file.step, file.kind == "final"))
    else:
        order = {"epoch": 0, "step": 1, "final": 2}
        ordered = sorted(saved, key=lambda file: (order[file.kind], file.epoch or 0, file.step or 0))
    if epochs is None:
        return ordered
    wanted = {_file_of(ordered, epoch, name).path for epoch in epochs}
    return [file for file in ordered if file.path in wanted]


def _file_of(saved: list[SavedLoRA], wanted: int | str, name: str) -> SavedLoRA:
    """The file of epoch `wanted` (an epoch file, or the final file of that epoch), or the final file."""
    if wanted == FINAL:
        matches = [file for file in saved if file.kind == "final"]
    else:
        matches = [file for file in saved if file.kind == "epoch" and file.epoch == wanted]
        matches = matches or [file for file in saved if file.kind == "final" and file.epoch == wanted]
    if not matches:
        what = "final file" if wanted == FINAL else f"file of epoch {wanted}"
        raise UserError(
            f"--epochs {wanted}: {name} has no {what}; it has {', '.join(file.label for file in saved)}"
        )
    return matches[0]


def _saved_lora(path: Path, match: re.Match[str]) -> SavedLoRA:
    metadata = read_lora_metadata(path)
    recorded_epoch, recorded_step = _whole(metadata.get("ss_epoch")), _whole(metadata.get("ss_steps"))
    if match["epoch"]:
        return SavedLoRA(path, "epoch", int(match["epoch"]), recorded_step)
    if match["step"]:
        return SavedLoRA(path, "step", recorded_epoch, int(match["step"]))
    return SavedLoRA(path, "final", recorded_epoch, recorded_step)


def _whole(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def run_config(folder: Path, name: str) -> TrainConfig | None:
    """The run's effective config (NAME.toml), None when the folder has none."""
    path = folder / f"{name}.toml"
    if not path.is_file():
        return None
    return build_config(read_config_file(path), {}, source=f"{path}: ")


def _prompt_file(request: GridRequest, config: TrainConfig | None, name: str) -> PromptFile:
    """--prompts, else the run's sample_prompts."""
    if request.prompts is not None:
        return read_prompts(request.prompts, "--prompts")
    if config is None or not config.sample_prompts:
        raise UserError(
            f"no prompts: {name}'s run had no sample_prompts; give --prompts FILE (.txt, .toml or .json)"
        )
    if not Path(config.sample_prompts).is_file():
        raise UserError(
            f"{request.output_dir / f'{name}.toml'}: the run's sample_prompts {config.sample_prompts} is not there; "
            "give --prompts FILE"
        )
    return read_prompts(config.sample_prompts, "--sample_prompts")


def _base_settings(request: GridRequest, config: TrainConfig | None, name: str) -> BaseModelSettings:
    """The run's model settings (NAME.toml), each overridden by its flag."""
    if request.base_model is not None:
        path = request.base_model
    elif config is not None and config.pretrained_model_name_or_path:
        path = Path(config.pretrained_model_name_or_path)
        if not path.exists():
            raise UserError(
                f"{request.output_dir / f'{name}.toml'}: the run's base model {path} is not there; give "
                "--pretrained_model_name_or_path BASE"
            )
    else:
        raise UserError(
            f"{request.output_dir / f'{name}.toml'} not found, so the base model is unknown; give "
            "--pretrained_model_name_or_path BASE"
        )
    run = config if config is not None else TrainConfig()
    return BaseModelSettings(
        path=path,
        tokenizer_path=request.tokenizer_path or run.tokenizer_path,
        tokenizer_2_path=request.tokenizer_2_path or run.tokenizer_2_path,
        vae=run.vae,
        clip_skip=request.clip_skip if request.clip_skip is not None else run.clip_skip,
        v_parameterization=request.v_parameterization or run.v_parameterization,
        zero_terminal_snr=run.zero_terminal_snr,
        mixed_precision=request.mixed_precision,
        device=compute_device(request.device) if request.device else None,
    )


def grid_rows(prompts: Sequence[SamplePrompt], seeds: Sequence[int] | None) -> list[SamplePrompt]:
    """A row per prompt and seed (`seeds` replace each prompt's --d); without `seeds`, a row per prompt
    at its --d or at one random seed drawn for the whole row."""
    if seeds is None:
        return with_fixed_seeds(prompts)
    return [replace(prompt, seed=seed) for prompt in prompts for seed in seeds]


def row_label(prompt: SamplePrompt) -> str:
    # The seed first: a long prompt is cut at the label's end.
    return f"seed {prompt.seed}: {prompt.prompt}"


def _axes(
    name: str, base_model: str, sampler: str, columns: Sequence[GridColumn], rows: Sequence[SamplePrompt]
) -> dict[str, Any]:
    """What the grid's columns and rows are, for its PNG text."""
    return {
        "grid": "columns: epoch files x LoRA weights; rows: prompts x seeds",
        "run": name,
        "base_model": base_model,
        "columns": [
            {
                "label": column.label,
                "lora": column.lora.path.name if column.lora else None,
                "epoch": column.lora.epoch if column.lora else None,
                "step": column.lora.step if column.lora else None,
                "weight": column.weight,
            }
            for column in columns
        ],
        "rows": [
            {
                "label": row_label(prompt),
                "prompt": prompt.prompt,
                "negative_prompt": prompt.negative_prompt,
                "seed": prompt.seed,
                "width": prompt.width,
                "height": prompt.height,
                "steps": prompt.steps,
                "scale": prompt.scale,
                "sampler": prompt.sampler or sampler,
            }
            for prompt in rows
        ],
    }


def _first_cell_settings(
    prompt: SamplePrompt, column: Column, rendered: RenderedImage, base_model: str
) -> dict[str, Any]:
    lora = column.lora.path.name if column.lora else None
    return image_settings(prompt, rendered, lora=lora, multiplier=column.multiplier, base_model=base_model)


def _write_grid(path: Path, image: Image.Image, axes: dict[str, Any], first_cell: dict[str, Any]) -> None:
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text(first_cell))
    info.add_text(SETTINGS_KEY, json.dumps(axes, ensure_ascii=False))
    write_atomic(path, lambda temporary: image.save(temporary, format="PNG", pnginfo=info))
