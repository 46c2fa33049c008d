"""The key styles LoRA files come in, and their conversion to kohya modules (lora_input.LoRAModules).

- kohya: `lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight`, `.lora_up.weight`, `.alpha`,
  LyCORIS' parts under the same names (lora_input). kohya, LyCORIS and OneTrainer's KOHYA output write
  it (OneTrainer adds `dora_scale`, and `bundle_emb.*` embeddings, which are no module and are left out).
- kohya with diffusers U-Net names on SDXL: OneTrainer's LEGACY output for SDXL
  (modules/util/convert_lora_util.py, convert_to_mixture) keeps the diffusers paths where kohya writes
  the LDM ones; the names are converted to kohya's.
- diffusers/PEFT: `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`,
  `text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight`, `text_encoder_2.`, what
  diffusers' `save_lora_weights` writes from PEFT layers, with optional `.alpha` keys (diffusers'
  conversions) and DoRA's `lora_magnitude_vector`; PEFT's own adapter files have the paths without the
  component (`base_model.model.` or nothing).
- diffusers' older layers: attention processors (`attn1.processor.to_q_lora.down.weight`,
  `to_out_lora`), `to_q.lora.down.weight`, and the text encoder's `q_proj.lora_linear_layer.down.weight`
  (diffusers/utils/state_dict_utils.py, UNET_TO_DIFFUSERS and DIFFUSERS_OLD_TO_PEFT).
- kohya prefixes with dotted paths (`lora_unet.down_blocks...lora_down.weight`): OneTrainer's older
  diffusers output.

Alpha: PEFT keeps `lora_alpha` in its config, not in the tensors. diffusers writes that config into the
file's `lora_adapter_metadata` (lora_alpha, alpha_pattern, use_rslora per component), which is read;
without it, and without an `.alpha` key, the scale is 1 as in every consumer (lora-format.md §2), and
the alpha is written explicitly as the rank. (A PEFT adapter file's alpha lives in the
adapter_config.json beside it, which a LoRA file does not carry.)

Names: SD1/SD2 U-Net modules are named by their diffusers path, SDXL ones by their LDM path (kohya's
rule, networks/kohya_names.py); the SDXL layout (`layers_per_block`, which up blocks hold attention) is
read from the names themselves, so tiny test models convert like real ones. Text encoders are named
`lora_te_` (SD1/SD2) or `lora_te1_`/`lora_te2_` (SDXL); diffusers' kohya converter writes `lora_te1_`
for SD1 too, which is renamed when the U-Net says SD1/SD2.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from loracraft.errors import UserError
from loracraft.models.ldm_convert import unet_module_to_ldm
from loracraft.networks.kohya_names import text_encoder_lora_name, unet_lora_name
from loracraft.networks.lora_family import SD, names_family

if TYPE_CHECKING:
    from loracraft.networks.lora_input import LoRAModules

STYLE_NAMES = {
    "kohya": "kohya (lora_unet_/lora_te_ names: kohya, LyCORIS, OneTrainer's KOHYA output)",
    "kohya-diffusers-sdxl": "kohya prefixes with diffusers U-Net names on SDXL (OneTrainer's LEGACY output)",
    "peft": "diffusers/PEFT (unet./text_encoder. paths, lora_A/lora_B)",
    "peft-bare": "PEFT adapter (module paths without unet./text_encoder., lora_A/lora_B)",
    "diffusers-old": "diffusers' older LoRA layers (to_q_lora.down, lora.down, lora_linear_layer)",
    "kohya-dotted": "kohya prefixes with dotted paths (lora_unet.down_blocks..., OneTrainer's older output)",
}
BUNDLED_EMBEDDINGS = "bundle_emb."
"""OneTrainer's embeddings saved in the LoRA file (A1111 reads them; they are no module)."""
_KOHYA_NAME = re.compile(r"^(?:lora_unet|lora_te[12]?|oft_unet)_")
_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
_DOTTED_PART = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_[AB](?:\.[\w-]+)?\.weight|lora_(?:down|up)\.weight"
    r"|lora(?:_linear_layer)?\.(?:down|up)\.weight|(?:down|up)\.weight"
    r"|lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?|dora_scale|alpha)$"
)
_COMPONENTS = (
    ("text_encoder_2.", "te2", "peft"), ("text_encoder.", "te1", "peft"), ("unet.", "unet", "peft"),
    ("lora_te2.", "te2", "kohya-dotted"), ("lora_te1.", "te1", "kohya-dotted"),
    ("lora_te.", "te1", "kohya-dotted"), ("lora_unet.", "unet", "kohya-dotted"),
)  # fmt: skip
_UNET_HEADS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.",
               "add_embedding.", "input_blocks.", "middle_block.", "output_blocks.")  # fmt: skip
_TE_HEADS = ("text_model.", "encoder.layers.")
_PEFT_ROOT = "base_model.model."
_PROCESSOR = re.compile(r"(?:\.processor)?\.to_(q|k|v|out)_lora$")
_TE_LAYER = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.(self_attn|mlp)\.(.+)$")
_UNET_BLOCK_NAME = re.compile(
    r"^lora_unet_(?:(?P<side>down_blocks|up_blocks)_(?P<block>\d+)_(?P<kind>resnets|attentions|downsamplers|upsamplers)"
    r"|mid_block_(?P<mid>resnets|attentions))_(?P<index>\d+)(?:_(?P<rest>.+))?$"
)
_UNET_TOP_NAMES = {
    "conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "conv_norm_out",
    "time_embedding_linear_1": "time_embedding.linear_1", "time_embedding_linear_2": "time_embedding.linear_2",
    "add_embedding_linear_1": "add_embedding.linear_1", "add_embedding_linear_2": "add_embedding.linear_2",
}  # fmt: skip
_SDXL_ATTENTION_UP_BLOCKS = (0, 1)
_LAYERS_PER_BLOCK = 2  # SD1, SD2 and SDXL alike
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
_MAGNITUDE = "lora_magnitude_vector"
"""PEFT's DoRA magnitude, until it is shaped as LyCORIS' per-output dora_scale."""


def detect_style(tensors: Mapping[str, Tensor]) -> str:
    """The key style of a LoRA file's tensors (a key of STYLE_NAMES); UserError for a file that is none."""
    return to_kohya(tensors)[1]


def to_kohya(
    tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> tuple[LoRAModules, str]:
    """The file's modules under kohya's names and parts, and its key style (a key of STYLE_NAMES).

    `metadata` is the file's (diffusers' lora_adapter_metadata holds a PEFT file's alphas). UserError
    (one line, without the path) for a checkpoint, a file of no LoRA keys, or a key of no known style."""
    keys = [key for key in tensors if not key.startswith(BUNDLED_EMBEDDINGS)]
    if tensors and not keys:
        raise UserError("holds only embeddings (OneTrainer's bundle_emb), no LoRA module")
    _refuse_non_lora(keys)
    if all(_KOHYA_NAME.match(key) for key in keys):
        modules: LoRAModules = {}
        for key in keys:
            name, _, part = key.partition(".")
            modules.setdefault(name, {})[part] = tensors[key]
        return _kohya_family_names(modules, "kohya")
    return _from_dotted(tensors, keys, _adapter_configs(metadata or {}))


def _refuse_non_lora(keys: list[str]) -> None:
    if any(key.startswith(_CHECKPOINT_PREFIXES) for key in keys):
        raise UserError(
            "is a Stable Diffusion checkpoint (a model, not a LoRA: it has model.diffusion_model.* or text "
            "encoder keys); give a LoRA file here and the checkpoint as the base model"
        )
    if keys and not any(_KOHYA_NAME.match(key) or _DOTTED_PART.match(key) for key in keys):
        raise UserError(
            f"is not a LoRA: none of its {len(keys)} tensors has a LoRA key (e.g. {sorted(keys)[0]}); give a "
            "kohya, LyCORIS or diffusers/PEFT LoRA file"
        )


def _kohya_family_names(modules: LoRAModules, style: str) -> tuple[LoRAModules, str]:
    """kohya's names for the family the names show: SDXL's U-Net under LDM names, SD1/SD2's one text
    encoder under `lora_te_`."""
    family = names_family(modules)
    if family == "sdxl":
        renamed = _sdxl_unet_names(modules)
        if list(renamed) != list(modules):
            return renamed, "kohya-diffusers-sdxl" if style == "kohya" else style
    if family == SD and not any(name.startswith("lora_te2_") for name in modules):
        return {
            _rename_prefix(name, "lora_te1_", "lora_te_"): parts for name, parts in modules.items()
        }, style
    return modules, style


def _rename_prefix(name: str, old: str, new: str) -> str:
    return new + name.removeprefix(old) if name.startswith(old) else name


def _sdxl_unet_names(modules: LoRAModules) -> LoRAModules:
    """SDXL modules with diffusers U-Net names renamed to kohya's LDM names."""
    config = _unet_layout(list(modules))
    renamed: LoRAModules = {}
    for name, parts in modules.items():
        path = _diffusers_unet_path(name)
        new_name = unet_lora_name(unet_module_to_ldm(path, config)) if path else name
        if new_name in renamed:
            raise UserError(f"has two modules for {new_name} (one under diffusers' name {name})")
        renamed[new_name] = parts
    return renamed


def _diffusers_unet_path(name: str) -> str | None:
    """The diffusers module path of a kohya name in diffusers form (`lora_unet_down_blocks_1_attentions_0_
    proj_in` -> `down_blocks.1.attentions.0.proj_in`; what follows the layer keeps its underscores, which
    the LDM conversion passes through); None for other names."""
    top = _UNET_TOP_NAMES.get(name.removeprefix("lora_unet_"))
    if top is not None and name.startswith("lora_unet_"):
        return top
    match = _UNET_BLOCK_NAME.match(name)
    if match is None:
        return None
    if match["mid"]:
        head = f"mid_block.{match['mid']}.{match['index']}"
    else:
        head = f"{match['side']}.{match['block']}.{match['kind']}.{match['index']}"
    return head if match["rest"] is None else f"{head}.{match['rest']}"


def _unet_layout(names: list[str]) -> dict[str, object]:
    """The `layers_per_block` and `up_block_types` the LDM names need, from the names: a down block's
    layers, an up block's one more; an up block holds attention when a name says so (SDXL's first two
    when no name shows any)."""
    layers = _LAYERS_PER_BLOCK
    attention_up: set[int] = set()
    up_blocks = len(_SDXL_ATTENTION_UP_BLOCKS) + 1
    for name in names:
        match = _UNET_BLOCK_NAME.match(name)
        if match is None or match["mid"]:
            continue
        block, index = int(match["block"]), int(match["index"])
        if match["kind"] in ("resnets", "attentions"):
            layers = max(layers, index + 1 if match["side"] == "down_blocks" else index)
        if match["side"] == "up_blocks":
            up_blocks = max(up_blocks, block + 1)
            if match["kind"] == "attentions":
                attention_up.add(block)
    attention_up = attention_up or set(_SDXL_ATTENTION_UP_BLOCKS)
    types = ["CrossAttnUpBlock2D" if i in attention_up else "UpBlock2D" for i in range(up_blocks)]
    return {"layers_per_block": layers, "up_block_types": types}


def _from_dotted(
    tensors: Mapping[str, Tensor], keys: list[str], configs: Mapping[str, Mapping[str, object]]
) -> tuple[LoRAModules, str]:
    """Modules of a file with dotted module paths (PEFT, diffusers, OneTrainer's older output)."""
    found: dict[tuple[str, str], dict[str, Tensor]] = {}
    sources: dict[tuple[str, str, str], str] = {}
    styles: dict[str, int] = {}
    for key in keys:
        component, path, part, style = _parse_dotted(key)
        if (component, path, part) in sources:
            both = " and ".join(sorted((sources[component, path, part], key)))
            raise UserError(f"has two tensors for {component} module {path}'s {part}: {both}")
        sources[component, path, part] = key
        found.setdefault((component, path), {})[part] = tensors[key]
        if style:
            styles[style] = styles.get(style, 0) + 1
    style = max(styles, key=styles.__getitem__) if styles else "peft"
    sdxl = (
        any(component == "te2" for component, _ in found)
        or names_family({unet_lora_name(path): {} for component, path in found if component == "unet"})
        == "sdxl"
    )
    modules: LoRAModules = {}
    for (component, path), parts in found.items():
        name = _kohya_name(component, path, sdxl)
        modules[name] = _kohya_parts(parts, name, configs.get(component, {}), path)
    if sdxl:
        modules = _sdxl_unet_names(modules)
    return modules, style


def _parse_dotted(key: str) -> tuple[str, str, str, str | None]:
    """(component: unet, te1 or te2; module path; kohya part; the style the key shows, None for parts
    every style shares) of a dotted key; UserError for a key of no known style."""
    match = _DOTTED_PART.match(key)
    if match is None:
        raise UserError(
            f"has a key of no LoRA style loracraft reads: {key}; give a kohya, LyCORIS or diffusers/PEFT file"
        )
    path, raw_part = match["module"], match["part"]
    bare = path.startswith(_PEFT_ROOT)
    path = path.removeprefix(_PEFT_ROOT)
    component, style = _component(path, key)
    if style is None:
        bare = True
    else:
        path = path[len(next(prefix for prefix, *_ in _COMPONENTS if path.startswith(prefix))) :]
    part, part_style = _kohya_part(raw_part, path, key)
    if part_style == "diffusers-old":
        path = _PROCESSOR.sub(lambda m: _processor_layer(m[1], component), path)
    if part_style == "lora" and style is None:
        part_style = "peft-bare"
    elif part_style == "lora":
        part_style = style
    elif part_style == "peft" and bare:
        part_style = "peft-bare"
    return component, path, part, part_style


def _component(path: str, key: str) -> tuple[str, str | None]:
    """(component, the style its prefix shows; None for a path without one)."""
    for prefix, component, style in _COMPONENTS:
        if path.startswith(prefix):
            return component, style
    if path.startswith(_UNET_HEADS):
        return "unet", None
    if path.startswith(_TE_HEADS):
        return "te1", None
    raise UserError(
        f"has a key of no LoRA style loracraft reads: {key}; give a kohya, LyCORIS or diffusers/PEFT file"
    )


def _kohya_part(raw: str, path: str, key: str) -> tuple[str, str | None]:
    """(kohya part, style it shows: "peft", "diffusers-old", "lora" for lora_down/lora_up, None)."""
    if raw.startswith("lora_A") or raw.startswith("lora_B"):
        return ("lora_down.weight" if raw.startswith("lora_A") else "lora_up.weight"), "peft"
    if raw in ("lora_down.weight", "lora_up.weight"):
        return raw, "lora"
    if raw.startswith("lora_magnitude_vector"):
        return _MAGNITUDE, "peft"
    if raw in ("alpha", "dora_scale"):
        return raw, None
    if raw in ("down.weight", "up.weight") and not path.endswith("_lora"):
        raise UserError(
            f"has a key of no LoRA style loracraft reads: {key}; give a kohya, LyCORIS or diffusers/PEFT file"
        )
    return ("lora_down.weight" if raw.endswith("down.weight") else "lora_up.weight"), "diffusers-old"


def _processor_layer(layer: str, component: str) -> str:
    """The layer an old attention-processor LoRA changes: `.processor.to_q_lora` -> `.to_q` in the U-Net
    (`to_out_lora` -> `to_out.0`), `.to_q_lora` -> `.q_proj` in a text encoder."""
    if component == "unet":
        return ".to_out.0" if layer == "out" else f".to_{layer}"
    return f".{layer}_proj"


def _kohya_name(component: str, path: str, sdxl: bool) -> str:
    if component == "unet":
        return unet_lora_name(path)
    prefix = {"te1": "lora_te1" if sdxl else "lora_te", "te2": "lora_te2"}[component]
    match = _TE_LAYER.match(path)
    if match:
        return text_encoder_lora_name(int(match[1]), match[2], match[3], prefix)
    return f"{prefix}_{path.replace('.', '_')}"


def _kohya_parts(
    parts: dict[str, Tensor], name: str, config: Mapping[str, object], path: str
) -> dict[str, Tensor]:
    """A dotted module's parts in kohya's form: DoRA's magnitude shaped as LyCORIS' per-output
    dora_scale, and the alpha written (from the adapter config, else the rank: scale 1)."""
    if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
        raise UserError(
            f"has {name} without both LoRA matrices (parts: {', '.join(sorted(parts))}); the file is damaged"
        )
    down = parts["lora_down.weight"]
    converted = dict(parts)
    if _MAGNITUDE in parts:  # one per output row: [out] for Linear, [1, out, 1, 1] for Conv2d
        converted["dora_scale"] = converted.pop(_MAGNITUDE).flatten().reshape(-1, *[1] * (down.dim() - 1))
    if "alpha" not in parts:
        converted["alpha"] = torch.tensor(_configured_alpha(config, path, int(down.shape[0])))
    return converted


def _adapter_configs(metadata: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """diffusers' lora_adapter_metadata (each component's LoraConfig, keys `unet.lora_alpha`...) by
    component."""
    text = metadata.get(ADAPTER_METADATA_KEY)
    if not text:
        return {}
    try:
        packed = json.loads(text)
    except json.JSONDecodeError:
        return {}
    configs: dict[str, dict[str, object]] = {}
    for key, value in packed.items() if isinstance(packed, dict) else ():
        prefix, _, setting = key.partition(".")
        component = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}.get(prefix)
        if component:
            configs.setdefault(component, {})[setting] = value
    return configs


def _configured_alpha(config: Mapping[str, object], path: str, rank: int) -> float:
    """The kohya alpha giving PEFT's scale: lora_alpha / r (per-module alpha_pattern as PEFT matches it,
    a path ending in the pattern), or lora_alpha / sqrt(r) with use_rslora; rank (scale 1) without one."""
    alpha = config.get("lora_alpha")
    patterns = config.get("alpha_pattern") or {}
    for pattern, value in patterns.items() if isinstance(patterns, dict) else ():
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", path):
            alpha = value
            break
    if not isinstance(alpha, (int, float)):
        return float(rank)
    return float(alpha) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)
