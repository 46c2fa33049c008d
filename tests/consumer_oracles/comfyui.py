"""ComfyUI's LoRA loading (lora-format.md §3.2) and Forge's copy of it (§3.3), re-implemented from
ComfyUI `comfy/lora.py` (`load_lora`, `model_lora_keys_unet`, `model_lora_keys_clip`), `comfy/utils.py:
unet_to_diffusers`, `comfy/weight_adapter/*.py` (`load`), and Forge `backend/patcher/lora.py`,
`packages_3rdparty/comfyui_lora_collection/lora.py`."""

from collections.abc import Callable, Mapping

from torch import Tensor

from consumer_oracles.base import (
    ATTENTION,
    GLORA_PARTS,
    LOHA_PARTS,
    LOKR_PARTS,
    PROGRAM,
    BaseModel,
    BaseModule,
    dora_on_output,
    has_lokr_factors,
    us,
)
from consumer_oracles.results import Abort, Verdict
from loracraft.models.ldm_convert import unet_module_to_ldm

_CLIPS = {
    ("sd1", "te1"): ("clip_l", ("lora_te", "lora_te1")),
    ("sd2", "te1"): ("clip_h", ("lora_te", "lora_te1")),
    ("sdxl", "te1"): ("clip_l", ("lora_te", "lora_te1")),
    ("sdxl", "te2"): ("clip_g", ("lora_te2",)),
}
_CLIP_PARTS = (*ATTENTION, "mlp.fc1", "mlp.fc2")  # LORA_CLIP_MAP


def key_map(base: BaseModel) -> dict[str, tuple[str, str]]:
    """{LoRA module name: (base module, weight key)} as model_lora_keys_unet and model_lora_keys_clip build
    it: every U-Net weight under its LDM and its diffusers (unet_to_diffusers) name; the six CLIP
    layer parts under each prefix the encoder accepts."""
    names = {}
    for module in base.modules.values():
        if module.component == "unet":
            ldm = unet_module_to_ldm(module.path, base.unet_config)
            for path in (ldm, module.path):
                names[f"lora_unet_{us(path)}"] = (module.name, f"diffusion_model.{ldm}.weight")
            continue
        layer, part = module.clip_layer
        if part in _CLIP_PARTS:
            clip, prefixes = _CLIPS[(base.family, module.component)]
            weight = f"{clip}.transformer.text_model.encoder.layers.{layer}.{part}.weight"
            for prefix in prefixes:
                names[f"{prefix}_text_model_encoder_layers_{layer}_{us(part)}"] = (module.name, weight)
    return names


def _require(parts: Mapping[str, Tensor], name: str, *needed: str) -> None:
    missing = [part for part in needed if part not in parts]
    if missing:
        raise Abort(f"KeyError {name}.{missing[0]}")


# Adapters: (parts, module name) -> (parts read, whether the adapter loads).
def _lora_adapter(parts: Mapping[str, Tensor], name: str) -> tuple[set[str], bool]:
    for up, down, mid in (
        ("lora_up.weight", "lora_down.weight", "lora_mid.weight"),
        ("lora_B.weight", "lora_A.weight", ""),
    ):
        if up in parts:
            _require(parts, name, down)
            return {up, down} | ({mid} & set(parts)), True
    return set(), False


def _loha_adapter(parts: Mapping[str, Tensor], name: str) -> tuple[set[str], bool]:
    if "hada_w1_a" not in parts:
        return set(), False
    _require(parts, name, *sorted(LOHA_PARTS))
    if "hada_t1" in parts:
        _require(parts, name, "hada_t2")
        return set(LOHA_PARTS | {"hada_t1", "hada_t2"}), True
    return set(LOHA_PARTS), True


def _lokr_adapter(parts: Mapping[str, Tensor], name: str) -> tuple[set[str], bool]:
    read = LOKR_PARTS & set(parts)  # every LoKr part present is read, whether or not the adapter loads
    loads = bool(read & {"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a"})
    if loads and not has_lokr_factors(read):
        raise Abort(
            f"{name} has an incomplete LoKr factor (lokr_w1 or lokr_w1_a/_b, lokr_w2 or lokr_w2_a/_b)"
        )
    return read, loads


def _glora_adapter(parts: Mapping[str, Tensor], name: str) -> tuple[set[str], bool]:
    if "a1.weight" not in parts:
        return set(), False
    _require(parts, name, *sorted(GLORA_PARTS))
    return set(GLORA_PARTS), True


def _oft_adapter(ndim: int) -> Callable[[Mapping[str, Tensor], str], tuple[set[str], bool]]:
    """OFT reads 3-D oft_blocks, BOFT 4-D."""

    def adapter(parts: Mapping[str, Tensor], name: str) -> tuple[set[str], bool]:
        if "oft_blocks" not in parts or parts["oft_blocks"].ndim != ndim:
            return set(), False
        return {"oft_blocks"} | ({"rescale"} & set(parts)), True

    return adapter


_ADAPTERS = {
    "comfyui": (
        ("lora", _lora_adapter),
        ("loha", _loha_adapter),
        ("lokr", _lokr_adapter),
        ("glora", _glora_adapter),
        ("oft", _oft_adapter(3)),
        ("boft", _oft_adapter(4)),
    ),
    "forge": (
        ("lora", _lora_adapter),
        ("loha", _loha_adapter),
        ("lokr", _lokr_adapter),
        ("glora", _glora_adapter),
    ),
}


def verdict(consumer: str, name: str, parts: Mapping[str, Tensor], module: BaseModule) -> Verdict:
    """load_lora for one mapped module: alpha and dora_scale are always read; every adapter is tried
    (a later one replaces an earlier one's patch), then w_norm/b_norm, diff, diff_b."""
    program = PROGRAM[consumer]
    read, algorithm = {"alpha", "dora_scale"} & set(parts), None
    for adapter_algorithm, adapter in _ADAPTERS[consumer]:
        adapter_read, loads = adapter(parts, name)
        read |= adapter_read
        algorithm = adapter_algorithm if loads else algorithm
    if "w_norm" in parts:
        algorithm, read = "norm", read | {"w_norm"} | ({"b_norm"} & set(parts))
    if "diff" in parts:
        algorithm, read = "full", read | {"diff"}
    if "diff_b" in parts:
        algorithm, read = algorithm or "full", read | {"diff_b"}
    unread = set(parts) - read
    ignored = {part: f"{program} never reads it" for part in unread}
    if algorithm in (None, "norm", "full"):
        ignored |= {part: "read, but nothing uses it" for part in {"alpha", "dora_scale"} & set(parts)}
    if algorithm == "boft" and "alpha" not in parts:
        ignored |= {part: f"{program}'s BOFT fails without alpha and skips the patch" for part in read}
    if not module.has_bias:
        ignored |= {part: "the module has no bias to patch" for part in {"b_norm", "diff_b"} & read}
    misapplied = {}
    if "dora_scale" in parts and algorithm not in (None, "norm", "full"):
        if dora_on_output(parts["dora_scale"], module):
            misapplied["dora_scale"] = (
                f"{program} normalises an output-axis dora_scale by the unpatched weight, not W + ΔW"
            )
    return Verdict(algorithm, ignored, misapplied, unread)
