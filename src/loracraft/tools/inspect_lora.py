"""`loracraft inspect FILE...`: what a LoRA file holds, in words (or `--json` for machines).

    loracraft inspect my_lora.safetensors [other.safetensors ...] [-s] [--json] [--top_tags 20]

Replaces kohya's `networks/check_lora_weights.py FILE [-s]`, whose command line works here too: with
`-s/--show_all_keys` every tensor is listed as kohya lists it (key, shape, mean |w|, min |w|). Reads
kohya, LyCORIS, OneTrainer and diffusers/PEFT files (networks/key_styles.py). With several files, one
that cannot be read is named in one line and the others are still inspected; the exit status is then 2.
The report itself is tools/lora_report.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable

from loracraft.errors import UserError
from loracraft.networks.consumers import CONSUMERS
from loracraft.networks.key_styles import STYLE_NAMES
from loracraft.networks.lora_input import TYPE_NAMES
from loracraft.networks.training_record import TrainingRecord
from loracraft.tools.lora_report import LoRAReport, ModuleRow, inspect_lora_file
from loracraft.tools.tool_parser import ToolParser

UNDERFLOW_ADVICE = (
    "these modules change nothing; after fp16 training it usually means the gradients underflowed: train "
    "with bf16 or fp32 (--mixed_precision bf16) or a larger learning rate"
)
FLUSHED_ADVICE = (
    "values too small for the precision the file was trained or saved in were flushed to 0.0 (fp16 "
    "underflow); bf16 or fp32 keeps them"
)
NON_FINITE_ADVICE = "this file will render black/noise: do not use it"
ZERO_ALPHA_ADVICE = (
    "AUTOMATIC1111 and ComfyUI apply them at strength 0 (kohya and LyCORIS read alpha 0 as the rank)"
)
_SETTING_GROUPS = (
    ("run", ("steps", "max_train_steps", "epoch", "num_epochs", "batches_per_epoch", "train_images",
             "reg_images", "batch_size", "batch_size_per_device", "gradient_accumulation_steps", "seed")),
    ("optimizer", ("optimizer", "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps")),
    ("network", ("network_module", "network_dim", "network_alpha", "network_args", "network_dropout")),
    ("model", ("base_model", "base_model_hash", "base_model_sha256", "vae", "base_model_version", "resolution",
               "clip_skip", "max_token_length", "mixed_precision", "full_fp16", "noise_offset", "min_snr_gamma")),
    ("file", ("output_name", "training_comment", "started_at", "finished_at")),
)  # fmt: skip
_TIMES = ("started_at", "finished_at")
_LISTED = 8
"""Modules or tensors named in a text line before "and N more"."""


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft inspect",
        description="What a LoRA file holds: type, family, ranks, training settings, tags, norms, zeros and "
        "NaNs, hashes, and the programs that load it.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="LoRA files (.safetensors, .ckpt, .pt).")
    parser.add_argument(
        "-s", "--show_all_keys", action="store_true",
        help="Also list every tensor as kohya's check_lora_weights.py does: key, shape, mean |w|, min |w|.",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", help="One JSON document for machines, every figure in full."
    )
    parser.add_argument("--top_tags", type=int, default=20, help="Tags listed per file (all with --json).")
    return parser


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    documents, failed = [], False
    for index, path in enumerate(args.files):
        try:
            report = inspect_lora_file(path)
        except UserError as error:
            failed = True
            documents.append({"path": path, "error": str(error)})
            if not args.json:
                echo(f"error: {error}")
            continue
        documents.append(report_json(report, args.show_all_keys))
        if not args.json:
            if index:
                echo("")
            for line in report_lines(report, args.top_tags, args.show_all_keys):
                echo(line)
    if args.json:
        echo(json.dumps({"files": documents}, indent=2, ensure_ascii=False))
    return 2 if failed else 0


def report_lines(report: LoRAReport, top_tags: int = 20, show_all_keys: bool = False) -> list[str]:
    """The report in words, one line per fact."""
    lines = [
        report.path,
        f"  type: {_types(report)}",
        f"  family: {report.family.label}"
        + (f" (from {', '.join(report.family.evidence)})" if report.family.evidence else ""),
    ]
    if report.family.conflict:
        lines.append(f"  note: {report.family.conflict}")
    lines += [
        f"  key style: {STYLE_NAMES[report.key_style]}",
        f"  rank and alpha: {rank_summary(report.modules)}",
    ]
    lines += _block_table(report)
    lines += _training_lines(report.training, top_tags)
    lines += [f"  health: {line}" for line in health_lines(report)]
    lines.append("  hashes: " + "; ".join(_hash_text(check) for check in report.hashes))
    lines.append(f"  consumers: {consumers_text(report.consumers)}")
    if report.embeddings:
        lines.append(f"  bundled embeddings (OneTrainer's bundle_emb): {', '.join(report.embeddings)}")
    if show_all_keys:
        lines.append(
            f"  keys ({len(report.keys)}): key,shape,mean(|w|),min(|w|) as check_lora_weights.py prints them"
        )
        lines += [
            f"    {k.key},{str(k.shape).replace(', ', '-')},{k.mean_abs},{k.min_abs}" for k in report.keys
        ]
    return lines


def _types(report: LoRAReport) -> str:
    names = [f"{TYPE_NAMES.get(algo, 'unknown parts') if algo else 'unknown parts'} ({count} modules)"
             for algo, count in report.types.items()]  # fmt: skip
    return ", ".join(names) if names else "no modules"


def rank_summary(rows: Iterable[ModuleRow]) -> str:
    """ "rank 16 on all 264 modules, alpha 8 (scale 0.5)", or the modules per rank and per alpha."""
    rows = list(rows)
    ranks = Counter(row.rank for row in rows if row.rank is not None)
    alphas = Counter(row.alpha for row in rows if row.alpha is not None)
    if not ranks:
        return "no rank (the file's types have none)"
    if len(ranks) == 1 and len(alphas) == 1:
        (rank, count), alpha = next(iter(ranks.items())), next(iter(alphas))
        where = f"all {count} modules" if count == len(rows) else f"{count} of {len(rows)} modules"
        return f"rank {rank} on {where}, alpha {alpha:g} (scale {alpha / rank:g})"
    return f"ranks {_counted(ranks)}; alphas {_counted(alphas)}"


def _counted(counter: Counter) -> str:
    return ", ".join(f"{value:g} ({count} modules)" for value, count in counter.most_common())


def _block_table(report: LoRAReport) -> list[str]:
    kinds = {row.norm_of for row in report.modules}
    norm = (
        "change at strength 1" if kinds == {"delta"} else "change, or tensors where it needs the base weight"
    )
    lines = [f"  blocks (norm: Frobenius norm of the block's {norm}):",
             f"    {'block':<14}{'modules':>8}  {'rank':<12}{'alpha':<12}{'norm':>10}  unchanged"]  # fmt: skip
    for block in report.blocks:
        ranks = "/".join(f"{rank:g}" for rank in block.ranks) or "-"
        alphas = "/".join(f"{alpha:g}" for alpha in block.alphas) or "-"
        row = f"    {block.block:<14}{block.modules:>8}  {ranks:<12}{alphas:<12}{block.norm:>10.4g}  {block.unchanged or ''}"
        lines.append(row.rstrip())
    return lines


def _training_lines(training: TrainingRecord, top_tags: int) -> list[str]:
    if not training.settings and not training.folders and not training.tags:
        return ["  training: the file records no training settings (no ss_* metadata)"]
    lines = []
    for label, names in _SETTING_GROUPS:
        values = [
            f"{name} {_setting_text(name, training.settings[name])}"
            for name in names
            if name in training.settings
        ]
        if values:
            lines.append(f"  {label}: {', '.join(values)}")
    if training.folders:
        folders = [
            f"{folder.name} ({'regularization, ' if folder.regularization else ''}{folder.repeats} repeats x "
            f"{folder.images} images)"
            for folder in training.folders
        ]
        lines.append(f"  dataset folders: {'; '.join(folders)}")
    if training.buckets:
        buckets = [f"{b.width}x{b.height}: {b.count}" for b in training.buckets]
        lines.append(f"  buckets (samples per resolution): {', '.join(buckets)}")
    if training.tags:
        shown = training.tags[:top_tags]
        lines.append(
            f"  tags ({len(shown)} of {len(training.tags)}, with counts): "
            + ", ".join(f"{tag} {count}" for tag, count in shown)
        )
    return lines


def _setting_text(name: str, value: object) -> str:
    if name in _TIMES and isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")
    if name == "resolution" and isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def health_lines(report: LoRAReport) -> list[str]:
    """What the numbers say is wrong (or by design), one finding per line."""
    lines = []
    faults = [item for item in report.unchanged if item.by_design is None]
    if faults:
        why = Counter(item.why for item in faults).most_common(1)[0][0]
        what = (
            "every module changes nothing"
            if len(faults) == len(report.modules)
            else f"{len(faults)} modules change nothing"
        )
        lines.append(f"{what} ({why}): {_listed(item.module for item in faults)}; {UNDERFLOW_ADVICE}")
    by_design: dict[str, list[str]] = {}
    for item in report.unchanged:
        if item.by_design is not None:
            by_design.setdefault(item.by_design, []).append(item.module)
    for why, names in by_design.items():
        lines.append(
            f"{len(names)} modules change nothing by design ({why}, so they got no gradient): {_listed(names)}"
        )
    if report.zero_alpha:
        lines.append(
            f"{len(report.zero_alpha)} modules have alpha 0: {_listed(report.zero_alpha)}; {ZERO_ALPHA_ADVICE}"
        )
    if report.zero_values:
        listed = _listed(f"{item.key} {item.fraction:.1%}" for item in report.zero_values)
        lines.append(f"{len(report.zero_values)} tensors have values exactly 0.0: {listed}; {FLUSHED_ADVICE}")
    if report.non_finite:
        listed = _listed(f"{item.key} ({item.nan} NaN, {item.inf} Inf)" for item in report.non_finite)
        lines.append(f"{len(report.non_finite)} tensors hold NaN or Inf: {listed}; {NON_FINITE_ADVICE}")
    return lines or ["every module changes its layer; no NaN or Inf"]


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _hash_text(check) -> str:
    return f"{check.key} {check.status}" + (f" ({check.note})" if check.note else "")


def consumers_text(verdicts: dict[str, str | None]) -> str:
    loading = [name for name in CONSUMERS if verdicts[name] is None]
    others = [f"{name} {verdicts[name]}" for name in CONSUMERS if verdicts[name] is not None]
    line = f"loads as trained in: {', '.join(loading) if loading else 'none of the common programs'}"
    return f"{line}; not in: {'; '.join(others)}" if others else line


def report_json(report: LoRAReport, with_keys: bool = False) -> dict:
    """The report as one JSON-ready dict with stable keys, every figure in full."""
    document = {
        "path": report.path,
        "error": None,
        "key_style": report.key_style,
        "types": {algo or "unknown": count for algo, count in report.types.items()},
        "family": report.family.family,
        "family_name": report.family.label,
        "family_evidence": list(report.family.evidence),
        "family_conflict": report.family.conflict,
        "modules": [{**vars(row), "norm": _finite(row.norm)} for row in report.modules],
        "blocks": [
            {
                **vars(block),
                "ranks": _keyed(block.ranks),
                "alphas": _keyed(block.alphas),
                "norm": _finite(block.norm),
            }
            for block in report.blocks
        ],
        "training": report.training.settings,
        "dataset": {
            "folders": [vars(folder) for folder in report.training.folders],
            "tags": [{"tag": tag, "count": count} for tag, count in report.training.tags],
            "tags_by_folder": report.training.tags_by_folder,
            "buckets": [vars(bucket) for bucket in report.training.buckets],
        },
        "health": {
            "unchanged": [vars(item) for item in report.unchanged],
            "zero_alpha": list(report.zero_alpha),
            "zero_values": [{**vars(item), "fraction": item.fraction} for item in report.zero_values],
            "non_finite": [vars(item) for item in report.non_finite],
        },
        "hashes": {
            check.key: {k: v for k, v in vars(check).items() if k != "key"} for check in report.hashes
        },
        "consumers": report.consumers,
        "bundled_embeddings": list(report.embeddings),
        "metadata": report.metadata,
    }
    if with_keys:
        document["keys"] = [{**vars(stats), "shape": list(stats.shape)} for stats in report.keys]
    return document


def _finite(value: float) -> float | None:
    """JSON has no NaN or Inf: a module holding them has no norm (health.non_finite names it)."""
    return value if math.isfinite(value) else None


def _keyed(counts: dict) -> dict[str, int]:
    return {f"{value:g}": count for value, count in counts.items()}
