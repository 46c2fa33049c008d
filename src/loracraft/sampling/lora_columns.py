"""Drawing prompts through saved LoRA files on one base model, a column per LoRA and multiplier: what
`loracraft sample` and `loracraft grid` share.

A column is one LoRA or LyCORIS file at one multiplier, or the base model alone. Each column's LoRA is added into
the base weights while the column draws and taken out exactly afterwards (lora_swap.py); every column
draws every prompt from the prompt's own seed, so the images of a row differ by their column only. A
column at multiplier 0 is the base model, drawn once per prompt and shared by every such column (adding
0 x the delta changes nothing, and a delta with inf/NaN would make it NaN).

The base model is loaded as a run would load it (its VAE, tokenizers, clip skip, v-prediction), moved
to one device, and its U-Net run under the chosen precision, as `loracraft sample` does.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from loracraft.models.bundle import ModelBundle
from loracraft.models.loading import load_model_bundle
from loracraft.networks.kohya_names import unet_namer
from loracraft.networks.merge_into_base import base_modules
from loracraft.networks.target_selection import is_norm
from loracraft.sampling.lora_swap import LoRAFile, lora_applied
from loracraft.sampling.prompts import SamplePrompt
from loracraft.sampling.render import RenderedImage, SamplingModels, render_image
from loracraft.tools.tool_parser import add_tokenizer_flags

MIXED_PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_base_model_flags(parser: argparse.ArgumentParser, *, model_help: str, required: bool) -> None:
    """The flags that say how the base model is loaded and drawn with (sample's and grid's)."""
    parser.add_argument("--pretrained_model_name_or_path", required=required, help=model_help)
    add_tokenizer_flags(parser)
    parser.add_argument(
        "--clip_skip", type=int, help="SD1/SD2: the text encoder layer from the end (as trained)."
    )
    parser.add_argument("--v_parameterization", action="store_true", help="The base model predicts v.")
    parser.add_argument(
        "--mixed_precision", default="no", choices=tuple(MIXED_PRECISIONS), help="The U-Net's precision."
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu...; default: cuda when there is one.")


@dataclass(frozen=True)
class BaseModelSettings:
    """Where the base model is and how it draws: a run's model settings."""

    path: Path
    tokenizer_path: str | None = None
    tokenizer_2_path: str | None = None
    vae: str | None = None
    clip_skip: int | None = None
    v_parameterization: bool = False
    zero_terminal_snr: bool = False
    mixed_precision: str = "no"
    device: torch.device | None = None
    """None: cuda when there is one."""


@dataclass(frozen=True)
class Column:
    """One LoRA at one multiplier (or the base model alone: `lora` None): a column of images."""

    lora: LoRAFile | None
    targets: dict[str, nn.Module]
    multiplier: float
    label: str

    @property
    def is_base(self) -> bool:
        return self.lora is None or self.multiplier == 0


@dataclass(frozen=True)
class LoadedBase:
    """The base model on its device, ready to draw with any LoRA column."""

    models: SamplingModels
    modules: dict[str, nn.Module]
    """Every layer a LoRA or LyCORIS file can change, by its kohya name."""
    family: str
    name: str
    device: torch.device
    autocast: Callable[[], AbstractContextManager]

    @classmethod
    def load(cls, settings: BaseModelSettings) -> LoadedBase:
        bundle = load_model_bundle(
            settings.path,
            vae=settings.vae,
            tokenizer_path=settings.tokenizer_path,
            tokenizer_2_path=settings.tokenizer_2_path,
        )
        device = settings.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
            model.to(device)
        models = SamplingModels(
            bundle.unet,
            bundle.vae,
            bundle.text_encoders,
            bundle.tokenizers,
            clip_skip=settings.clip_skip,
            v_prediction=settings.v_parameterization or bool(bundle.prediction.v_parameterization),
            zero_terminal_snr=settings.zero_terminal_snr or bool(bundle.prediction.zero_terminal_snr),
        )
        return cls(
            models=models,
            modules=_layers_by_name(bundle),
            family=bundle.family,
            name=bundle.source.name,
            device=device,
            autocast=_autocast(settings.mixed_precision, device),
        )

    def column(self, lora: LoRAFile | None, multiplier: float, label: str) -> Column:
        """`lora` at `multiplier`, matched to this model's modules (a LoRA for another model: one line)."""
        targets = {} if lora is None else lora.targets(self.modules, self.family)
        return Column(lora, targets, multiplier, label)

    def render(self, prompt: SamplePrompt, sampler: str) -> RenderedImage:
        return render_image(
            self.models, prompt, default_sampler=sampler, device=self.device, autocast=self.autocast
        )


def _layers_by_name(bundle: ModelBundle) -> dict[str, nn.Module]:
    """The layers kohya's and LyCORIS' modules change (merge_into_base.base_modules: the U-Net's Linear and
    Conv2d layers, the text encoders' CLIP-layer Linear ones) and the U-Net's norm layers, which train_norm
    adapts, named as training names them."""
    name = unet_namer(bundle.family, bundle.unet.config)
    norms = {name(path): module for path, module in bundle.unet.named_modules() if is_norm(module)}
    return base_modules(bundle.unet, bundle.text_encoders, bundle.family) | norms


def with_fixed_seeds(prompts: Sequence[SamplePrompt]) -> list[SamplePrompt]:
    """Each prompt without a seed (--d) gets one random seed, drawn once, so every column uses it."""
    return [
        replace(prompt, seed=random.SystemRandom().randrange(2**32)) if prompt.seed is None else prompt
        for prompt in prompts
    ]


def draw_rows(
    base: LoadedBase,
    columns: Sequence[Column],
    prompts: Sequence[SamplePrompt],
    sampler: str,
    keep: Callable[[SamplePrompt, Column, RenderedImage], None],
) -> list[list[Image.Image]]:
    """`rows[p][c]`: prompt `p` drawn in column `c`; `keep` sees every image as it is drawn (to save it,
    or to report a black one). Each LoRA is patched in once, for all the prompts of its column."""
    drawn: list[list[Image.Image]] = []
    base_images: dict[int, RenderedImage] = {}
    for column in columns:
        if column.is_base:
            for position, prompt in enumerate(prompts):
                if position not in base_images:
                    base_images[position] = base.render(prompt, sampler)
            rendered = [base_images[position] for position in range(len(prompts))]
        else:
            with lora_applied(column.lora, column.targets, column.multiplier):
                rendered = [base.render(prompt, sampler) for prompt in prompts]
        for prompt, image in zip(prompts, rendered, strict=True):
            keep(prompt, column, image)
        drawn.append([image.image for image in rendered])
    return [list(row) for row in zip(*drawn, strict=True)]


def _autocast(mixed_precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    dtype = MIXED_PRECISIONS[mixed_precision]
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
