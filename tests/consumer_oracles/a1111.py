"""A1111 1.10's LoRA loading (lora-format.md §3.1), re-implemented from `extensions-builtin/Lora/`:
networks.py `convert_diffusers_name_to_compvis`, `assign_network_names_to_compvis_modules`,
`load_network`, `network_apply_weights`; network.py `NetworkModule`; network_*.py `ModuleType*`."""

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import Tensor

from consumer_oracles.base import (
    ATTENTION,
    GLORA_PARTS,
    LOHA_PARTS,
    LOKR_PARTS,
    LORA_PARTS,
    OPEN_CLIP_ENCODERS,
    BaseModel,
    BaseModule,
    dora_on_output,
    has_lokr_factors,
    us,
)
from consumer_oracles.results import Abort, ModuleMatch, Resolution, Verdict
from loracraft.models.ldm_convert import unet_module_to_ldm


def _names(module: BaseModule, family: str, unet_config: Mapping[str, Any]) -> tuple[str, str]:
    """(A1111's key for a LoRA module on `module`, the layer it patches)."""
    if module.component == "unet":
        name = "diffusion_model_" + us(unet_module_to_ldm(module.path, unet_config))
        return name, name
    layer, part = module.clip_layer
    if (family, module.component) not in OPEN_CLIP_ENCODERS:
        name = f"{'0_' if family == 'sdxl' else ''}transformer_text_model_encoder_layers_{layer}_{us(part)}"
        return name, name
    block = f"{'1_' if family == 'sdxl' else ''}model_transformer_resblocks_{layer}"
    if part in ATTENTION[:3]:
        # q, k, v are rows of open_clip's MultiheadAttention `attn`, found through A1111's `_[qkv]_proj`
        # strip; the LoRA module keeps the converted name, which network_apply_weights looks up.
        return f"{block}_attn_{part.removeprefix('self_attn.')}", f"{block}_attn"
    open_clip = {"self_attn.out_proj": "attn_out_proj", "mlp.fc1": "mlp_c_fc", "mlp.fc2": "mlp_c_proj"}
    name = f"{block}_{open_clip.get(part) or {'layer_norm1': 'ln_1', 'layer_norm2': 'ln_2'}[part]}"
    return name, name


def _resnet_part(kind: str, rest: str) -> str:
    parts = {
        "conv1": "in_layers_2",
        "conv2": "out_layers_3",
        "norm1": "in_layers_0",
        "norm2": "out_layers_0",
        "time_emb_proj": "emb_layers_1",
        "conv_shortcut": "skip_connection",
    }
    return parts.get(rest, rest) if kind == "resnets" else rest


def _open_clip_part(rest: str) -> str:
    if "mlp_fc1" in rest:
        return rest.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in rest:
        return rest.replace("mlp_fc2", "mlp_c_proj")
    return rest.replace("self_attn", "attn")


# convert_diffusers_name_to_compvis: (pattern, rename(match, is_sd2)), first match wins. The "3"s hard-code
# layers_per_block = 2; the up-sampler's `2 if i > 0 else 1` assumes SD1's attention-less up_blocks.0.
_RULES: list[tuple[re.Pattern, Callable[[re.Match, bool], str]]] = [
    (re.compile(r"lora_unet_conv_in(.*)"), lambda m, _: f"diffusion_model_input_blocks_0_0{m[1]}"),
    (re.compile(r"lora_unet_conv_out(.*)"), lambda m, _: f"diffusion_model_out_2{m[1]}"),
    (
        re.compile(r"lora_unet_time_embedding_linear_(\d+)(.*)"),
        lambda m, _: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}",
    ),
    (
        re.compile(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"),
        lambda m, _: (
            f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_"
            f"{1 if m[2] == 'attentions' else 0}_{_resnet_part(m[2], m[4])}"
        ),
    ),
    (
        re.compile(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"),
        lambda m, _: (
            f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_"
            f"{_resnet_part(m[1], m[3])}"
        ),
    ),
    (
        re.compile(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"),
        lambda m, _: (
            f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_"
            f"{1 if m[2] == 'attentions' else 0}_{_resnet_part(m[2], m[4])}"
        ),
    ),
    (
        re.compile(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"),
        lambda m, _: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op",
    ),
    (
        re.compile(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"),
        lambda m, _: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv",
    ),
    (
        re.compile(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"),
        lambda m, is_sd2: (
            f"model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}"
            if is_sd2
            else f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
        ),
    ),
    (
        re.compile(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)"),
        lambda m, _: f"1_model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}",
    ),
]


def _lookup(name: str, family: str, table: Mapping[str, Any]) -> str | None:
    """`load_network`'s lookup of one module name, with its fallbacks, in order."""
    # `is_sd2` is A1111's test for open_clip's bare `model_transformer_resblocks` container: SD2's encoder.
    converted = next((rename(m, family == "sd2") for p, rename in _RULES if (m := p.match(name))), name)
    if converted in table:
        return converted
    if "lora_unet" in name:
        candidates = [name.replace("lora_unet", "diffusion_model")]  # LDM-named keys, any family
    elif "lora_te1_text_model" in name:
        candidates = [name.replace("lora_te1_text_model", f"{p}transformer_text_model") for p in ("0_", "")]
    elif "oft_unet" in name:
        candidates = [name.replace("oft_unet", "diffusion_model")]  # kohya's networks.oft
    else:
        candidates = []
    return next((candidate for candidate in candidates if candidate in table), None)


class _ModuleType(NamedTuple):
    algorithm: str
    accepts: Callable[[set[str]], bool]
    reads: frozenset[str]


# networks.py `module_types`, tried in this order; the first that accepts a module's parts wins.
_MODULE_TYPES = (
    _ModuleType(
        "lora",
        lambda p: {"lora_up.weight", "lora_down.weight"} <= p or {"lora_A.weight", "lora_B.weight"} <= p,
        LORA_PARTS,
    ),
    _ModuleType("loha", lambda p: LOHA_PARTS <= p, LOHA_PARTS | {"hada_t1", "hada_t2"}),
    _ModuleType("ia3", lambda p: "weight" in p, frozenset({"weight", "on_input"})),
    _ModuleType("lokr", has_lokr_factors, LOKR_PARTS),
    _ModuleType("full", lambda p: "diff" in p, frozenset({"diff", "diff_b"})),
    _ModuleType("norm", lambda p: {"w_norm", "b_norm"} <= p, frozenset({"w_norm", "b_norm"})),
    _ModuleType("glora", lambda p: GLORA_PARTS | {"alpha"} <= p, GLORA_PARTS),
    _ModuleType(
        "oft",
        lambda p: "oft_blocks" in p or "oft_diag" in p,
        frozenset({"oft_blocks", "oft_diag", "rescale"}),
    ),
)
_COMMON = frozenset({"alpha", "scale", "dora_scale", "bias"})  # NetworkModule reads these for any type


def verdict(name: str, parts: Mapping[str, Tensor], module: BaseModule) -> Verdict:
    """The module type A1111 builds from one module's parts (first accepting wins), and what it skips."""
    kind = next((kind for kind in _MODULE_TYPES if kind.accepts(set(parts))), None)
    if kind is None:
        raise Abort(f"no module type accepts {name}'s parts {', '.join(sorted(parts))}")
    if kind.algorithm == "lora" and module.kind == "norm":
        raise Abort(f"{name} puts LoRA parts on a norm layer")
    if kind.algorithm == "ia3" and "on_input" not in parts:
        raise Abort(f"{name}.weight (IA3) has no {name}.on_input")
    algorithm = kind.algorithm
    if algorithm == "oft" and "oft_blocks" in parts and parts["oft_blocks"].ndim == 4:
        algorithm = "boft"
    unread = set(parts) - kind.reads - _COMMON
    ignored = {part: f"A1111's {kind.algorithm} module does not read it" for part in unread}
    misapplied = {}
    if "dora_scale" in parts and dora_on_output(parts["dora_scale"], module):
        misapplied["dora_scale"] = (
            "A1111 normalises DoRA per input column; an [out, 1] dora_scale broadcasts into a wrong weight"
        )
    return Verdict(algorithm, ignored, misapplied, unread)


def _incomplete_attention(by_module: Mapping[str, Any], base: BaseModel) -> set[str]:
    """open_clip attention modules A1111 skips: network_apply_weights patches the MultiheadAttention only
    when q, k, v and out_proj of its layer all have a module."""
    layers: dict[tuple[str, int], set[str]] = {}
    for name in by_module:
        module = base.modules[name]
        if (base.family, module.component) in OPEN_CLIP_ENCODERS and module.clip_layer[1] in ATTENTION:
            layers.setdefault((module.component, module.clip_layer[0]), set()).add(name)
    return {name for names in layers.values() if len(names) < len(ATTENTION) for name in names}


def finder(base: BaseModel) -> Callable[[str], tuple[str, str] | None]:
    """LoRA module name -> (base module, A1111 layer), through A1111's lookup."""
    table = {}
    for module in base.modules.values():
        key, layer = _names(module, base.family, base.unet_config)
        table[key] = (module.name, layer)

    def find(name: str) -> tuple[str, str] | None:
        key = _lookup(name, base.family, table)
        return table[key] if key else None

    return find


def skip_incomplete_attention(result: Resolution, base: BaseModel) -> None:
    """Mark the open_clip attention modules network_apply_weights never patches."""
    for name in _incomplete_attention(result.by_module, base):
        match = result.by_module[name]
        result.by_module[name] = ModuleMatch(match.consumer_name, None, match.keys)
        result.ignored |= {
            key: "A1111 applies an open_clip attention only with q, k, v and out_proj all present"
            for key in match.keys
        }
