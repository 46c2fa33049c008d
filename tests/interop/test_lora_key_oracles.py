"""Every module of our LoRA files finds the module it was trained on in A1111, ComfyUI and Forge
(reference/lora-format.md §7 T5).

Neither program runs here, so their key matching is re-implemented from the spec's reading of their
source (§3.1 A1111 `networks.py: load_network`, §3.2 ComfyUI `model_lora_keys_unet/clip`; no code
copied). The model side is what those programs build their tables from: every Linear/Conv2d of the
tiny U-Net under its LDM path (the §5 mapping, itself checked against diffusers' converter in
test_ldm_convert.py) and each text encoder's layers in the naming the program uses (HF CLIP, or
open_clip for SD2's encoder and SDXL's TE2 in A1111). Forge uses ComfyUI's tables and refuses a file
only with more than 12 unmatched keys.
"""

import re
from collections.abc import Callable

import pytest
from torch import nn

from loracraft.models.ldm_convert import unet_module_to_ldm
from loracraft.networks.kohya_names import text_encoder_prefixes
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from loracraft.networks.targets import LoRATarget, text_encoder_targets, unet_targets
from model_helpers import tiny_family_modules

FAMILIES = ("sd1", "sd2", "sdxl")
CLIP_LEAVES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)
CLIP_LAYER = re.compile(r"(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)$")
# open_clip's names for a CLIP layer's parts (A1111 applies q/k/v to the attention's in_proj rows).
OPEN_CLIP = {
    "self_attn.q_proj": "attn",
    "self_attn.k_proj": "attn",
    "self_attn.v_proj": "attn",
    "self_attn.out_proj": "attn_out_proj",
    "mlp.fc1": "mlp_c_fc",
    "mlp.fc2": "mlp_c_proj",
}
RESNET_PARTS = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}
FORGE_MAX_UNMATCHED_KEYS = 12


def _us(path: str) -> str:
    return path.replace(".", "_")


def clip_layer_part(target: LoRATarget) -> tuple[int, str]:
    """(layer, `self_attn.q_proj`-style part) of a text-encoder target."""
    match = CLIP_LAYER.match(target.path)
    assert match, target.path
    return int(match[1]), match[2]


# ---------------------------------------------------------------- A1111 (§3.1)


def a1111_text_encoder_module(family: str, index: int, layer: int, part: str) -> str:
    """A1111's name of a text-encoder module: HF CLIP (SD1, SDXL TE1) or open_clip (SD2, SDXL TE2)."""
    if family == "sd1":
        return f"transformer_text_model_encoder_layers_{layer}_{_us(part)}"
    if family == "sdxl" and index == 0:
        return f"0_transformer_text_model_encoder_layers_{layer}_{_us(part)}"
    prefix = "1_" if family == "sdxl" else ""
    return f"{prefix}model_transformer_resblocks_{layer}_{OPEN_CLIP[part]}"


def a1111_expected(family: str, unet: nn.Module, network_targets: dict[str, tuple]) -> dict[str, str]:
    """{our module name: the A1111 module it must resolve to}."""
    expected = {}
    for name, (kind, target, index) in network_targets.items():
        if kind == "unet":
            expected[name] = "diffusion_model_" + _us(unet_module_to_ldm(target.path, unet.config))
        else:
            expected[name] = a1111_text_encoder_module(family, index, *clip_layer_part(target))
    return expected


def a1111_modules(family: str, unet: nn.Module, text_encoders: list[nn.Module]) -> set[str]:
    """The module table A1111 builds (assign_network_names_to_compvis_modules) for the tiny model."""
    modules = {
        "diffusion_model_" + _us(unet_module_to_ldm(path, unet.config))
        for path, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }
    for index, text_encoder in enumerate(text_encoders):
        for layer in range(text_encoder.config.num_hidden_layers):
            modules |= {a1111_text_encoder_module(family, index, layer, part) for part in CLIP_LEAVES}
    return modules


def a1111_converted(name: str, is_sd2: bool) -> str:
    """`convert_diffusers_name_to_compvis`: diffusers-style names to A1111's LDM module names."""
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
        (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
        (
            r"lora_unet_time_embedding_linear_(\d+)(.*)",
            lambda m: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}",
        ),
        (
            r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
            lambda m: (
                f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_"
                f"{1 if m[2] == 'attentions' else 0}_{_resnet_part(m[2], m[4])}"
            ),
        ),
        (
            r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
            lambda m: (
                f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_"
                f"{_resnet_part(m[1], m[3])}"
            ),
        ),
        (
            r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
            lambda m: (
                f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_"
                f"{1 if m[2] == 'attentions' else 0}_{_resnet_part(m[2], m[4])}"
            ),
        ),
        (
            r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv",
            lambda m: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op",
        ),
        (
            r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
            lambda m: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv",
        ),
        (
            r"lora_te_text_model_encoder_layers_(\d+)_(.+)",
            lambda m: (
                f"model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}"
                if is_sd2
                else f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
            ),
        ),
        (
            r"lora_te2_text_model_encoder_layers_(\d+)_(.+)",
            lambda m: f"1_model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}",
        ),
    ]
    for pattern, rename in rules:
        if match := re.fullmatch(pattern, name):
            return rename(match)
    return name


def _resnet_part(kind: str, rest: str) -> str:
    return RESNET_PARTS.get(rest, rest) if kind == "resnets" else rest


def _open_clip_part(part: str) -> str:
    return part.replace("self_attn", "attn").replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj")


def a1111_resolve(name: str, family: str, modules: set[str]) -> str | None:
    """`load_network`'s lookup of one module name, with its fallbacks, in order."""
    # `is_sd2` is A1111's test for open_clip's `model_transformer_resblocks` container: SD2's encoder.
    converted = a1111_converted(name, is_sd2=family == "sd2")
    if converted in modules:
        return converted
    if (match := re.fullmatch(r"(.*)_[qkv]_proj", converted)) and match[1] in modules:
        return match[1]  # open_clip's attention: q, k, v are rows of its in_proj
    if "lora_unet" in name:
        candidates = [name.replace("lora_unet", "diffusion_model")]
    elif "lora_te1_text_model" in name:
        candidates = [name.replace("lora_te1_text_model", f"{p}transformer_text_model") for p in ("0_", "")]
    else:
        candidates = []
    return next((candidate for candidate in candidates if candidate in modules), None)


# ---------------------------------------------------------------- ComfyUI (§3.2)


def comfy_clip_names(family: str) -> list[tuple[str, tuple[str, ...]]]:
    """(ComfyUI's text encoder, the LoRA prefixes its key map accepts for it), per our text encoder."""
    if family == "sdxl":
        return [("clip_l", ("lora_te", "lora_te1")), ("clip_g", ("lora_te2",))]
    return [("clip_h" if family == "sd2" else "clip_l", ("lora_te", "lora_te1"))]


def comfy_key_map(family: str, unet: nn.Module, text_encoders: list[nn.Module]) -> dict[str, str]:
    """{LoRA module name: model weight key} as model_lora_keys_unet and model_lora_keys_clip build it."""
    key_map = {}
    for path, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            ldm = unet_module_to_ldm(path, unet.config)
            weight = f"diffusion_model.{ldm}.weight"
            key_map[f"lora_unet_{_us(ldm)}"] = weight  # LDM naming
            key_map[f"lora_unet_{_us(path)}"] = weight  # diffusers naming (unet_to_diffusers)
    for (clip, prefixes), text_encoder in zip(comfy_clip_names(family), text_encoders, strict=True):
        for layer in range(text_encoder.config.num_hidden_layers):
            for part in CLIP_LEAVES:
                weight = f"{clip}.transformer.text_model.encoder.layers.{layer}.{part}.weight"
                for prefix in prefixes:
                    key_map[f"{prefix}_text_model_encoder_layers_{layer}_{_us(part)}"] = weight
    return key_map


def comfy_expected(family: str, unet: nn.Module, network_targets: dict[str, tuple]) -> dict[str, str]:
    expected = {}
    clips = [clip for clip, _ in comfy_clip_names(family)]
    for name, (kind, target, index) in network_targets.items():
        if kind == "unet":
            expected[name] = f"diffusion_model.{unet_module_to_ldm(target.path, unet.config)}.weight"
        else:
            layer, part = clip_layer_part(target)
            expected[name] = f"{clips[index]}.transformer.text_model.encoder.layers.{layer}.{part}.weight"
    return expected


# ---------------------------------------------------------------- the checks


def network_and_targets(family: str) -> tuple[LoRANetwork, nn.Module, list[nn.Module], dict[str, tuple]]:
    """Our network on the tiny model, and {module name: ("unet" | "te", target, text encoder index)}."""
    unet, text_encoders = tiny_family_modules(family)
    network = build_lora_network(unet, text_encoders, family, rank=2, alpha=1.0)
    targets = {t.name: ("unet", t, 0) for t in unet_targets(unet, family)}
    for index, (model, prefix) in enumerate(zip(text_encoders, text_encoder_prefixes(family), strict=True)):
        targets |= {t.name: ("te", t, index) for t in text_encoder_targets(model, prefix)}
    assert set(targets) == set(network.names)
    return network, unet, text_encoders, targets


@pytest.mark.parametrize("family", FAMILIES)
def test_a1111_finds_every_module(family: str) -> None:
    network, unet, text_encoders, targets = network_and_targets(family)
    modules = a1111_modules(family, unet, text_encoders)
    expected = a1111_expected(family, unet, targets)
    resolved = {name: a1111_resolve(name, family, modules) for name in network.names}
    assert [name for name, module in resolved.items() if module is None] == []
    assert resolved == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_a1111_open_clip_attention_gets_all_four_projections(family: str) -> None:
    """A1111 applies an open_clip attention LoRA only when q, k, v and out_proj are all in the file."""
    network, *_ = network_and_targets(family)
    open_clip_prefixes = {"sd1": (), "sd2": ("lora_te_",), "sdxl": ("lora_te2_",)}[family]
    attention = re.compile(r"(.+_self_attn)_(q|k|v|out)_proj$")
    found: dict[str, set[str]] = {}
    for name in network.text_encoder_names:
        if name.startswith(open_clip_prefixes) and (match := attention.match(name)):
            found.setdefault(match[1], set()).add(match[2])
    assert bool(found) == bool(open_clip_prefixes)
    assert all(parts == {"q", "k", "v", "out"} for parts in found.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyui_and_forge_find_every_key(family: str) -> None:
    network, unet, text_encoders, targets = network_and_targets(family)
    key_map = comfy_key_map(family, unet, text_encoders)
    keys = list(network.kohya_state_dict())
    unmatched = [key for key in keys if key.split(".", 1)[0] not in key_map]
    assert unmatched == [] and len(unmatched) <= FORGE_MAX_UNMATCHED_KEYS
    expected = comfy_expected(family, unet, targets)
    assert {name: key_map[name] for name in network.names} == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_oracles_refuse_names_kohya_would_not_write(family: str) -> None:
    """Controls: text-encoder names from transformers 5's module paths (no `text_model_`) are found by
    neither program, and SDXL text-encoder names without TE1's `lora_te1_` are lost in A1111; so the
    clean results above mean something."""
    network, unet, text_encoders, _ = network_and_targets(family)
    modules = a1111_modules(family, unet, text_encoders)
    key_map = comfy_key_map(family, unet, text_encoders)
    pathless = [name.replace("_text_model_", "_") for name in network.text_encoder_names]
    assert all(a1111_resolve(name, family, modules) is None for name in pathless)
    assert not set(pathless) & set(key_map)
    if family == "sdxl":
        te1 = [name for name in network.text_encoder_names if name.startswith("lora_te1_")]
        assert all(
            a1111_resolve(name.replace("lora_te1_", "lora_te_"), family, modules) is None for name in te1
        )
