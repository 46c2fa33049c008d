"""`loracraft extract`: a LoRA from the difference of a fine-tuned model and its base (kohya's
networks/extract_lora_from_models.py, with its flags and defaults).

    loracraft extract --model_org base.safetensors --model_tuned finetune.safetensors
        --save_to finetune-lora.safetensors --dim 32 [--conv_dim 16] [--clamp_quantile 0.99]

For every module kohya's LoRA trains (networks/targets.py: the U-Net's transformer blocks, with --conv_dim
its ResNet blocks and samplers too; the text encoders' attention and MLP layers), the delta
W_tuned - W_org is factored by SVD (networks/low_rank.py) to rank min(dim, out, in) (--conv_dim for
convolutions larger than 1x1), both factors clipped at the --clamp_quantile quantile of their entries, with
alpha = rank (scale 1), as kohya. The text encoders are left out when no weight of theirs moved more than
--min_diff. The file has exactly the names, parts and metadata training writes, so it loads wherever a
trained LoRA does, and as --network_weights.

Where we differ from kohya, on purpose: the family comes from the files (SD1, SD2 or SDXL, single files or
diffusers folders), so --v2/--sdxl are only checked against it; --dynamic_method/--dynamic_param choose each
module's rank as in `loracraft resize`; the retained Frobenius norm is reported per module (--verbose) and
in a summary, measured after the clamp; --clamp_quantile 1 clips nothing (kohya's signed quantile still
clips negative entries beyond the largest positive one there).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle
from loracraft.models.family import FAMILY_NAMES
from loracraft.models.loading import load_model_bundle
from loracraft.networks.kohya_names import text_encoder_prefixes
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.low_rank import DYNAMIC_METHODS, Factored, factorize, retention_summary
from loracraft.networks.metadata import base_model_version, lora_modelspec
from loracraft.networks.target_selection import TargetChoice, text_encoder_targets_for, unet_targets_for
from loracraft.networks.targets import LoRATarget, is_conv_3x3
from loracraft.tools.tool_parser import (
    PRECISIONS,
    ToolParser,
    add_overwrite_flag,
    add_tokenizer_flags,
    check_dynamic,
    check_lora_output,
    compute_device,
)

_LOADING_FLAG = "--pretrained_model_name_or_path"  # what load_model_bundle's messages name


@dataclass(frozen=True)
class ExtractSettings:
    """kohya's extract flags, checked."""

    dim: int = 4
    conv_dim: int | None = None
    """Rank of convolutions larger than 1x1, which get a LoRA only when it is given."""
    clamp_quantile: float | None = 0.99
    """None: no clamp (kohya always clamps; the API may not)."""
    min_diff: float = 0.01
    dynamic_method: str | None = None
    dynamic_param: float | None = None
    load_dtype: torch.dtype | None = None
    """kohya's --load_precision: the weights are rounded to it before the difference."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        for flag, value in (("--dim", self.dim), ("--conv_dim", self.conv_dim)):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        if self.clamp_quantile is not None and not 0 < self.clamp_quantile <= 1:
            raise UserError(
                f"--clamp_quantile {self.clamp_quantile:g} must be above 0 and at most 1 (kohya: 0.99)"
            )
        if self.min_diff < 0:
            raise UserError(f"--min_diff {self.min_diff:g} must be at least 0 (kohya: 0.01)")
        check_dynamic(self.dynamic_method, self.dynamic_param)

    def max_rank(self, weight: Tensor, conv_3x3: bool) -> int:
        """kohya's rank: --conv_dim for a 3x3 convolution, else --dim, never above the weight's out or in
        channels."""
        rank = self.conv_dim if conv_3x3 and self.conv_dim is not None else self.dim
        return min(rank, weight.shape[0], weight.shape[1])


@dataclass(frozen=True)
class ExtractedModule:
    name: str
    factored: Factored


@dataclass(frozen=True)
class ExtractedLoRA:
    tensors: dict[str, Tensor]
    modules: list[ExtractedModule]
    family: str
    text_encoder_change: float
    """The largest |W_tuned - W_org| over the text encoders' targets."""
    text_encoders_kept: bool


def load_models(
    model_org: str, model_tuned: str, tokenizers: tuple[str | None, str | None] = (None, None)
) -> tuple[ModelBundle, ModelBundle]:
    """Both models, refused in one line when either is missing or not an SD model, or their families
    differ; `tokenizers` (--tokenizer_path, --tokenizer_2_path) serve both single files."""
    org, tuned = _load("--model_org", model_org, tokenizers), _load("--model_tuned", model_tuned, tokenizers)
    if org.family != tuned.family:
        raise UserError(
            f"--model_tuned {model_tuned} is an {FAMILY_NAMES[tuned.family]} model but --model_org {model_org} is "
            f"{FAMILY_NAMES[org.family]}; give the base model the fine-tune was made from"
        )
    return org, tuned


def _load(flag: str, path: str, tokenizers: tuple[str | None, str | None]) -> ModelBundle:
    if not Path(path).exists():
        raise UserError(f"{flag} {path}: no such file or folder")
    try:
        return load_model_bundle(path, tokenizer_path=tokenizers[0], tokenizer_2_path=tokenizers[1])
    except UserError as error:
        message = str(error).replace(_LOADING_FLAG, flag)
        raise UserError(message if message.startswith(flag) else f"{flag} {message}") from None


def check_family_flags(family: str, v2: bool, sdxl: bool, model_org: str) -> None:
    """kohya needs --v2/--sdxl to load the models; here the files say it, and the flags must agree."""
    for flag, given, expected in (("--v2", v2, "sd2"), ("--sdxl", sdxl, "sdxl")):
        if given and family != expected:
            raise UserError(
                f"{flag}: --model_org {model_org} is an {FAMILY_NAMES[family]} model; leave {flag} out (the "
                "family is read from the files)"
            )


def extraction_targets(bundle: ModelBundle, conv: bool) -> tuple[list[LoRATarget], list[LoRATarget]]:
    """(text encoders', U-Net's) targets under kohya's names: the modules training gives a LoRA."""
    choice = TargetChoice()
    text = [
        target
        for model, prefix in zip(bundle.text_encoders, text_encoder_prefixes(bundle.family), strict=True)
        for target in text_encoder_targets_for(model, prefix, choice)
    ]
    return text, unet_targets_for(bundle.unet, bundle.family, choice, trains_convolutions=conv)


@dataclass(frozen=True)
class Pair:
    """A target of both models, under its kohya name."""

    name: str
    org: nn.Module
    tuned: nn.Module


def weight_pairs(org: ModelBundle, tuned: ModelBundle, conv: bool) -> tuple[list[Pair], list[Pair]]:
    """(text encoders', U-Net's) targets with their two weights; one line when the models' architectures
    differ."""
    pairs = []
    for org_targets, tuned_targets in zip(
        extraction_targets(org, conv), extraction_targets(tuned, conv), strict=True
    ):
        tuned_by_name = {target.name: target.module for target in tuned_targets}
        part = []
        for target in org_targets:
            tuned_module = tuned_by_name.get(target.name)
            _check_same_shape(target, tuned_module, org, tuned)
            part.append(Pair(target.name, target.module, tuned_module))
        if len(tuned_by_name) != len(org_targets):
            _architectures_differ(
                org, tuned, f"it has {len(tuned_by_name)} such modules, not {len(org_targets)}"
            )
        pairs.append(part)
    return pairs[0], pairs[1]


def _check_same_shape(
    target: LoRATarget, tuned: nn.Module | None, org: ModelBundle, other: ModelBundle
) -> None:
    if tuned is None:
        _architectures_differ(org, other, f"it has no {target.name}")
    elif tuned.weight.shape != target.module.weight.shape:
        _architectures_differ(
            org,
            other,
            f"its {target.name} is {tuple(tuned.weight.shape)}, the base's {tuple(target.module.weight.shape)}",
        )


def _architectures_differ(org: ModelBundle, tuned: ModelBundle, how: str) -> None:
    raise UserError(
        f"--model_tuned {tuned.source} is not a fine-tune of --model_org {org.source} ({how}); give the base "
        "model the fine-tune was made from"
    )


def extract_lora(
    org: ModelBundle, tuned: ModelBundle, settings: ExtractSettings, echo: Callable[[str], None] = print
) -> ExtractedLoRA:
    """The LoRA of tuned - org, module by module; nothing is written."""
    text_pairs, unet_pairs = weight_pairs(org, tuned, settings.conv_dim is not None)
    change = max((float(_difference(pair, settings).abs().max()) for pair in text_pairs), default=0.0)
    keep_text = change > settings.min_diff
    if not keep_text:
        echo(
            f"the text encoders are the same (largest weight change {change:.3g} <= --min_diff "
            f"{settings.min_diff:g}): extracting the U-Net only"
        )
    tensors: dict[str, Tensor] = {}
    modules = []
    for pair in (text_pairs if keep_text else []) + unet_pairs:
        delta = _difference(pair, settings).to(settings.device)
        max_rank = settings.max_rank(delta, is_conv_3x3(pair.org))
        factored = factorize(
            delta, max_rank, settings.dynamic_method, settings.dynamic_param, settings.clamp_quantile
        )
        tensors[f"{pair.name}.lora_up.weight"] = factored.up.cpu().contiguous()
        tensors[f"{pair.name}.lora_down.weight"] = factored.down.cpu().contiguous()
        tensors[f"{pair.name}.alpha"] = torch.tensor(float(factored.rank))
        modules.append(ExtractedModule(pair.name, factored))
    return ExtractedLoRA(tensors, modules, org.family, change, keep_text)


def _difference(pair: Pair, settings: ExtractSettings) -> Tensor:
    org, tuned = pair.org.weight.detach(), pair.tuned.weight.detach()
    if settings.load_dtype is not None:
        org, tuned = org.to(settings.load_dtype), tuned.to(settings.load_dtype)
    return tuned.float() - org.float()


def extract_metadata(
    settings: ExtractSettings, family: str, v_parameterization: bool, title: str, no_metadata: bool
) -> dict[str, str]:
    """kohya's minimum metadata, and unless --no_metadata its modelspec."""
    network_args = {} if settings.conv_dim is None else {
        "conv_dim": str(settings.conv_dim), "conv_alpha": str(float(settings.conv_dim))
    }  # fmt: skip
    dynamic = settings.dynamic_method is not None
    metadata = {
        "ss_v2": str(family == "sd2"),
        "ss_base_model_version": base_model_version(family, v_parameterization),
        "ss_network_module": "networks.lora",
        "ss_network_dim": "Dynamic" if dynamic else str(settings.dim),
        "ss_network_alpha": "Dynamic" if dynamic else str(float(settings.dim)),
        "ss_network_args": json.dumps(network_args),
    }
    if not no_metadata:
        metadata |= lora_modelspec(family, v_parameterization, title, time.time())
    return metadata


def _module_line(module: ExtractedModule) -> str:
    factored = module.factored
    return (
        f"{module.name:75} | rank {factored.rank}, fro retained: {factored.fro_retained:.1%}, sum(S) "
        f"retained: {factored.sum_retained:.1%}, max(S) ratio: {factored.max_ratio:0.1f}"
    )


def report(result: ExtractedLoRA, verbose: bool) -> list[str]:
    lines = [_module_line(module) for module in result.modules] if verbose else []
    text = sum(not module.name.startswith("lora_unet") for module in result.modules)
    lines.append(
        f"extracted {len(result.modules)} modules ({text} in the text encoders) from an "
        f"{FAMILY_NAMES[result.family]} model pair"
    )
    lines.extend(
        retention_summary([(module.name, module.factored) for module in result.modules], "the modules")
    )
    return lines


def recorded_prediction(flag: bool | None, org: ModelBundle) -> bool:
    """Whether the file says v-prediction: --v_parameterization, else what the base model says, else
    kohya's default (v-prediction for SD2, whose --v2 sets it)."""
    if flag is not None:
        return flag
    if org.prediction.v_parameterization is not None:
        return org.prediction.v_parameterization
    return org.family == "sd2"


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft extract",
        description="A LoRA from the difference of a fine-tuned model and its base (kohya's "
        "extract_lora_from_models.py).",
    )
    parser.add_argument(
        "--model_org", required=True, help="The base model: a single file or a diffusers folder."
    )
    parser.add_argument("--model_tuned", required=True, help="The fine-tuned model; the LoRA is tuned - org.")
    parser.add_argument(
        "--save_to", required=True, help="The LoRA file to write (.safetensors, .ckpt or .pt)."
    )
    parser.add_argument("--dim", type=int, default=4, help="Rank of the LoRA [4].")
    parser.add_argument(
        "--conv_dim",
        type=int,
        help="Rank of convolutions larger than 1x1 (LoCon); not given: none extracted.",
    )
    parser.add_argument("--v2", action="store_true", help="Accepted; the family is read from the files.")
    parser.add_argument("--sdxl", action="store_true", help="Accepted; the family is read from the files.")
    parser.add_argument(
        "--v_parameterization",
        action="store_true",
        default=None,
        help="Record the LoRA as v-prediction (default: what the base model says; SD2: yes, as kohya).",
    )
    parser.add_argument(
        "--clamp_quantile",
        type=float,
        default=0.99,
        help="Clip both factors at this quantile of their entries; 1: no clip [0.99].",
    )
    parser.add_argument(
        "--min_diff",
        type=float,
        default=0.01,
        help="The text encoders are extracted only if a weight moved more than this [0.01].",
    )
    parser.add_argument(
        "--load_precision", choices=tuple(PRECISIONS), help="Round the weights to this before the difference."
    )
    parser.add_argument("--save_precision", choices=tuple(PRECISIONS), help="Precision of the file [float].")
    parser.add_argument("--device", help="Where to compute the SVDs: cpu (default) or cuda.")
    parser.add_argument(
        "--no_metadata", action="store_true", help="Leave out modelspec (the ss_ minimum stays)."
    )
    parser.add_argument(
        "--dynamic_method", choices=DYNAMIC_METHODS, help="Choose each module's rank, as resize."
    )
    parser.add_argument(
        "--dynamic_param", type=float, help="The target of --dynamic_method (e.g. sv_fro 0.9)."
    )
    parser.add_argument("--verbose", action="store_true", help="One line per module: rank and retained norm.")
    add_tokenizer_flags(parser)
    for flag in ("--load_original_model_to", "--load_tuned_model_to"):
        parser.add_argument(flag, help="Accepted from kohya_ss command lines; models load on the CPU.")
    add_overwrite_flag(parser)
    return parser


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    settings = ExtractSettings(
        args.dim,
        args.conv_dim,
        None if args.clamp_quantile == 1 else args.clamp_quantile,
        args.min_diff,
        args.dynamic_method,
        args.dynamic_param,
        PRECISIONS.get(args.load_precision),
        compute_device(args.device),
    )
    save_to = check_lora_output(
        args.save_to, args.overwrite, {"--model_org": args.model_org, "--model_tuned": args.model_tuned}
    )
    org, tuned = load_models(args.model_org, args.model_tuned, (args.tokenizer_path, args.tokenizer_2_path))
    check_family_flags(org.family, args.v2, args.sdxl, args.model_org)
    result = extract_lora(org, tuned, settings, echo)
    v_parameterization = recorded_prediction(args.v_parameterization, org)
    metadata = extract_metadata(settings, org.family, v_parameterization, save_to.stem, args.no_metadata)
    save_lora_file(result.tensors, save_to, metadata, PRECISIONS[args.save_precision or "float"])
    echo("\n".join(report(result, args.verbose)))
    echo(f"wrote {save_to}")
    return 0
