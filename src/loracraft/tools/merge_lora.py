"""`loracraft merge`: LoRAs into a checkpoint, or LoRAs into one LoRA (kohya's networks/merge_lora.py,
sdxl_merge_lora.py and svd_merge_lora.py in one command, with their flags).

    loracraft merge --sd_model base.safetensors --models a.safetensors b.safetensors --ratios 0.8 0.5 \\
        --save_to merged.safetensors          # a single file in the original layout (A1111, ComfyUI)
    loracraft merge --sd_model base.safetensors --models a.safetensors --save_to merged-folder
                                              # a path with no suffix: a diffusers folder
    loracraft merge --models a.safetensors b.safetensors --save_to ab.safetensors [--new_rank 16]
                                              # one LoRA: the exact sum, factored again by SVD
    loracraft merge --models a.safetensors b.safetensors --save_to ab.safetensors --concat

Into a checkpoint (networks/checkpoint_merge.py): every type whose change is a weight delta (LoRA/LoCon,
LoHa, LoKr, IA3, GLoRA, Diag-OFT, BOFT, full, norms, DoRA, kohya's OFT), the family detected (--v2 is
accepted; one that contradicts the model is refused). A single file in, a single file out: only the
tensors the LoRAs name change, everything else (EMA weights included) is kept byte for byte with its
dtype; kohya writes the whole model at --save_precision (default float32) instead. A diffusers folder in
is converted to the original layout; a diffusers folder out is saved from the loaded model.

LoRAs into one LoRA (networks/lora_sum.py): the exact sum by default, `--concat` for kohya's
concatenation made exact; --new_rank defaults to the largest input rank (kohya's svd_merge_lora: 4).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from loracraft.atomic import write_atomic
from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle
from loracraft.models.checkpoint_file import read_checkpoint, write_checkpoint
from loracraft.models.config_inference import infer_config
from loracraft.models.config_metadata import models_config_metadata
from loracraft.models.diffusers_save import save_bundle_folder
from loracraft.models.family import FAMILY_NAMES, detect_family
from loracraft.models.ldm_convert import UNET_PREFIX, to_ldm_checkpoint
from loracraft.models.ldm_keys import ldm_weights
from loracraft.models.loading import load_model_bundle
from loracraft.models.prediction import prediction_of_file
from loracraft.networks.checkpoint_merge import CheckpointWeights, LoRAInput, ModuleWeights, merge_into
from loracraft.networks.kohya_names import unet_namer
from loracraft.networks.lora_family import SD, file_family
from loracraft.networks.lora_file import read_lora_metadata, save_lora_file
from loracraft.networks.lora_input import read_modules
from loracraft.networks.lora_sum import RankChoice, SummedLoRA, concat_loras, largest_ranks, sum_loras
from loracraft.networks.low_rank import DYNAMIC_METHODS, retention_summary
from loracraft.networks.merge_into_base import base_modules
from loracraft.networks.metadata import base_model_version, checkpoint_modelspec, lora_modelspec
from loracraft.networks.target_selection import is_norm
from loracraft.tools.tool_parser import (
    PRECISIONS,
    ToolParser,
    add_overwrite_flag,
    add_tokenizer_flags,
    check_dynamic,
    check_lora_output,
    check_new_output,
    compute_device,
)
from loracraft.training.saving import now

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
SUM_ONLY_FLAGS = ("concat", "shuffle", "new_rank", "new_conv_rank", "dynamic_method")


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft merge",
        description="Merge LoRAs into a checkpoint (--sd_model), or into one LoRA (kohya's merge_lora.py, "
        "sdxl_merge_lora.py and svd_merge_lora.py).",
    )
    parser.add_argument(
        "--sd_model",
        help="The checkpoint (.safetensors/.ckpt or a diffusers folder) to merge into; without it the LoRAs "
        "are merged into one LoRA.",
    )
    parser.add_argument("--models", nargs="+", required=True, help="The LoRA files to merge, in order.")
    parser.add_argument(
        "--ratios", nargs="+", type=float, help="One strength per model, in order [1.0 each]."
    )
    parser.add_argument(
        "--save_to",
        required=True,
        help="The output: a .safetensors/.ckpt file; with --sd_model a path without suffix is a diffusers folder.",
    )
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="float",
        help="Precision of the arithmetic merging into a checkpoint, and the default --save_precision of a "
        "merged LoRA (a LoRA sum is always computed in float32) [float].",
    )
    parser.add_argument(
        "--save_precision",
        choices=tuple(PRECISIONS),
        help="Precision of the output; default: a checkpoint keeps each tensor's own, a LoRA is written in "
        "--precision.",
    )
    parser.add_argument(
        "--v2", action="store_true", help="Accepted from kohya command lines: the model family is detected."
    )
    parser.add_argument(
        "--no_metadata",
        action="store_true",
        help="Write no modelspec metadata (a LoRA keeps the minimum ss_* keys).",
    )
    parser.add_argument(
        "--concat",
        action="store_true",
        help="LoRAs into one LoRA by joining their factors (rank = the sum of the ranks), exact; without it "
        "the sum is factored again by SVD.",
    )
    parser.add_argument(
        "--shuffle", action="store_true", help="With --concat: permute the joined ranks (kohya's)."
    )
    parser.add_argument(
        "--new_rank", type=int, help="Rank of the merged LoRA [the largest input rank]; a dynamic rank's cap."
    )
    parser.add_argument(
        "--new_conv_rank",
        type=int,
        help="Rank of its 3x3 convolutions [--new_rank when given, else the largest input convolution rank].",
    )
    parser.add_argument(
        "--dynamic_method",
        choices=DYNAMIC_METHODS,
        help="Choose each merged module's rank as resize does: sv_ratio, sv_fro or sv_cumulative.",
    )
    parser.add_argument(
        "--dynamic_param", type=float, help="The target of --dynamic_method (e.g. sv_fro 0.9)."
    )
    parser.add_argument("--device", help="Where to compute: cpu (default) or cuda.")
    parser.add_argument("--verbose", action="store_true", help="One line per merged LoRA module.")
    add_tokenizer_flags(parser)
    add_overwrite_flag(parser)
    return parser


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    ratios = _ratios(args.models, args.ratios)
    device = compute_device(args.device)
    if args.sd_model is not None:
        _refuse_sum_flags(args)
        save_to = _checkpoint_output(args.save_to, args.overwrite, args.sd_model)
        inputs = read_inputs(args.models, ratios)
        merge_checkpoint(args.sd_model, inputs, save_to, _options(args, device), echo)
    else:
        if args.shuffle and not args.concat:
            raise UserError(
                "--shuffle permutes the ranks --concat joins: add --concat or leave --shuffle out"
            )
        check_dynamic(args.dynamic_method, args.dynamic_param)
        for model in args.models:
            save_to = check_lora_output(args.save_to, args.overwrite, {"--models": model})
        inputs = read_inputs(args.models, ratios)
        merged, metadata = merge_loras(inputs, _rank_choice(args, inputs), args, device)
        echo("\n".join(report(merged, args.verbose)))
        save_lora_file(merged.tensors, save_to, metadata, PRECISIONS[args.save_precision or args.precision])
    echo(f"wrote {save_to}")
    return 0


# Inputs -------------------------------------------------------------------------------------------------


def _ratios(models: Sequence[str], ratios: Sequence[float] | None) -> list[float]:
    if ratios is None:
        return [1.0] * len(models)
    if len(ratios) != len(models):
        raise UserError(
            f"--ratios: {len(ratios)} values for {len(models)} --models; give one ratio per model, or none "
            "for 1.0 each"
        )
    return list(ratios)


def read_inputs(paths: Sequence[str], ratios: Sequence[float]) -> list[LoRAInput]:
    """Every --models file, read (one line for a file that is no LoRA, truncated or a checkpoint)."""
    return [
        LoRAInput(path, ratio, read_modules(path, "models"), read_lora_metadata(path))
        for path, ratio in zip(paths, ratios, strict=True)
    ]


def _title(path: str, metadata: Mapping[str, str]) -> str:
    """kohya's build_merged_from: a file's modelspec title, else its name without suffix."""
    return metadata.get("modelspec.title") or Path(path).stem


# Into a checkpoint --------------------------------------------------------------------------------------


def _refuse_sum_flags(args: argparse.Namespace) -> None:
    given = [f"--{name}" for name in SUM_ONLY_FLAGS if getattr(args, name) not in (None, False)]
    if given:
        raise UserError(
            f"{given[0]} shapes a merged LoRA; with --sd_model the LoRAs go into the checkpoint: leave it out"
        )


def _checkpoint_output(save_to: str, overwrite: bool, sd_model: str) -> Path:
    path = check_new_output(save_to, overwrite)
    if path.suffix and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise UserError(
            f"--save_to {path}: use a .safetensors or .ckpt file name, or a path without suffix for a diffusers folder"
        )
    if Path(sd_model).exists() and path.exists() and path.samefile(sd_model):
        raise UserError(f"--save_to {path} is the --sd_model; write the merged model to a new path")
    return path


@dataclass(frozen=True)
class CheckpointOptions:
    """How a checkpoint merge computes and writes."""

    dtype: torch.dtype
    """The arithmetic's (--precision)."""
    save_dtype: torch.dtype | None
    """--save_precision; None: each tensor keeps its own (a diffusers folder: `dtype`)."""
    device: torch.device
    v2: bool
    metadata: bool
    """kohya's modelspec keys (not with --no_metadata)."""
    tokenizers: tuple[str | None, str | None] = (None, None)
    """--tokenizer_path, --tokenizer_2_path: a single file saved as a diffusers folder needs them."""


def _options(args: argparse.Namespace, device: torch.device) -> CheckpointOptions:
    save_dtype = PRECISIONS[args.save_precision] if args.save_precision else None
    return CheckpointOptions(
        PRECISIONS[args.precision],
        save_dtype,
        device,
        args.v2,
        not args.no_metadata,
        (args.tokenizer_path, args.tokenizer_2_path),
    )


def merge_checkpoint(
    sd_model: str,
    inputs: Sequence[LoRAInput],
    save_to: Path,
    options: CheckpointOptions,
    echo: Callable[[str], None],
) -> None:
    """Merge `inputs` into `sd_model` and write the result to `save_to` (a file, or a diffusers folder for
    a path without suffix)."""
    base = Path(sd_model)
    if not base.exists():
        raise UserError(f"--sd_model {base}: no such file or folder")
    if not save_to.suffix:
        _merge_to_folder(base, inputs, save_to, options, echo)
    elif base.is_dir():
        _merge_folder_to_file(base, inputs, save_to, options, echo)
    else:
        _merge_file_to_file(base, inputs, save_to, options, echo)


def _merge_file_to_file(
    base: Path,
    inputs: Sequence[LoRAInput],
    save_to: Path,
    options: CheckpointOptions,
    echo: Callable[[str], None],
) -> None:
    checkpoint = read_checkpoint(base)
    family = detect_family(checkpoint.tensors, base)
    _check_v2(options.v2, family)
    unet = {
        k.removeprefix(UNET_PREFIX): v for k, v in checkpoint.tensors.items() if k.startswith(UNET_PREFIX)
    }
    unet_config = infer_config("unet", unet, family, checkpoint.metadata, base)
    weights = _checkpoint_weights(checkpoint.tensors, unet_config, family, options)
    merge_into(weights, inputs, echo)
    v = prediction_of_file(checkpoint).v_parameterization
    metadata = {**checkpoint.metadata, **_checkpoint_spec(family, v, base, inputs, save_to, options)}
    _write_checkpoint_file(save_to, weights.merged(options.save_dtype), metadata)
    echo(f"{len(weights.working)} tensors of {len(checkpoint.tensors)} changed")


def _loaded_base(base: Path, options: CheckpointOptions) -> ModelBundle:
    """The base model loaded whole (a diffusers folder in, or a folder out), --v2 checked against it."""
    bundle = load_model_bundle(
        base, tokenizer_path=options.tokenizers[0], tokenizer_2_path=options.tokenizers[1]
    )
    _check_v2(options.v2, bundle.family)
    return bundle


def _merge_folder_to_file(
    base: Path,
    inputs: Sequence[LoRAInput],
    save_to: Path,
    options: CheckpointOptions,
    echo: Callable[[str], None],
) -> None:
    bundle = _loaded_base(base, options)
    tensors = to_ldm_checkpoint(
        bundle.unet, bundle.vae, bundle.text_encoder, bundle.text_encoder_2, bundle.family
    )
    weights = _checkpoint_weights(tensors, bundle.unet.config, bundle.family, options)
    merge_into(weights, inputs, echo)
    spec = _checkpoint_spec(
        bundle.family, bundle.prediction.v_parameterization, base, inputs, save_to, options
    )
    _write_checkpoint_file(
        save_to,
        weights.merged(options.save_dtype),
        models_config_metadata(bundle.unet, bundle.vae, bundle.text_encoders) | spec,
    )


def _merge_to_folder(
    base: Path,
    inputs: Sequence[LoRAInput],
    save_to: Path,
    options: CheckpointOptions,
    echo: Callable[[str], None],
) -> None:
    bundle = _loaded_base(base, options)
    for model in (bundle.unet, *bundle.text_encoders):
        model.to(device=options.device, dtype=options.dtype)
    merge_into(ModuleWeights(_model_layers(bundle), bundle.family), inputs, echo)
    for model in (bundle.unet, *bundle.text_encoders):
        model.to("cpu")
    save_bundle_folder(bundle, save_to, options.save_dtype or options.dtype)


def _checkpoint_weights(
    tensors: Mapping[str, torch.Tensor], unet_config: Mapping, family: str, options: CheckpointOptions
) -> CheckpointWeights:
    locations = ldm_weights(tensors.keys(), unet_config, family)
    return CheckpointWeights(tensors, locations, family, options.dtype, options.device)


def _model_layers(bundle) -> dict[str, torch.nn.Module]:
    """kohya's targets and the U-Net's norm layers (LyCORIS' train_norm), by kohya name."""
    namer = unet_namer(bundle.family, bundle.unet.config)
    norms = {namer(path): module for path, module in bundle.unet.named_modules() if is_norm(module)}
    return base_modules(bundle.unet, bundle.text_encoders, bundle.family) | norms


def _check_v2(v2: bool, family: str) -> None:
    if v2 and family != "sd2":
        raise UserError(f"--v2: the --sd_model is an {FAMILY_NAMES[family]} model (detected); leave --v2 out")


def _checkpoint_spec(
    family: str,
    v: bool | None,
    base: Path,
    inputs: Sequence[LoRAInput],
    save_to: Path,
    options: CheckpointOptions,
) -> dict[str, str]:
    """kohya's modelspec for the merged model, with merged_from; the prediction type only where known
    (an SD2 model's is not always)."""
    if not options.metadata:
        return {}
    spec = checkpoint_modelspec(family, bool(v), save_to.stem, now())
    if v is None and family == "sd2":
        del spec["modelspec.prediction_type"]
    base_metadata = read_lora_metadata(base) if base.is_file() else {}
    titles = [_title(str(base), base_metadata)] + [_title(lora.path, lora.metadata) for lora in inputs]
    return spec | {"modelspec.merged_from": ", ".join(titles)}


def _write_checkpoint_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    if path.suffix.lower() == ".ckpt":
        write_atomic(path, lambda tmp: torch.save({"state_dict": tensors}, tmp))
    else:
        write_checkpoint(path, tensors, metadata)


# Into one LoRA ------------------------------------------------------------------------------------------


def _rank_choice(args: argparse.Namespace, inputs: Sequence[LoRAInput]) -> RankChoice:
    for flag, value in (("--new_rank", args.new_rank), ("--new_conv_rank", args.new_conv_rank)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.concat and (args.new_rank or args.new_conv_rank or args.dynamic_method):
        raise UserError(
            "--concat keeps every rank (their sum); leave --new_rank, --new_conv_rank and --dynamic_method out"
        )
    largest, largest_conv = largest_ranks(inputs)
    rank = args.new_rank or largest
    return RankChoice(
        rank,
        args.new_conv_rank or args.new_rank or largest_conv or rank,  # kohya: --new_rank when given
        args.dynamic_method,
        args.dynamic_param,
    )


def merge_loras(
    inputs: Sequence[LoRAInput], ranks: RankChoice, args: argparse.Namespace, device: torch.device
) -> tuple[SummedLoRA, dict[str, str]]:
    """The merged LoRA and its metadata."""
    family = _common_family(inputs, args.v2)
    merged = concat_loras(inputs, args.shuffle) if args.concat else sum_loras(inputs, ranks, device)
    v = any(lora.metadata.get("modelspec.prediction_type") == "v" for lora in inputs)
    metadata = _lora_metadata(merged, inputs, family, v)
    if not args.no_metadata:
        titles = ", ".join(_title(lora.path, lora.metadata) for lora in inputs)
        metadata |= lora_modelspec(family, v, Path(args.save_to).stem, now()) | {
            "modelspec.merged_from": titles
        }
    return merged, metadata


def _common_family(inputs: Sequence[LoRAInput], v2: bool) -> str:
    """The one family of every file (SD1 where SD1 and SD2 cannot be told apart, as kohya assumes)."""
    known: list[tuple[str, str]] = []
    for lora in inputs:
        family = file_family(lora.modules, lora.metadata).family
        if family is None:
            continue
        for other, path in known:
            if not _compatible(family, other):
                raise UserError(
                    f"--models {lora.path} is a LoRA for {_label(family)} models, but {path} is for {_label(other)}: "
                    "merge LoRAs made for one model family"
                )
        known.append((family, lora.path))
    families = {family for family, _ in known} - {SD}
    family = families.pop() if families else ("sd2" if v2 else "sd1")
    if v2 and family != "sd2":
        raise UserError(f"--v2: the --models are LoRAs for {FAMILY_NAMES[family]} models; leave --v2 out")
    return family


def _compatible(one: str, other: str) -> bool:
    return one == other or (SD in (one, other) and "sdxl" not in (one, other))


def _label(family: str) -> str:
    return FAMILY_NAMES.get(family, "SD1.x/SD2.x")


def _lora_metadata(merged: SummedLoRA, inputs: Sequence[LoRAInput], family: str, v: bool) -> dict[str, str]:
    """kohya's minimum metadata (build_minimum_network_metadata): module, dim and alpha ("Dynamic" where
    the ranks differ; alpha = rank), the base model version, conv_dim/conv_alpha as network args."""
    ranks, conv_ranks = merged.ranks(conv=False), merged.ranks(conv=True)
    dim = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": dim,
        "ss_network_alpha": dim,
        "ss_base_model_version": base_model_version(family, v),
    }
    if family == "sd2":
        metadata["ss_v2"] = "True"
    if conv_ranks:
        conv = str(conv_ranks.pop()) if len(conv_ranks) == 1 else "Dynamic"
        metadata["ss_network_args"] = json.dumps({"conv_dim": conv, "conv_alpha": conv})
    return metadata


def report(merged: SummedLoRA, verbose: bool) -> list[str]:
    """Per module (with --verbose) the rank and what it keeps of the sum; the summary of the retained norms."""
    lines = []
    if verbose:
        for module in merged.modules:
            kept = "exact" if module.factored is None else f"fro retained {module.factored.fro_retained:.1%}"
            lines.append(f"{module.name:75} | rank {module.rank} | {kept}")
    factored = [(module.name, module.factored) for module in merged.modules if module.factored is not None]
    lines.append(f"{len(merged.modules)} modules merged" + ("" if factored else " exactly (--concat)"))
    lines.extend(retention_summary(factored, "the merged modules"))
    return lines
