"""The consumer oracles (tests/consumer_oracles) on hand-made files of every algorithm of lora-format.md §2:
on every linear, conv and norm target of SD1, SD2 and SDXL, each consumer that applies an algorithm
resolves every key to its own module and recognises the algorithm; for the others it refuses or
ignores exactly what the program does (§3.1-§3.3). The naming tables are pinned by the spec's literal
names; the real network's files are checked in test_lora_key_oracles.py.
"""

import functools
import math

import pytest
import torch
from diffusers import Transformer2DModel
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import Tensor, nn

from consumer_oracles import CONSUMERS, SUPPORTED, BaseModel, BaseModule, Resolution, base_model, resolve
from loracraft.networks.kohya_names import text_encoder_prefixes, unet_namer
from model_helpers import tiny_family_modules

FAMILIES = ("sd1", "sd2", "sdxl")
RANK = 2
CONV_BLOCKS = (ResnetBlock2D, Downsample2D, Upsample2D)


@functools.cache
def tiny(family: str) -> tuple[BaseModel, dict[str, dict[str, str]], tuple[nn.Module, ...]]:
    """The family's base model and its targets by group ("linear": kohya's default targets, "conv": the
    LoCon targets, "norm": the norms LyCORIS' train_norm adds) as {kohya module name: base module}. The
    models are returned too: the base model names their modules by identity, so they must stay alive."""
    unet, text_encoders = tiny_family_modules(family)
    base = base_model(family, unet, text_encoders)
    namer = unet_namer(family, unet.config)
    targets = {"linear": {}, "conv": {}, "norm": {}}
    for container in unet.modules():
        for path, module in container.named_modules():
            if not path or base.names_by_id.get(id(module)) is None:
                continue
            kind = base.modules[base.name_of(module)].kind
            unet_path = base.name_of(module).removeprefix("unet.")
            if kind == "norm" and isinstance(container, (Transformer2DModel, ResnetBlock2D)):
                targets["norm"][namer(unet_path)] = base.name_of(module)
            elif kind != "norm" and isinstance(container, Transformer2DModel):
                targets["linear"][namer(unet_path)] = base.name_of(module)
            elif kind != "norm" and isinstance(container, CONV_BLOCKS):
                targets["conv"][namer(unet_path)] = base.name_of(module)
    for module in base.modules.values():
        if module.component != "unet" and module.kind == "linear":
            targets["linear"][kohya_te_name(base, module)] = module.name
    return base, targets, (unet, *text_encoders)


def kohya_te_name(base: BaseModel, module: BaseModule) -> str:
    layer, part = module.clip_layer
    prefix = text_encoder_prefixes(base.family)[int(module.component.removeprefix("te")) - 1]
    return f"{prefix}_text_model_encoder_layers_{layer}_{part.replace('.', '_')}"


# ---------------------------------------------------------------- files of every algorithm


def zeros(*shape: int) -> Tensor:
    return torch.zeros(shape)


def split(n: int) -> tuple[int, int]:
    """n = a * b with a the smallest factor above 1 (1 for a prime), as LoKr's Kronecker factors."""
    a = next((f for f in range(2, int(math.sqrt(n)) + 1) if n % f == 0), 1)
    return a, n // a


def shape(module: BaseModule) -> tuple[int, int, list[int], list[int]]:
    """(out, in, kernel, ones like the kernel) of a Linear or Conv2d."""
    out, inn, *kernel = module.weight_shape
    return out, inn, kernel, [1] * len(kernel)


def is_3x3(module: BaseModule) -> bool:
    return module.kind == "conv" and module.weight_shape[2:] != (1, 1)


def lora(module: BaseModule, tucker: bool = False) -> dict[str, Tensor]:
    out, inn, kernel, ones = shape(module)
    if tucker and is_3x3(module):
        return {
            "lora_down.weight": zeros(RANK, inn, *ones),
            "lora_mid.weight": zeros(RANK, RANK, *kernel),
            "lora_up.weight": zeros(out, RANK, *ones),
            "alpha": torch.tensor(1.0),
        }
    return {
        "lora_down.weight": zeros(RANK, inn, *kernel),
        "lora_up.weight": zeros(out, RANK, *ones),
        "alpha": torch.tensor(1.0),
    }


def dora(module: BaseModule) -> dict[str, Tensor]:
    """DoRA in the layout every consumer applies as LyCORIS trained it: [1, in(, 1, 1)]."""
    _, inn, _, ones = shape(module)
    return lora(module) | {"dora_scale": zeros(1, inn, *ones)}


def loha(module: BaseModule, tucker: bool = False) -> dict[str, Tensor]:
    out, inn, kernel, _ = shape(module)
    if tucker and is_3x3(module):
        factors = {"a": zeros(RANK, out), "b": zeros(RANK, inn), "t": zeros(RANK, RANK, *kernel)}
    else:
        factors = {"a": zeros(out, RANK), "b": zeros(RANK, inn * math.prod(kernel))}
    parts = {f"hada_w{i}_{ab}": factors[ab] for i in (1, 2) for ab in "ab"}
    if "t" in factors:
        parts |= {"hada_t1": factors["t"], "hada_t2": factors["t"]}
    return parts | {"alpha": torch.tensor(1.0)}


def lokr(module: BaseModule, w1: str = "full", w2: str = "decomposed") -> dict[str, Tensor]:
    out, inn, kernel, _ = shape(module)
    (a, b), (c, d) = split(out), split(inn)
    parts = (
        {"lokr_w1": zeros(a, c)}
        if w1 == "full"
        else {"lokr_w1_a": zeros(a, RANK), "lokr_w1_b": zeros(RANK, c)}
    )
    if w2 == "full":
        parts["lokr_w2"] = zeros(b, d, *kernel)
    elif w2 == "tucker" and is_3x3(module):
        parts |= {
            "lokr_w2_a": zeros(RANK, b),
            "lokr_w2_b": zeros(RANK, d),
            "lokr_t2": zeros(RANK, RANK, *kernel),
        }
    else:
        parts |= {"lokr_w2_a": zeros(b, RANK), "lokr_w2_b": zeros(RANK, d * math.prod(kernel))}
    return parts | {"alpha": torch.tensor(1.0)}


def ia3(module: BaseModule) -> dict[str, Tensor]:
    out, _, _, ones = shape(module)
    return {"weight": zeros(out) if not ones else zeros(1, out, *ones), "on_input": torch.tensor(0)}


def oft(module: BaseModule, butterfly: bool = False) -> dict[str, Tensor]:
    out, _, _, ones = shape(module)
    blocks, size = split(out)
    oft_blocks = zeros(2, blocks, size, size) if butterfly else zeros(blocks, size, size)
    return {"oft_blocks": oft_blocks, "rescale": zeros(out, 1, *ones), "alpha": torch.tensor(1e-3)}


def glora(module: BaseModule) -> dict[str, Tensor]:
    out, inn, kernel, _ = shape(module)
    return {
        "a1.weight": zeros(RANK, inn),
        "a2.weight": zeros(inn, RANK),
        "b1.weight": zeros(RANK, inn * math.prod(kernel)),
        "b2.weight": zeros(out, RANK),
        "alpha": torch.tensor(1.0),
    }


def full(module: BaseModule) -> dict[str, Tensor]:
    diff = {"diff": zeros(*module.weight_shape)}
    return diff | ({"diff_b": zeros(module.weight_shape[0])} if module.has_bias else {})


def norm(module: BaseModule) -> dict[str, Tensor]:
    return {"w_norm": zeros(*module.weight_shape), "b_norm": zeros(*module.weight_shape)}


ON_LAYERS = ("linear", "conv")
# variant: (the algorithm every consumer should recognise, parts of one module, target groups)
VARIANTS = {
    "lora": ("lora", lora, ON_LAYERS),
    "lora_tucker": ("lora", functools.partial(lora, tucker=True), ON_LAYERS),
    "dora": ("lora", dora, ON_LAYERS),
    "loha": ("loha", loha, ON_LAYERS),
    "loha_tucker": ("loha", functools.partial(loha, tucker=True), ON_LAYERS),
    "lokr": ("lokr", lokr, ON_LAYERS),
    "lokr_full": ("lokr", functools.partial(lokr, w2="full"), ON_LAYERS),
    "lokr_decomposed": ("lokr", functools.partial(lokr, w1="decomposed"), ON_LAYERS),
    "lokr_tucker": ("lokr", functools.partial(lokr, w2="tucker"), ON_LAYERS),
    "ia3": ("ia3", ia3, ON_LAYERS),
    "oft": ("oft", oft, ON_LAYERS),
    "boft": ("boft", functools.partial(oft, butterfly=True), ON_LAYERS),
    "glora": ("glora", glora, ON_LAYERS),
    "full": ("full", full, ON_LAYERS),
    "norm": ("norm", norm, ("norm",)),
}


def state_dict_of(family: str, variant: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A file of `variant` on every target of its groups, and {kohya module name: base module}."""
    base, targets, _ = tiny(family)
    _, parts, groups = VARIANTS[variant]
    names = {name: module for group in groups for name, module in targets[group].items()}
    state_dict = {
        f"{name}.{part}": tensor
        for name, module in names.items()
        for part, tensor in parts(base.modules[module]).items()
    }
    return state_dict, names


def diagnosis(resolution: Resolution) -> str:
    return (
        f"{resolution.consumer}: refusal={resolution.refusal} unresolved={resolution.unresolved[:3]} "
        f"ignored={list(resolution.ignored.items())[:3]} misapplied={list(resolution.misapplied.items())[:3]}"
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_key_lands_on_its_module_where_the_algorithm_is_supported(family: str, variant: str) -> None:
    base, _, _ = tiny(family)
    state_dict, names = state_dict_of(family, variant)
    algorithm = VARIANTS[variant][0]
    consumers = [consumer for consumer in CONSUMERS if algorithm in SUPPORTED[consumer]]
    assert consumers
    for consumer in consumers:
        resolution = resolve(consumer, state_dict, base)
        assert resolution.fully_applied, diagnosis(resolution)
        assert {key: resolution.module_of(key) for key in state_dict} == {
            key: names[key.split(".")[0]] for key in state_dict
        }
        assert {resolution.algorithm_of(module) for module in names.values()} == {algorithm}


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyui_reads_no_ia3_and_loads_the_rest(family: str) -> None:
    base, _, _ = tiny(family)
    state_dict, names = state_dict_of(family, "ia3")
    resolution = resolve("comfyui", state_dict, base)
    assert resolution.loads and resolution.unresolved == []
    assert resolution.ignored == dict.fromkeys(state_dict, "ComfyUI never reads it")
    assert {resolution.algorithm_of(module) for module in names.values()} == {None}


@pytest.mark.parametrize("variant", ["ia3", "oft", "boft"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forge_skips_ia3_and_oft_files(family: str, variant: str) -> None:
    """Forge has neither; their parts stay unmatched (an OFT's alpha is read, with no effect), and more
    than 12 unmatched keys make it skip the whole file."""
    base, _, _ = tiny(family)
    state_dict, _ = state_dict_of(family, variant)
    unread = [key for key in state_dict if not key.endswith(".alpha")]
    resolution = resolve("forge", state_dict, base)
    assert resolution.refusal == f"Forge skips the file: {len(unread)} keys unmatched (more than 12)"
    assert {key for key, why in resolution.ignored.items() if why == "Forge never reads it"} == set(unread)


def oft_file(base: BaseModel, modules: int) -> dict[str, Tensor]:
    """OFT on the first `modules` linear targets: two keys Forge never reads per module."""
    _, targets, _ = tiny(base.family)
    names = list(targets["linear"].items())[:modules]
    return {f"{name}.{part}": t for name, module in names for part, t in oft(base.modules[module]).items()}


def test_forge_loads_a_file_with_at_most_12_unmatched_keys() -> None:
    base, _, _ = tiny("sd1")
    assert resolve("forge", oft_file(base, 6), base).loads
    unknown_alpha = {"lora_unet_bogus.alpha": torch.tensor(1.0)}  # counted: no module of that name
    resolution = resolve("forge", oft_file(base, 6) | unknown_alpha, base)
    assert resolution.refusal == "Forge skips the file: 13 keys unmatched (more than 12)"


# ---------------------------------------------------------------- each consumer's own limits


def first(family: str, group: str, contains: str = "") -> tuple[str, BaseModule]:
    base, targets, _ = tiny(family)
    name, module = next((name, module) for name, module in targets[group].items() if contains in name)
    return name, base.modules[module]


def lora_file(family: str, without: str = "") -> dict[str, Tensor]:
    """A plain LoRA (LoCon) on every linear and conv target, less the module named `without`."""
    state_dict, _ = state_dict_of(family, "lora")
    return {key: tensor for key, tensor in state_dict.items() if key.split(".")[0] != without}


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


# ---------------------------------------------------------------- the naming tables, pinned

NAMES = [
    # (family, kohya module name, A1111 layer, ComfyUI weight key)
    (
        "sd1",
        "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k",
        "diffusion_model_input_blocks_5_1_transformer_blocks_0_attn2_to_k",
        "diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
    ),
    (
        "sd1",
        "lora_unet_up_blocks_0_resnets_2_conv1",
        "diffusion_model_output_blocks_2_0_in_layers_2",
        "diffusion_model.output_blocks.2.0.in_layers.2.weight",
    ),
    (
        "sd1",
        "lora_unet_up_blocks_0_upsamplers_0_conv",
        "diffusion_model_output_blocks_2_1_conv",
        "diffusion_model.output_blocks.2.1.conv.weight",
    ),
    (
        "sd2",
        "lora_unet_down_blocks_0_downsamplers_0_conv",
        "diffusion_model_input_blocks_3_0_op",
        "diffusion_model.input_blocks.3.0.op.weight",
    ),
    (
        "sd2",
        "lora_unet_mid_block_resnets_1_time_emb_proj",
        "diffusion_model_middle_block_2_emb_layers_1",
        "diffusion_model.middle_block.2.emb_layers.1.weight",
    ),
    (
        "sd2",
        "lora_te_text_model_encoder_layers_1_self_attn_k_proj",
        "model_transformer_resblocks_1_attn",
        "clip_h.transformer.text_model.encoder.layers.1.self_attn.k_proj.weight",
    ),
    (
        "sdxl",
        "lora_unet_output_blocks_2_2_conv",
        "diffusion_model_output_blocks_2_2_conv",
        "diffusion_model.output_blocks.2.2.conv.weight",
    ),
    (
        "sdxl",
        "lora_unet_input_blocks_4_0_skip_connection",
        "diffusion_model_input_blocks_4_0_skip_connection",
        "diffusion_model.input_blocks.4.0.skip_connection.weight",
    ),
    (
        "sdxl",
        "lora_unet_input_blocks_1_0_out_layers_3",
        "diffusion_model_input_blocks_1_0_out_layers_3",
        "diffusion_model.input_blocks.1.0.out_layers.3.weight",
    ),
    (
        "sdxl",
        "lora_te1_text_model_encoder_layers_0_self_attn_out_proj",
        "0_transformer_text_model_encoder_layers_0_self_attn_out_proj",
        "clip_l.transformer.text_model.encoder.layers.0.self_attn.out_proj.weight",
    ),
    (
        "sdxl",
        "lora_te2_text_model_encoder_layers_1_mlp_fc1",
        "1_model_transformer_resblocks_1_mlp_c_fc",
        "clip_g.transformer.text_model.encoder.layers.1.mlp.fc1.weight",
    ),
]


@pytest.mark.parametrize(("family", "name", "a1111", "comfyui"), NAMES)
def test_consumer_names_of_kohya_names(family: str, name: str, a1111: str, comfyui: str) -> None:
    base, targets, _ = tiny(family)
    module = {**targets["linear"], **targets["conv"]}[name]
    state_dict = {f"{name}.{p}": t for p, t in lora(base.modules[module]).items()}
    if name.startswith("lora_te"):  # open_clip attention needs its layer's four projections in A1111
        state_dict = lora_file(family)
    for consumer, expected in (("a1111", a1111), ("comfyui", comfyui), ("forge", comfyui)):
        match = resolve(consumer, state_dict, base).by_module[module]
        assert match.consumer_name == expected
