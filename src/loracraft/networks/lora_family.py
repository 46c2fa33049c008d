"""Which model family a LoRA file is for, from its kohya module names, its shapes and its metadata.

Names: kohya names SD1/SD2 U-Net modules by their diffusers path and SDXL ones by their LDM path, and
writes `lora_te1_`/`lora_te2_` for SDXL's two text encoders, `lora_te_` for SD1/SD2's one
(reference/lora-format.md §6). Other writers put diffusers U-Net names on SDXL (OneTrainer's legacy
output) or LDM names on SD1, so the U-Net's layout decides where the prefix does not: SD1/SD2 have
attention in their first down block and none in their first up block, and a fourth block; SDXL the
reverse, three blocks and an `add_embedding`.

Shapes tell SD1 from SD2, which share every name: SD1's transformer proj_in/proj_out are 1x1
convolutions (a 4-D lora_down), SD2's Linear layers (2-D); the real models' cross-attention width is 768
(SD1), 1024 (SD2) or 2048 (SDXL), their text encoders 768 (SD1's CLIP ViT-L) or 1024 wide (SD2's
OpenCLIP ViT-H, 23 layers). Metadata: kohya's `ss_base_model_version` (sd_v1, sd_v2, sdxl_base_v1-0),
`ss_v2`, and modelspec's `modelspec.architecture` (stable-diffusion-v1, -v2-..., -xl-v1-base, /lora).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from loracraft.models.family import FAMILY_NAMES

SD = "sd1/sd2"
"""SD1 or SD2, undecided: their names are the same and nothing in the file tells them apart."""
FAMILY_LABELS = {**FAMILY_NAMES, SD: "SD1.x/SD2.x"}

_SDXL_PREFIXES = ("lora_te2_",)
_SD_PREFIXES = ("lora_te_",)
_LDM_UNET = re.compile(
    r"^(?:lora|oft)_unet_(input_blocks|middle_block|output_blocks|label_emb|time_embed|out)_"
)
# LDM blocks only SD1/SD2 have: attention in input blocks 1 and 2, the fourth down block's ResNets.
_SD_ONLY_LDM = re.compile(r"^(?:lora|oft)_unet_input_blocks_(?:[12]_1|1[01])_")
_SD_ONLY_DIFFUSERS = re.compile(r"^(?:lora|oft)_unet_(?:down_blocks_0_attentions|(?:down|up)_blocks_3)_")
_SDXL_ONLY_DIFFUSERS = re.compile(r"^(?:lora|oft)_unet_(?:up_blocks_0_attentions|add_embedding)_")
_CROSS_ATTENTION = re.compile(r"_attn2_to_[kv]$")
_PROJECTION = re.compile(r"_attentions_\d+_proj_(?:in|out)$")
_TE_LAYER = re.compile(r"^lora_te_text_model_encoder_layers_(\d+)_")
_TE_QUERY = re.compile(r"^lora_te_text_model_encoder_layers_\d+_self_attn_q_proj$")
_CROSS_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTHS = {768: "sd1", 1024: "sd2"}
_SD1_TE_LAYERS = 12


@dataclass(frozen=True)
class FileFamily:
    """A LoRA file's family, how it was told, and a metadata claim that disagrees with its tensors."""

    family: str | None
    """"sd1", "sd2", "sdxl", SD (SD1 or SD2, undecided), or None when nothing tells."""
    evidence: tuple[str, ...]
    conflict: str | None = None

    @property
    def label(self) -> str:
        return FAMILY_LABELS.get(self.family, "unknown") if self.family else "unknown"


def names_family(modules: Mapping[str, Mapping[str, Tensor]]) -> str | None:
    """ "sdxl" or SD from the kohya module names; None for a file whose names fit both (or neither)."""
    names = list(modules)
    if any(name.startswith(_SDXL_PREFIXES) or _SDXL_ONLY_DIFFUSERS.match(name) for name in names):
        return "sdxl"
    ldm = [name for name in names if _LDM_UNET.match(name)]
    if ldm:
        return SD if any(_SD_ONLY_LDM.match(name) for name in ldm) else "sdxl"
    if any(name.startswith(_SD_PREFIXES) or _SD_ONLY_DIFFUSERS.match(name) for name in names):
        return SD
    return None


def shapes_family(modules: Mapping[str, Mapping[str, Tensor]]) -> str | None:
    """The family the shapes say: the real models' widths, SD1's convolution projections, SD2's depth."""
    for name, parts in modules.items():
        down = parts.get("lora_down.weight")
        if down is None:
            continue
        if _CROSS_ATTENTION.search(name) and down.shape[1] in _CROSS_WIDTHS:
            return _CROSS_WIDTHS[down.shape[1]]
        if _TE_QUERY.match(name) and down.shape[1] in _TE_WIDTHS:
            return _TE_WIDTHS[down.shape[1]]
    if any((match := _TE_LAYER.match(name)) and int(match[1]) >= _SD1_TE_LAYERS for name in modules):
        return "sd2"
    projections = {
        parts["lora_down.weight"].dim()
        for name, parts in modules.items()
        if _PROJECTION.search(name) and "lora_down.weight" in parts and name.startswith("lora_unet_")
    }
    if projections == {4}:
        return "sd1"
    if projections == {2} and names_family(modules) == SD:
        return "sd2"
    return None


def metadata_family(metadata: Mapping[str, str]) -> str | None:
    """The family kohya's or modelspec's metadata records, as A1111 reads it (ss_base_model_version first)."""
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    architecture = metadata.get("modelspec.architecture", "")
    for prefix, family in (("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v2", "sd2"),
                           ("stable-diffusion-v1", "sd1")):  # fmt: skip
        if architecture.startswith(prefix):
            return family
    return None


def file_family(modules: Mapping[str, Mapping[str, Tensor]], metadata: Mapping[str, str]) -> FileFamily:
    """The family from names, then shapes, then metadata; a metadata claim the tensors refute is kept as
    the conflict (the tensors decide what the file fits)."""
    by_names, by_shapes, by_metadata = (
        names_family(modules),
        shapes_family(modules),
        metadata_family(metadata),
    )
    evidence = []
    family = by_names
    if by_names:
        evidence.append("names")
    if by_shapes and (family is None or family == by_shapes or (family == SD and by_shapes != "sdxl")):
        family = by_shapes
        evidence.append("shapes")
    conflict = None
    if by_metadata:
        if family is None or (family == SD and by_metadata != "sdxl") or family == by_metadata:
            family = by_metadata
            evidence.append("metadata")
        else:
            conflict = f"the metadata says {FAMILY_LABELS[by_metadata]}, but the tensors are for {FAMILY_LABELS[family]}"
    return FileFamily(family, tuple(evidence), conflict)
