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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loracraft.networks.network_spec import NetworkSpec

CONSUMERS = ("AUTOMATIC1111", "ComfyUI", "Forge", "diffusers")
_FILE_PARTS = {  # what the file holds, as consumers recognise it
    "lora": "lora", "locon": "lora", "dylora": "lora", "loha": "loha", "lokr": "lokr", "ia3": "ia3",
    "glora": "glora", "diag-oft": "oft", "boft": "oft", "full": "full",
}  # fmt: skip


def consumer_verdicts(spec: NetworkSpec, family: str) -> dict[str, str | None]:
    """Consumer -> None when it applies every key of the file as trained, else why not (a short clause)."""
    return {consumer: _verdict(consumer, spec, family) for consumer in CONSUMERS}


def _verdict(consumer: str, spec: NetworkSpec, family: str) -> str | None:
    if spec.module == "networks.oft":
        if consumer == "AUTOMATIC1111" and family == "sdxl":
            return None
        return "does not find kohya's OFT names" + (" on SD1/SD2" if consumer == "AUTOMATIC1111" else "")
    parts = _FILE_PARTS[spec.algo]
    if consumer == "diffusers":
        return _diffusers(spec, parts)
    if parts == "ia3":
        if consumer != "AUTOMATIC1111":
            return "has no (IA)³"
        return "applies (IA)³ to Linear layers only" if _ia3_has_convolutions(spec, family) else None
    if parts == "glora" and consumer == "AUTOMATIC1111":
        return "reads only the old GLoRA layout"
    if parts == "oft" and consumer == "Forge":
        return "has no OFT"
    if parts == "oft" and consumer == "ComfyUI" and spec.constraint:
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
