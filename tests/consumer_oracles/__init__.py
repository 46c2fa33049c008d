"""Key-resolution oracles: what A1111, ComfyUI and Forge do with every key of a saved LoRA/LyCORIS file
on SD1, SD2 or SDXL (reference/lora-format.md §2-§3, §7 T5).

None of the three programs runs here, so their rules are re-implemented from reading their code (no
code copied): A1111 1.10 `extensions-builtin/Lora/networks.py` (`convert_diffusers_name_to_compvis`,
`load_network`, `network_apply_weights`) and `network*.py`; ComfyUI `comfy/lora.py` (`load_lora`,
`model_lora_keys_unet/clip`), `comfy/utils.py: unet_to_diffusers` and `comfy/weight_adapter/*`; Forge
`extensions-builtin/sd_forge_lora/networks.py`, `backend/patcher/lora.py` and its ComfyUI-derived
`packages_3rdparty/comfyui_lora_collection/lora.py`. The model side is each program's module table,
built from the tiny diffusers model: the U-Net under its LDM path (lora-format.md §5, checked against
diffusers in test_ldm_convert.py), the text encoders in HF CLIP or open_clip naming.

API:
    base = base_model(family, unet, text_encoders)   # the modules a consumer can patch
    res = resolve(consumer, state_dict, base)        # consumer: one of CONSUMERS
    res.loads            # False when the consumer refuses the file; res.refusal says why in one line
    res.unresolved       # keys whose module name the consumer maps to no module of the model
    res.ignored          # {key: why}: the module is found, but the key changes nothing
    res.misapplied       # {key: why}: applied, with other math than LyCORIS trained (DoRA's axis)
    res.fully_applied    # loads, and every key lands on a module and takes effect as trained
    res.by_module        # {base module name: ModuleMatch(consumer_name, algorithm, keys)}
    res.algorithm_of(m)  # the algorithm (one of ALGORITHMS) the consumer builds for module m, or None
    res.module_of(key)   # the base module a key lands on, or None
    base.name_of(module) # a base module's name from its nn.Module (e.g. a LoRATarget's `module`)
Base module names are "unet.<path>", "te1.<path>", "te2.<path>" with paths as named_modules() gives them;
the modules are every Linear, Conv2d and affine norm of the U-Net and of each CLIP encoder layer.
SUPPORTED[consumer] holds the algorithms it applies; NETWORK_ALGORITHM maps network_spec's algos onto them.

What each consumer refuses or ignores:
- A1111: a module name it cannot map is skipped silently. A module whose parts no module type accepts
  (an orphan `alpha` or `dora_scale`, a lone `diff_b` or `w_norm`, GLoRA without `alpha`, LoHa/LoKr with
  a factor missing), IA3 without `on_input`, or LoRA parts on a norm layer abort the whole file. The
  first type that accepts (lora, loha, ia3, lokr, full, norm, glora, oft) wins; parts it does not read
  are ignored (GLoRA's `bm.weight`). open_clip attention (SD2's encoder, SDXL's TE2) is applied only
  when q, k, v and out_proj are all present. DoRA is always normalised per input column, so LyCORIS'
  default `[out, 1]` dora_scale is misapplied. kohya's OFT names (`oft_unet_`) map only as LDM paths
  (SDXL). SDXL diffusers names `add_embedding_*` and `up_blocks_0_upsamplers_0_conv`, SDXL `lora_te_`
  names and open_clip layer norms are not found.
- ComfyUI: no IA3 (`weight`, `on_input` are never read; the rest loads), no `oft_unet_` names and, in
  the text encoders, only q/k/v/out_proj, fc1, fc2. `alpha`/`dora_scale` with nothing that uses them
  are read with no effect. A part missing beside lora_up, hada_w1_a or a1.weight, or an incomplete LoKr
  factor, fails the whole load. `diff_b`/`b_norm` on a module without bias, and BOFT without `alpha`,
  change nothing. An output-axis dora_scale is normalised by the unpatched weight's norm (misapplied).
- Forge: ComfyUI's rules without OFT/BOFT ("TODO: OFT") or IA3. It skips the whole file when more than
  12 keys stay unread (an orphan `alpha` of a module it knows is read, so not counted), and the U-Net or
  CLIP part when more than 12 of its patches find no weight to attach to (bias patches of bias-less
  modules).

Layout: base.py (the model as the consumers see it), results.py, a1111.py, comfyui.py (ComfyUI and Forge).

Not modelled: tensor shapes (a ΔW that does not fit its weight fails when applied), keys naming
container modules, dotted (PEFT/diffusers) key styles, `text_projection`.
"""

from collections.abc import Mapping

from torch import Tensor

from consumer_oracles import a1111, comfyui
from consumer_oracles.base import PROGRAM, BaseModel, BaseModule, base_model
from consumer_oracles.results import Abort, ModuleMatch, Resolution

__all__ = [
    "ALGORITHMS",
    "CONSUMERS",
    "FORGE_MAX_UNMATCHED_KEYS",
    "NETWORK_ALGORITHM",
    "SUPPORTED",
    "BaseModel",
    "BaseModule",
    "ModuleMatch",
    "Resolution",
    "base_model",
    "resolve",
]

CONSUMERS = ("a1111", "comfyui", "forge")
ALGORITHMS = ("lora", "loha", "lokr", "ia3", "oft", "boft", "glora", "full", "norm")
SUPPORTED = {
    "a1111": frozenset(ALGORITHMS),
    "comfyui": frozenset(ALGORITHMS) - {"ia3"},
    "forge": frozenset(ALGORITHMS) - {"ia3", "oft", "boft"},
}
NETWORK_ALGORITHM = {
    "lora": "lora",
    "locon": "lora",
    "dylora": "lora",
    "loha": "loha",
    "lokr": "lokr",
    "ia3": "ia3",
    "glora": "glora",
    "diag-oft": "oft",
    "boft": "boft",
    "full": "full",
}
"""The algorithm a consumer recognises in the parts of each of network_spec.ALGOS."""
FORGE_MAX_UNMATCHED_KEYS = 12


def resolve(consumer: str, state_dict: Mapping[str, Tensor], base: BaseModel) -> Resolution:
    """What `consumer` does with every key of `state_dict` (a LoRA/LyCORIS file's tensors) on `base`."""
    if consumer not in CONSUMERS:
        raise ValueError(f"unknown consumer {consumer!r}; expected one of {', '.join(CONSUMERS)}")
    find = a1111.finder(base) if consumer == "a1111" else comfyui.key_map(base).get
    parts_of: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        name, _, part = key.partition(".")
        parts_of.setdefault(name, {})[part] = tensor
    result = Resolution(consumer, {}, [], {}, {}, None)
    unread, skipped_bias = 0, {"U-Net": 0, "CLIP": 0}
    for name, parts in parts_of.items():
        keys = tuple(f"{name}.{part}" for part in parts)
        if (found := find(name)) is None:
            result.unresolved.extend(keys)
            continue
        module_name, consumer_name = found
        module = base.modules[module_name]
        try:
            if consumer == "a1111":
                verdict = a1111.verdict(name, parts, module)
            else:
                verdict = comfyui.verdict(consumer, name, parts, module)
        except Abort as abort:
            verb = "aborts on" if consumer == "a1111" else "fails on"
            return Resolution(consumer, {}, [], {}, {}, f"{PROGRAM[consumer]} {verb} the file: {abort}")
        result.by_module[module_name] = ModuleMatch(consumer_name, verdict.algorithm, keys)
        result.ignored |= {f"{name}.{part}": why for part, why in verdict.ignored.items()}
        result.misapplied |= {f"{name}.{part}": why for part, why in verdict.misapplied.items()}
        unread += len(verdict.unread)
        if not module.has_bias:
            patches = {"b_norm", "diff_b"} & (set(parts) - verdict.unread)
            skipped_bias["U-Net" if module.component == "unet" else "CLIP"] += len(patches)
    if consumer == "a1111":
        a1111.skip_incomplete_attention(result, base)
    if consumer == "forge":
        result.refusal = _forge_refusal(len(result.unresolved) + unread, skipped_bias)
    return result


def _forge_refusal(unmatched: int, skipped_bias: Mapping[str, int]) -> str | None:
    """load_lora_for_models: more than 12 keys left unread after the U-Net and CLIP passes skip the file;
    more than 12 patches of one part that find no weight skip that part."""
    if unmatched > FORGE_MAX_UNMATCHED_KEYS:
        return f"Forge skips the file: {unmatched} keys unmatched (more than {FORGE_MAX_UNMATCHED_KEYS})"
    for part, skipped in skipped_bias.items():
        if skipped > FORGE_MAX_UNMATCHED_KEYS:
            return f"Forge skips the file's {part} part: {skipped} patches find no weight to attach to"
    return None
