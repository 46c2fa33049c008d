"""Run settings: the base model, its parts and how they are loaded."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from loracraft.config.fields import MODEL, flag
from loracraft.config.rules import RuleViolation
from loracraft.config.values import OptionalPath


class ModelOptions(BaseModel):
    """The base model: checkpoint, VAE, tokenizer, attention."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pretrained_model_name_or_path: OptionalPath = flag(
        None,
        MODEL,
        "Base model: a single-file checkpoint (.safetensors, .ckpt, .pt) in the original SD layout, or a "
        "diffusers folder. Required.",
        gui_default="runwayml/stable-diffusion-v1-5",
    )
    v2: bool = flag(
        False,
        MODEL,
        "The base model is SD2.x (kohya needs this flag; loracraft reads the family from the model and "
        "turns it on for SD2 models). Refused with an SD1 or SDXL model.",
        ss_key="ss_v2",
    )
    vae: OptionalPath = flag(
        None, MODEL, "Replacement VAE: a single file or a diffusers VAE folder. Default: the model's own VAE."
    )
    # Merged by networks/merge_into_base.py.
    base_weights: list[str] | None = flag(
        None,
        MODEL,
        "LoRA files merged into the base model (U-Net and text encoders) before training, each at its "
        "--base_weights_multiplier (differential training: the new LoRA learns what they leave, and is "
        "meant for a model with them merged). kohya LoRA files made for this model's family.",
    )
    base_weights_multiplier: list[float] | None = flag(
        None,
        MODEL,
        "The strength of each --base_weights file, one per file in the same order; empty = 1.0 each. "
        "kohya takes 1.0 for files past the last value; loracraft asks for one per file, so a forgotten "
        "value is not silently 1.0.",
    )
    tokenizer_path: OptionalPath = flag(
        None,
        MODEL,
        "Folder with the CLIP tokenizer files (vocab.json, merges.txt). Needed offline when the model is a "
        "single file with no tokenizer beside it (loracraft's own option).",
    )
    tokenizer_2_path: OptionalPath = flag(
        None,
        MODEL,
        "SDXL: folder with the second tokenizer's files (vocab.json, merges.txt). Default: the model's "
        "tokenizer_2/, else NAME-tokenizer_2/ beside a single file, else the first tokenizer padded with "
        "'!', which is what SDXL's second tokenizer is (loracraft's own option).",
    )
    lowram: bool = flag(
        False,
        MODEL,
        "For machines with less RAM than VRAM: the U-Net, text encoder and VAE move to the GPU as soon as "
        "they are loaded and stay there (encoders whose outputs are cached are not moved back to the CPU). "
        "On the CPU it changes nothing.",
        ss_key="ss_lowram",
        resume_safe=True,
    )
    sdpa: bool = flag(
        True,
        MODEL,
        "Use PyTorch scaled-dot-product attention. On by default (kohya needs the flag; diffusers already "
        "uses SDPA), kept so kohya command lines work. false: the classic attention (kohya without any "
        "attention flag).",
    )
    xformers: bool = flag(
        False,
        MODEL,
        "xformers attention in the U-Net and VAE. When xformers is not installed, one line says so and "
        "SDPA is used.",
        gui_default=True,
    )
    mem_eff_attn: bool = flag(
        False,
        MODEL,
        "Memory-efficient attention: SDPA restricted to PyTorch's memory-efficient kernel (CUDA GPUs; "
        "elsewhere one line says so and plain SDPA is used). Wins over --xformers, as in kohya.",
    )

    @field_validator("base_weights", "base_weights_multiplier", mode="before")
    @classmethod
    def _one_value_is_a_list(cls, value: Any) -> Any:
        # A TOML file may give one file (or multiplier) without brackets; "" is the GUI's "not set".
        if value == "" or value == []:
            return None
        return value if isinstance(value, (list, tuple)) else [value]

    @model_validator(mode="after")
    def _one_multiplier_per_file(self) -> ModelOptions:
        files, multipliers = self.base_weights or [], self.base_weights_multiplier
        if multipliers is not None and len(multipliers) != len(files):
            raise RuleViolation(
                f"`base_weights_multiplier` has {len(multipliers)} value(s) for {len(files)} `base_weights` "
                "file(s): give one multiplier per file, in the same order (or none for 1.0 each)"
            )
        return self

    @property
    def base_weights_multipliers(self) -> list[float]:
        """One multiplier per --base_weights file: --base_weights_multiplier's, or 1.0 each."""
        return self.base_weights_multiplier or [1.0] * len(self.base_weights or [])
