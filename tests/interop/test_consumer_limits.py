"""Each consumer's own limits, as the oracles (tests/consumer_oracles) encode them from lora-format.md
§3.1-§3.3 and the programs' code: what A1111 aborts on, what ComfyUI and Forge read with no effect or
fail on, the open_clip attention rule, DoRA's axis, bias patches, kohya's OFT names, naming styles.
"""

import pytest
import torch

from consumer_oracles import CONSUMERS, resolve
from loracraft.networks.kohya_names import text_encoder_prefixes, unet_namer
from lycoris_files import (
    FAMILIES,
    RANK,
    diagnosis,
    first,
    glora,
    kohya_te_name,
    lora,
    lora_file,
    oft,
    shape,
    tiny,
    zeros,
)

ABORTS = {
    "orphan alpha": ({"alpha": torch.tensor(1.0)}, "no module type accepts {name}'s parts alpha"),
    "orphan dora_scale": ({"dora_scale": zeros(1, 32)}, "no module type accepts {name}'s parts dora_scale"),
    "lone diff_b": ({"diff_b": zeros(32)}, "no module type accepts {name}'s parts diff_b"),
    "w_norm without b_norm": ({"w_norm": zeros(32)}, "no module type accepts {name}'s parts w_norm"),
    "GLoRA without alpha": (
        {p: zeros(2, 2) for p in ("a1.weight", "a2.weight", "b1.weight", "b2.weight")},
        "no module type accepts {name}'s parts a1.weight, a2.weight, b1.weight, b2.weight",
    ),
    "LoKr without lokr_w2": (
        {"lokr_w1": zeros(2, 2), "alpha": torch.tensor(1.0)},
        "no module type accepts {name}'s parts alpha, lokr_w1",
    ),
    "IA3 without on_input": ({"weight": zeros(32)}, "{name}.weight (IA3) has no {name}.on_input"),
}


@pytest.mark.parametrize("case", ABORTS)
def test_a1111_aborts_on_a_module_no_type_accepts(case: str) -> None:
    base, _, _ = tiny("sd1")
    parts, message = ABORTS[case]
    name, _ = first("sd1", "linear", "to_out")
    state_dict = lora_file("sd1", without=name) | {f"{name}.{p}": t for p, t in parts.items()}
    resolution = resolve("a1111", state_dict, base)
    assert resolution.refusal == "A1111 aborts on the file: " + message.format(name=name)


def test_a1111_aborts_on_lora_parts_on_a_norm_layer() -> None:
    base, _, _ = tiny("sd1")
    name, module = first("sd1", "norm", "transformer_blocks_0_norm1")
    (width,) = module.weight_shape
    parts = {"lora_down.weight": zeros(RANK, width), "lora_up.weight": zeros(width, RANK)}
    state_dict = lora_file("sd1") | {f"{name}.{p}": t for p, t in parts.items()}
    assert resolve("a1111", state_dict, base).refusal == (
        f"A1111 aborts on the file: {name} puts LoRA parts on a norm layer"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_orphan_alpha_of_a_known_module_is_read_without_effect_in_comfyui_and_forge(family: str) -> None:
    base, _, _ = tiny(family)
    name, _ = first(family, "conv")
    key = f"{name}.alpha"
    for consumer in ("comfyui", "forge"):
        resolution = resolve(consumer, lora_file(family, without=name) | {key: torch.tensor(1.0)}, base)
        assert resolution.loads and resolution.unresolved == []
        assert resolution.ignored == {key: "read, but nothing uses it"}


def test_companions_missing_fail_comfyui_and_forge() -> None:
    base, _, _ = tiny("sd1")
    name, _ = first("sd1", "linear")
    state_dict = {k: t for k, t in lora_file("sd1").items() if k != f"{name}.lora_down.weight"}
    for consumer, program in (("comfyui", "ComfyUI"), ("forge", "Forge")):
        assert resolve(consumer, state_dict, base).refusal == (
            f"{program} fails on the file: KeyError {name}.lora_down.weight"
        )
    assert resolve("a1111", state_dict, base).refusal == (
        f"A1111 aborts on the file: no module type accepts {name}'s parts alpha, lora_up.weight"
    )


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_a1111_applies_open_clip_attention_only_with_all_four_projections(family: str) -> None:
    base, targets, _ = tiny(family)
    prefix = text_encoder_prefixes(family)[-1]
    missing = f"{prefix}_text_model_encoder_layers_0_self_attn_v_proj"
    state_dict = {k: t for k, t in lora_file(family).items() if not k.startswith(missing + ".")}
    resolution = resolve("a1111", state_dict, base)
    skipped = {
        key
        for part in ("q_proj", "k_proj", "out_proj")
        for key in state_dict
        if key.startswith(f"{prefix}_text_model_encoder_layers_0_self_attn_{part}.")
    }
    assert resolution.loads and resolution.unresolved == [] and resolution.misapplied == {}
    assert resolution.ignored == dict.fromkeys(
        skipped, "A1111 applies an open_clip attention only with q, k, v and out_proj all present"
    )
    assert resolution.algorithm_of(targets["linear"][missing.replace("v_proj", "q_proj")]) is None
    assert resolve("comfyui", state_dict, base).fully_applied


def test_a1111_applies_hf_clip_attention_projections_one_by_one() -> None:
    base, _, _ = tiny("sd1")
    missing = "lora_te_text_model_encoder_layers_0_self_attn_v_proj."
    state_dict = {k: t for k, t in lora_file("sd1").items() if not k.startswith(missing)}
    assert resolve("a1111", state_dict, base).fully_applied


@pytest.mark.parametrize("group", ["linear", "conv"])
def test_dora_scale_on_the_output_axis_is_misapplied_everywhere(group: str) -> None:
    """LyCORIS' default layout ([out, 1], wd_on_output) is normalised per input column by A1111 and by the
    unpatched weight's norm in ComfyUI and Forge; [1, in] (every other test) is applied as trained."""
    base, _, _ = tiny("sdxl")
    name, module = first("sdxl", group)
    out, _, _, ones = shape(module)
    key = f"{name}.dora_scale"
    state_dict = lora_file("sdxl") | {key: zeros(out, 1, *ones)}
    reasons = {
        "a1111": "A1111 normalises DoRA per input column; an [out, 1] dora_scale broadcasts into a wrong weight",
        "comfyui": "ComfyUI normalises an output-axis dora_scale by the unpatched weight, not W + ΔW",
        "forge": "Forge normalises an output-axis dora_scale by the unpatched weight, not W + ΔW",
    }
    for consumer in CONSUMERS:
        resolution = resolve(consumer, state_dict, base)
        assert resolution.loads and not resolution.unresolved and not resolution.ignored
        assert resolution.misapplied == {key: reasons[consumer]}


def test_bias_patches_of_bias_free_modules() -> None:
    """A1111 gives the module a bias; ComfyUI and Forge have no bias weight to patch, and Forge skips
    the U-Net part when more than 12 such patches find nothing."""
    base, targets, _ = tiny("sd1")
    names = [name for name in targets["linear"] if name.endswith(("to_q", "to_k", "to_v"))]
    out = {name: base.modules[targets["linear"][name]].weight_shape[0] for name in names}
    state_dict = {
        f"{name}.{p}": t for name in names for p, t in {"diff": zeros(1), "diff_b": zeros(out[name])}.items()
    }
    assert resolve("a1111", state_dict, base).fully_applied
    comfy = resolve("comfyui", state_dict, base)
    assert comfy.loads and comfy.ignored == dict.fromkeys(
        [f"{name}.diff_b" for name in names], "the module has no bias to patch"
    )
    assert resolve("forge", state_dict, base).refusal == (
        f"Forge skips the file's U-Net part: {len(names)} patches find no weight to attach to"
    )


def test_norm_parts_a1111_needs_both_of() -> None:
    base, _, _ = tiny("sd1")
    name, module = first("sd1", "norm")
    state_dict = lora_file("sd1") | {f"{name}.w_norm": zeros(*module.weight_shape)}
    assert resolve("comfyui", state_dict, base).fully_applied
    assert resolve("forge", state_dict, base).algorithm_of(module.name) == "norm"
    assert resolve("a1111", state_dict, base).refusal == (
        f"A1111 aborts on the file: no module type accepts {name}'s parts w_norm"
    )


def test_glora_bm_weight_is_read_by_nobody() -> None:
    """LyCORIS writes `bm.weight` for a GLoRA with use_tucker; no consumer reads it."""
    base, _, _ = tiny("sd1")
    name, module = first("sd1", "conv", "conv1")
    key = f"{name}.bm.weight"
    state_dict = {f"{name}.{p}": t for p, t in glora(module).items()} | {key: zeros(RANK, RANK, 3, 3)}
    assert resolve("a1111", state_dict, base).ignored == {key: "A1111's glora module does not read it"}
    assert resolve("comfyui", state_dict, base).ignored == {key: "ComfyUI never reads it"}
    assert resolve("forge", state_dict, base).ignored == {key: "Forge never reads it"}


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_oft_names_load_only_in_a1111_and_only_as_ldm_paths(family: str) -> None:
    """kohya's networks.oft writes `oft_unet_` + its U-Net's path: diffusers paths for SD1/SD2, LDM
    paths for SDXL; A1111 maps `oft_unet` to `diffusion_model`, ComfyUI and Forge know no `oft_unet`."""
    base, targets, _ = tiny(family)
    state_dict = {
        f"oft_{name.removeprefix('lora_')}.{p}": t
        for name, module in targets["linear"].items()
        if name.startswith("lora_unet_")
        for p, t in oft(base.modules[module]).items()
    }
    a1111 = resolve("a1111", state_dict, base)
    if family == "sdxl":
        assert a1111.fully_applied, diagnosis(a1111)
    else:
        assert a1111.loads and sorted(a1111.unresolved) == sorted(state_dict)
    assert sorted(resolve("comfyui", state_dict, base).unresolved) == sorted(state_dict)


def test_sdxl_diffusers_names_lose_two_kinds_of_module_in_a1111() -> None:
    """lora-format.md §3.1: A1111 has no rule for `add_embedding`, and its up-sampler formula assumes
    SD1's attention-less up_blocks.0; ComfyUI maps every diffusers name."""
    base, _, (unet, *_) = tiny("sdxl")
    modules = [
        m
        for m in base.modules.values()
        if m.component == "unet" and m.kind != "norm" and not m.path.startswith(("down_blocks", "mid_block"))
    ]
    state_dict = {f"lora_unet_{m.path.replace('.', '_')}.{p}": t for m in modules for p, t in lora(m).items()}
    lost = (
        "lora_unet_add_embedding_linear_1.",
        "lora_unet_add_embedding_linear_2.",
        "lora_unet_up_blocks_0_upsamplers_0_conv.",
    )
    a1111 = resolve("a1111", state_dict, base)
    assert a1111.loads and sorted(a1111.unresolved) == sorted(k for k in state_dict if k.startswith(lost))
    assert resolve("comfyui", state_dict, base).fully_applied


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_sd1_and_sd2_ldm_names_load_in_a1111_and_comfyui(family: str) -> None:
    base, _, (unet, *_) = tiny(family)
    ldm_namer = unet_namer("sdxl", unet.config)  # kohya's SDXL naming: LDM paths
    modules = [m for m in base.modules.values() if m.component == "unet" and m.kind != "norm"]
    state_dict = {f"{ldm_namer(m.path)}.{p}": t for m in modules for p, t in lora(m).items()}
    for consumer in CONSUMERS:
        assert resolve(consumer, state_dict, base).fully_applied


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoder_layer_norms_are_found_only_by_a1111_in_hf_clip(family: str) -> None:
    """ComfyUI's CLIP key map has only q/k/v/out_proj, fc1, fc2 per layer; A1111 converts `layer_norm1`
    to nothing open_clip has (its norms are ln_1, ln_2)."""
    base, _, _ = tiny(family)
    open_clip = {"sd1": (), "sd2": ("te1",), "sdxl": ("te2",)}[family]
    expected = {
        f"{kohya_te_name(base, module)}.{part}": None if module.component in open_clip else module.name
        for module in base.modules.values()
        if module.component != "unet" and module.kind == "norm"
        for part in ("w_norm", "b_norm")
    }
    state_dict = {key: zeros(32) for key in expected}
    a1111 = resolve("a1111", state_dict, base)
    assert {key: a1111.module_of(key) for key in state_dict} == expected
    assert (
        a1111.loads and a1111.ignored == {} and len(a1111.unresolved) == list(expected.values()).count(None)
    )
    for consumer in ("comfyui", "forge"):
        assert sorted(resolve(consumer, state_dict, base).unresolved) == sorted(state_dict)
