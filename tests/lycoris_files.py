"""Hand-made LoRA/LyCORIS files of every algorithm of lora-format.md §2 on the tiny models' real targets,
for the consumer-oracle tests (tests/interop/test_consumer_*.py). Tensors are zeros of the shapes LyCORIS
writes; the oracles read names, parts and the few shapes the consumers branch on.
"""

import functools
import math

import torch
from diffusers import Transformer2DModel
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import Tensor, nn

from consumer_oracles import BaseModel, BaseModule, Resolution, base_model
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


def first(family: str, group: str, contains: str = "") -> tuple[str, BaseModule]:
    """(kohya name, base module) of the first target of `group` whose name contains `contains`."""
    base, targets, _ = tiny(family)
    name, module = next((name, module) for name, module in targets[group].items() if contains in name)
    return name, base.modules[module]


def lora_file(family: str, without: str = "") -> dict[str, Tensor]:
    """A plain LoRA (LoCon) on every linear and conv target, less the module named `without`."""
    state_dict, _ = state_dict_of(family, "lora")
    return {key: tensor for key, tensor in state_dict.items() if key.split(".")[0] != without}


def diagnosis(resolution: Resolution) -> str:
    """A failure message: why a resolution is not clean, with the first few keys of each kind."""
    return (
        f"{resolution.consumer}: refusal={resolution.refusal} unresolved={resolution.unresolved[:3]} "
        f"ignored={list(resolution.ignored.items())[:3]} misapplied={list(resolution.misapplied.items())[:3]}"
    )
