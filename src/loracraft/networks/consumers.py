"""Which programs apply a run's network file as it trained: said once when the run starts, so nobody
trains an hour for a file their UI cannot read.

The verdicts come from each program's loader, read for the key-resolution oracles
(tests/consumer_oracles; reference/lora-format.md §3-§4) and measured by the numeric consumer tests
(tests/interop/test_consumer_numeric.py), which also check this table:
- AUTOMATIC1111 has every algorithm, but applies (IA)³ to Linear layers only (its reshape does not fit a
  convolution's), knows only the old GLoRA layout, and finds kohya's OFT names (oft_unet_) only on SDXL.
- ComfyUI has no (IA)³, no kohya OFT names, and caps a Diag-OFT/BOFT constraint at alpha where LyCORIS
  trains alpha x width.
- Forge is ComfyUI's loader without OFT/BOFT.
- diffusers converts kohya LoRA/LoCon files (lora_down/lora_up/alpha) on kohya's own targets only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loracraft.networks.network_spec import NetworkSpec

CONSUMERS = ("AUTOMATIC1111", "ComfyUI", "Forge", "diffusers")
_FILE_PARTS = {  # what the file holds, as consumers recognise it
    "lora": "lora", "locon": "lora", "dylora": "lora", "loha": "loha", "lokr": "lokr", "ia3": "ia3",
    "glora": "glora", "diag-oft": "oft", "boft": "oft", "full": "full", "norm": "norm",
}  # fmt: skip


def consumer_verdicts(spec: NetworkSpec, family: str) -> dict[str, str | None]:
    """Consumer -> None when it applies every key of the file as trained, else why not (a short clause)."""
    return {consumer: _verdict(consumer, spec, family) for consumer in CONSUMERS}


def _verdict(consumer: str, spec: NetworkSpec, family: str) -> str | None:
    if spec.module == "networks.oft":
        return _kohya_oft(consumer, family)
    parts = _FILE_PARTS[spec.algo]
    if consumer == "diffusers":
        return _diffusers(spec, parts)
    return _parts_verdict(consumer, parts, _ia3_has_convolutions(spec, family), bool(spec.constraint))


def _kohya_oft(consumer: str, family: str | None) -> str | None:
    if consumer == "AUTOMATIC1111" and family == "sdxl":
        return None
    return "does not find kohya's OFT names" + (" on SD1/SD2" if consumer == "AUTOMATIC1111" else "")


def _parts_verdict(consumer: str, parts: str, ia3_on_convolutions: bool, oft_constraint: bool) -> str | None:
    """A1111's, ComfyUI's or Forge's verdict on modules of one kind of parts (_FILE_PARTS' values)."""
    if parts == "ia3":
        if consumer != "AUTOMATIC1111":
            return "has no (IA)³"
        return "applies (IA)³ to Linear layers only" if ia3_on_convolutions else None
    if parts == "glora" and consumer == "AUTOMATIC1111":
        return "reads only the old GLoRA layout"
    if parts == "oft" and consumer == "Forge":
        return "has no OFT"
    if parts == "oft" and consumer == "ComfyUI" and oft_constraint:
        return "caps the OFT constraint at alpha (trained: alpha x width)"
    return None


def _diffusers(spec: NetworkSpec, parts: str) -> str | None:
    if parts != "lora":
        return f"has no {spec.algo}"
    if (
        spec.use_tucker
        or spec.dora_wd
        or spec.train_norm
        or spec.preset != "full"
        or spec.module == "lycoris.kohya"
    ):
        return "converts kohya LoRA/LoCon on kohya's own targets only"
    return None


def _ia3_has_convolutions(spec: NetworkSpec, family: str) -> bool:
    """SD1's transformer proj_in/proj_out are 1x1 convolutions (SD2's and SDXL's are Linear); LyCORIS'
    presets with convolutions add the ResNets'."""
    return family == "sd1" or spec.preset in ("full", "unet-only", "unet-convblock-only")


def consumers_line(spec: NetworkSpec, family: str) -> str:
    """One line for the run's start: the programs that apply the file as trained, then the others and why."""
    verdicts = consumer_verdicts(spec, family)
    loading = [name for name, why in verdicts.items() if why is None]
    others = [f"{name} {why}" for name, why in verdicts.items() if why is not None]
    line = (
        f"this file loads as trained in: {', '.join(loading) if loading else 'none of the common programs'}"
    )
    return f"{line}; not in: {'; '.join(others)}" if others else line


_KEY_STYLE_READERS = {  # key_styles.STYLE_NAMES -> the consumers that find the modules under those names
    "kohya": CONSUMERS, "kohya-diffusers-sdxl": CONSUMERS,
    "peft": ("ComfyUI", "Forge", "diffusers"), "diffusers-old": ("ComfyUI", "Forge", "diffusers"),
}  # fmt: skip


@dataclass(frozen=True)
class FileFacts:
    """What a LoRA file holds, as the consumers' rules read it (tools/lora_report.py gathers them)."""

    types: frozenset[str]
    """Its modules' types (lora_input.TYPE_NAMES' keys)."""
    family: str | None
    key_style: str
    """key_styles.STYLE_NAMES' key."""
    tucker: bool = False
    dora: bool = False
    dora_on_output: bool = False
    """DoRA's magnitude per output row (LyCORIS' default, PEFT's), which A1111 reads per input column."""
    oft_constraint: bool = False
    ia3_on_convolutions: bool = False
    beyond_kohya_targets: bool = False
    """U-Net modules outside kohya's blocks (conv_in, time embedding...), which diffusers does not convert."""
    a1111_unnamed: bool = False
    """SDXL modules under diffusers names A1111 has no rule for (add_embedding, the first up-sampler)."""
    unknown_parts: str | None = None
    """A module whose parts are of no type ("NAME (parts)"): A1111 refuses the whole file for it, the others
    leave it out."""


def file_verdicts(facts: FileFacts) -> dict[str, str | None]:
    """Consumer -> None when it applies every module of a file as trained, else why not: the rules of
    consumer_verdicts, read from what the file holds instead of the run's settings."""
    return {consumer: _file_verdict(consumer, facts) for consumer in CONSUMERS}


def _file_verdict(consumer: str, facts: FileFacts) -> str | None:
    if consumer not in _KEY_STYLE_READERS.get(facts.key_style, ()):
        return "does not read this file's key names"
    if facts.unknown_parts:
        return f"knows no type for {facts.unknown_parts}"
    for algo in sorted(facts.types):
        if algo == "kohya-oft":
            why = _kohya_oft(consumer, facts.family)
        elif consumer == "diffusers":
            why = None if algo == "lora" else f"has no {algo}"
        else:
            why = _parts_verdict(consumer, _FILE_PARTS[algo], facts.ia3_on_convolutions, facts.oft_constraint)
        if why is not None:
            return why
    return _file_detail_verdict(consumer, facts)


def _file_detail_verdict(consumer: str, facts: FileFacts) -> str | None:
    diffusers_names = facts.key_style in ("peft", "diffusers-old")  # diffusers loads them as they are
    if (
        consumer == "diffusers"
        and not diffusers_names
        and (facts.tucker or facts.dora or facts.beyond_kohya_targets)
    ):
        return "converts kohya LoRA/LoCon on kohya's own targets only"
    if consumer == "AUTOMATIC1111" and facts.a1111_unnamed:
        return "skips SDXL's add_embedding and first up-sampler under diffusers names"
    if consumer == "AUTOMATIC1111" and facts.dora_on_output:
        return "reads DoRA's magnitude per input column (this file's is per output row)"
    if consumer in ("ComfyUI", "Forge") and facts.dora and facts.key_style == "peft":
        return "ignores DoRA's magnitude under PEFT's name (lora_magnitude_vector)"
    if consumer in ("ComfyUI", "Forge") and facts.dora_on_output:
        return "normalises DoRA by the base weight where training normalised the changed one"
    return None
