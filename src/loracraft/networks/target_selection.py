"""Which modules get an adapter, for the network args that choose them: LyCORIS' `preset` (a name or a
preset .toml), `target_module`, `exclude_patterns` / `include_patterns` and `train_norm`.

- networks.lora and networks.dylora: kohya's targets (targets.py): every Linear/Conv2d of the U-Net's
  Transformer2DModel blocks, with the ResNet blocks and samplers once convolutions train (conv_dim,
  conv_block_dims), and every Linear of the text encoders' self-attention and MLP.
- lycoris.kohya: the preset (LyCORIS' `full` by default) names container classes whose layers get
  adapters, single modules by path (conv_in, conv_out, time_embedding.linear_1/2 in `full`), and whether
  convolutions larger than 1x1 get one (enable_conv); with train_norm the LayerNorm/GroupNorm layers inside
  the containers get LyCORIS' NormModule (`w_norm`, `b_norm`). For algo=glora LyCORIS trains only the
  U-Net's transformer blocks, whatever the preset; so do we.
- target_module: container class names in place of the type's own (U-Net and text encoders alike).
- exclude_patterns / include_patterns: regular expressions that must match the whole module path in kohya's
  own model (dots, not the `lora_unet_...` name: `input_blocks.4.1.transformer_blocks.0.attn2.to_k` on
  SDXL, `text_model.encoder.layers.0.mlp.fc1` in a text encoder); a module an exclude pattern matches gets
  no adapter unless an include pattern matches it too.

Facts from the code (sd-scripts 2026-02, LyCORIS 3.1.1 and 4.1.3), and where we differ on purpose:
- kohya reads exclude_patterns / include_patterns only in networks.lora_anima and its LoHa/LoKr networks
  (networks.loha, networks.lokr), with re.fullmatch on `original_name` and no default exclusion for SDXL;
  networks.lora and networks.dylora, like lycoris.kohya, drop both keys without a word. No kohya network
  and not lycoris.kohya reads `target_module`: only the presets of LyCORIS' own wrapper (create_lycoris)
  have it, there as container class names. An include pattern with no exclude pattern changes nothing
  in kohya; here it is refused.
- LyCORIS matches a preset's module names with re.match (a prefix match) or, with use_fnmatch, fnmatch,
  on the path in the model it is given. kohya's SDXL U-Net has LDM paths, where `conv_in`, `conv_out` and
  `time_embedding.*` do not exist, so kohya + LyCORIS `full` on SDXL trains none of them; here a name may
  match the diffusers path or kohya's path, so SDXL `full` trains them as LyCORIS does on a diffusers
  SDXL, and a preset file written for either model selects the same modules.
- LyCORIS 4 lists TimestepEmbedding (Anima's block) among the U-Net containers of every preset: on an SD
  U-Net that selects time_embedding.linear_1/2 a second time (its create_network stops with "duplicated
  lora name: lora_unet_time_embedding_linear_1") and SDXL's add_embedding. It is no container here; the
  time embedding comes by name, as in LyCORIS 3.
- attn-only names kohya's attention class, CrossAttention, which diffusers calls Attention: attn-only
  selects attn1/attn2 as on kohya's U-Net (on a diffusers U-Net LyCORIS itself finds nothing). The CLIP
  attention class depends on the transformers version and attention backend (CLIPAttention,
  CLIPSdpaAttention, CLIPFlashAttention2): naming one names them all.
- In the text encoders only the Linear layers of each encoder layer's self_attn and mlp can be targets,
  the text-encoder modules that ComfyUI and Forge load; LyCORIS' presets select no others.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lycoris.modules.norms import NormModule
from torch import nn

from loracraft.config.suggest import did_you_mean
from loracraft.errors import UserError
from loracraft.models.ldm_convert import unet_module_to_ldm
from loracraft.networks.kohya_names import unet_namer
from loracraft.networks.network_spec import LYCORIS, OFT
from loracraft.networks.targets import CONV_BLOCKS, LoRATarget, is_conv_3x3, text_encoder_targets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from loracraft.networks.algorithms import AdapterKind
    from loracraft.networks.network_spec import NetworkSpec


@dataclass(frozen=True)
class Preset:
    """LyCORIS' module selection for lycoris.kohya, under the keys of its preset files."""

    enable_conv: bool
    """Convolutions larger than 1x1 get adapters (1x1 ones always do, as Linear layers)."""
    unet_target_module: tuple[str, ...]
    """U-Net container classes: every Linear/Conv2d (and norm, with train_norm) inside gets an adapter."""
    unet_target_name: tuple[str, ...]
    """U-Net module paths (regular expressions matched at the start, or fnmatch patterns)."""
    text_encoder_target_module: tuple[str, ...]
    text_encoder_target_name: tuple[str, ...]
    exclude_name: tuple[str, ...] = ()
    """Paths (matched as the names) that get nothing, containers included (LyCORIS 4)."""
    use_fnmatch: bool = False


_TRANSFORMER = ("Transformer2DModel",)
_RESNETS = tuple(block.__name__ for block in CONV_BLOCKS)  # ResnetBlock2D, Downsample2D, Upsample2D
_CLIP = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
_FULL_NAMES = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")
# LyCORIS' built-in presets (lycoris/config.py), with the classes of the SD/SDXL U-Net and CLIP only.
BUILTIN_PRESETS: dict[str, Preset] = {
    "full": Preset(True, (*_TRANSFORMER, *_RESNETS), _FULL_NAMES, _CLIP, ()),
    "full-lin": Preset(False, (*_TRANSFORMER, "ResnetBlock2D"), _FULL_NAMES[2:], _CLIP, ()),
    "attn-mlp": Preset(False, _TRANSFORMER, (), _CLIP, ()),
    "attn-only": Preset(False, ("CrossAttention", "SelfAttention"), (), ("CLIPAttention", "CLIPSdpaAttention"), ()),
    "unet-only": Preset(True, (*_TRANSFORMER, *_RESNETS), _FULL_NAMES, (), ()),
    "unet-transformer-only": Preset(False, _TRANSFORMER, (), (), ()),
    "unet-convblock-only": Preset(True, _RESNETS, _FULL_NAMES[:2], (), ()),
}  # fmt: skip
# LyCORIS replaces the U-Net's targets for GLoRA ("GLoRA enabled, only train transformer").
_GLORA_UNET = ("Transformer2DModel", "Attention")
# Class names in kohya's U-Nets (library/original_unet.py, sdxl_original_unet.py) -> diffusers' names.
_UNET_CLASS_ALIASES = {"CrossAttention": "Attention"}
_CLIP_ATTENTION = frozenset({"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2"})
_CLIP_CONTAINERS = _CLIP_ATTENTION | {"CLIPMLP", "CLIPEncoderLayer"}
_KOHYA_DEFAULT_TEXT_ENCODER = ("CLIPAttention", "CLIPMLP")
_EXAMPLE_CLASSES = (
    *_TRANSFORMER,
    "BasicTransformerBlock",
    "Attention",
    *_RESNETS,
    "CLIPAttention",
    "CLIPMLP",
)
_TEXT_ENCODER_LAYER = re.compile(r"(?:text_model\.)?(encoder\..*)")

_PRESET_LIST_KEYS = tuple(f.name for f in fields(Preset) if f.name not in ("enable_conv", "use_fnmatch"))
_PRESET_KEYS = ("enable_conv", "use_fnmatch", *_PRESET_LIST_KEYS)
# Keys of LyCORIS' preset files that lycoris.kohya never reads (its create_lycoris wrapper does).
_WRAPPER_KEYS = {
    "target_module": "write unet_target_module and text_encoder_target_module instead",
    "target_name": "write unet_target_name and text_encoder_target_name instead",
    "lora_prefix": "remove it (kohya's files have fixed prefixes)",
}
_ALGO_MAP_KEYS = ("module_algo_map", "name_algo_map")


@dataclass(frozen=True)
class _Rule:
    """How one model's modules are chosen, LyCORIS' way (kohya's targets are a special case)."""

    classes: frozenset[str]
    names: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    use_fnmatch: bool = False
    convolutions: bool = False
    norms: bool = False

    def _matches(self, patterns: tuple[str, ...], spellings: tuple[str, ...]) -> bool:
        for pattern in patterns:
            for path in spellings:
                if path == pattern:
                    return True
                if fnmatch.fnmatch(path, pattern) if self.use_fnmatch else re.match(pattern, path):
                    return True
        return False

    def named(self, spellings: tuple[str, ...]) -> bool:
        return self._matches(self.names, spellings)

    def excluded(self, spellings: tuple[str, ...]) -> bool:
        return self._matches(self.exclude, spellings)


@dataclass(frozen=True)
class TargetChoice:
    """The network args that choose a network's targets, read once from its NetworkSpec."""

    preset: Preset | None = None
    """lycoris.kohya's module selection; None: kohya's own targets (networks.lora, networks.dylora)."""
    target_module: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    include_patterns: tuple[str, ...] = ()
    train_norm: bool = False

    @classmethod
    def of(cls, spec: NetworkSpec) -> TargetChoice:
        """The targets `spec` chooses; UserError naming --network_args KEY for a bad preset or pattern.
        networks.oft chooses its own targets (kohya_oft.py)."""
        if spec.module == OFT:
            raise ValueError("networks.oft chooses its targets in kohya_oft.py")
        preset = None
        if spec.module == LYCORIS:
            preset = preset_named(spec.preset)
            if spec.algo == "glora":
                preset = replace(preset, unet_target_module=_GLORA_UNET, unet_target_name=())
        for key in ("exclude_patterns", "include_patterns"):
            _check_patterns(key, getattr(spec, key))
        if spec.include_patterns and not spec.exclude_patterns:
            raise UserError(
                "--network_args include_patterns: brings back modules that exclude_patterns drops, and "
                "nothing is excluded; add exclude_patterns or remove include_patterns"
            )
        return cls(preset, spec.target_module, spec.exclude_patterns, spec.include_patterns, spec.train_norm)

    def keeps(self, kohya_path: str) -> bool:
        """kohya's rule: excluded when an exclude pattern matches the whole path, unless an include
        pattern does too."""
        excluded = any(re.fullmatch(pattern, kohya_path) for pattern in self.exclude_patterns)
        return not excluded or any(re.fullmatch(pattern, kohya_path) for pattern in self.include_patterns)

    def unet_rule(self, trains_convolutions: bool) -> _Rule:
        if self.preset is None:
            kohya = (*_TRANSFORMER, *_RESNETS) if trains_convolutions else _TRANSFORMER
            return _Rule(_unet_classes(self.target_module or kohya), convolutions=trains_convolutions)
        preset = self.preset
        return _Rule(
            _unet_classes(self.target_module or preset.unet_target_module),
            preset.unet_target_name,
            preset.exclude_name,
            preset.use_fnmatch,
            preset.enable_conv,
            self.train_norm,
        )

    def text_encoder_rule(self) -> _Rule:
        if self.preset is None:
            return _Rule(_clip_classes(self.target_module or _KOHYA_DEFAULT_TEXT_ENCODER))
        preset = self.preset
        return _Rule(
            _clip_classes(self.target_module or preset.text_encoder_target_module),
            preset.text_encoder_target_name,
            preset.exclude_name,
            preset.use_fnmatch,
        )


def _unet_classes(names: tuple[str, ...]) -> frozenset[str]:
    """The classes as diffusers names them."""
    return frozenset(_UNET_CLASS_ALIASES.get(name, name) for name in names)


def _clip_classes(names: tuple[str, ...]) -> frozenset[str]:
    """The classes as given, with every CLIP attention class when one is named."""
    return frozenset(names) | (_CLIP_ATTENTION if _CLIP_ATTENTION & set(names) else frozenset())


def unet_targets_for(
    unet: nn.Module, family: str, choice: TargetChoice, trains_convolutions: bool
) -> list[LoRATarget]:
    """The U-Net modules `choice` gives an adapter, in module order, under kohya's names for `family`.
    `trains_convolutions` (ModuleRanks.trains_convolutions) adds kohya's LoCon containers to kohya's own
    targets; a preset decides alone. Norm layers (train_norm) are targets too: see `is_norm`."""
    _check_target_module(choice.target_module, unet)
    name = unet_namer(family, unet.config)
    kohya_path = _kohya_unet_path(family, unet.config)
    rule = choice.unet_rule(trains_convolutions)

    def spellings(path: str) -> tuple[str, ...]:
        other = kohya_path(path)
        return (path,) if other in (None, path) else (path, other)

    chosen = _select(unet, rule, spellings, lambda module: _is_unet_candidate(module, rule))
    return [
        LoRATarget(path, name(path), module)
        for path, module in chosen
        if choice.keeps(kohya_path(path) or path)
    ]


def text_encoder_targets_for(text_encoder: nn.Module, prefix: str, choice: TargetChoice) -> list[LoRATarget]:
    """The text-encoder modules `choice` gives an adapter, in module order, named with `prefix` (lora_te,
    lora_te1, lora_te2)."""
    _check_text_encoder_classes(choice.target_module)
    allowed = {id(target.module): target for target in text_encoder_targets(text_encoder, prefix)}
    rule = choice.text_encoder_rule()
    chosen = _select(text_encoder, rule, _text_encoder_spellings, lambda module: id(module) in allowed)
    targets = [allowed[id(module)] for _, module in chosen]
    return [target for target in targets if choice.keeps(_text_encoder_spellings(target.path)[-1])]


def is_norm(module: nn.Module) -> bool:
    """A norm layer LyCORIS' NormModule trains (an affine LayerNorm or GroupNorm): build it with
    `norm_adapter`, not `make_adapter`."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and getattr(module, "weight", None) is not None


def norm_adapter(kind: AdapterKind, name: str, module: nn.Module) -> nn.Module:
    """LyCORIS' NormModule on a norm layer (train_norm), not yet applied: it trains a difference of the
    layer's weight and bias (`w_norm`, `b_norm`, zero at first) whatever the network's algorithm, with
    the network's multiplier, rank dropout (per channel) and module dropout, as lycoris.kohya builds it.
    NormModule is the same in LyCORIS 3.1 and 4."""
    if not is_norm(module):
        raise ValueError(f"{name}: {type(module).__name__} is not a LayerNorm or GroupNorm with weights")
    return NormModule(
        name,
        module,
        multiplier=kind.multiplier,
        rank_dropout=kind.rank_dropout,
        module_dropout=kind.module_dropout,
        rank_dropout_scale=bool(kind.options.get("rank_dropout_scale", False)),
    )


def _select(
    model: nn.Module,
    rule: _Rule,
    spellings: Callable[[str], tuple[str, ...]],
    candidate: Callable[[nn.Module], bool],
) -> list[tuple[str, nn.Module]]:
    """LyCORIS' walk (LycorisNetworkKohya.create_modules): a module of a target class whose path no name
    matches contributes itself and everything inside; a module whose path a name matches contributes
    itself. Excluded paths contribute nothing. Each module is chosen once, in module order."""
    chosen: dict[str, nn.Module] = {}

    def offer(path: str, module: nn.Module) -> None:
        if path not in chosen and not rule.excluded(spellings(path)) and candidate(module):
            chosen[path] = module

    for path, module in model.named_modules():
        if rule.excluded(spellings(path)):
            continue
        named = rule.named(spellings(path))
        if type(module).__name__ in rule.classes and not named:
            for child_path, child in module.named_modules():
                offer(".".join(part for part in (path, child_path) if part), child)
        elif named:
            offer(path, module)
    return list(chosen.items())


def _is_unet_candidate(module: nn.Module, rule: _Rule) -> bool:
    if rule.norms and is_norm(module):
        return True
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and (rule.convolutions or not is_conv_3x3(module))


def _kohya_unet_path(family: str, unet_config: Mapping[str, Any]) -> Callable[[str], str | None]:
    """The module's path in kohya's own U-Net: the diffusers path for SD1/SD2, the LDM path for SDXL
    (None where a container has none)."""
    if family != "sdxl":
        return lambda path: path

    def ldm(path: str) -> str | None:
        try:
            return unet_module_to_ldm(path, unet_config) if path else None
        except ValueError:
            return None

    return ldm


def _text_encoder_spellings(path: str) -> tuple[str, ...]:
    """The path in the model, then kohya's (transformers 4's `text_model.encoder...`)."""
    match = _TEXT_ENCODER_LAYER.fullmatch(path)
    kohya = f"text_model.{match[1]}" if match else path
    return (path,) if kohya == path else (path, kohya)


def _check_target_module(names: tuple[str, ...], unet: nn.Module) -> None:
    """A class name that is neither a U-Net class nor a CLIP one would silently train nothing."""
    present = {type(module).__name__ for module in unet.modules()}
    for name in names:
        if _UNET_CLASS_ALIASES.get(name, name) not in present and name not in _CLIP_CONTAINERS:
            raise UserError(
                f"--network_args target_module: no module of class {name} in the U-Net or text encoders"
                f"{did_you_mean(name, [*present, *_CLIP_CONTAINERS])}; e.g. {', '.join(_EXAMPLE_CLASSES)}"
            )


def _check_text_encoder_classes(names: tuple[str, ...]) -> None:
    for name in names:
        if name.startswith("CLIP") and name not in _CLIP_CONTAINERS:
            raise UserError(
                f"--network_args target_module: {name} holds no text-encoder layer loracraft adapts"
                f"{did_you_mean(name, _CLIP_CONTAINERS)}; choose from {', '.join(sorted(_CLIP_CONTAINERS))}"
            )


def _check_patterns(key: str, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise UserError(
                f"--network_args {key}: {pattern!r} is not a regular expression ({err}); e.g. {key}=['.*attn2.*']"
            ) from None


def preset_named(text: str) -> Preset:
    """A built-in preset by name, or the preset in a .toml file (LyCORIS' keys)."""
    if text in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[text]
    if not text.lower().endswith(".toml"):
        raise UserError(
            f"--network_args preset: {text!r} is not a LyCORIS preset{did_you_mean(text, BUILTIN_PRESETS)}; "
            f"choose {', '.join(BUILTIN_PRESETS)} or a preset .toml file"
        )
    return read_preset_file(Path(text).expanduser(), text)


def read_preset_file(path: Path, given: str | None = None) -> Preset:
    """The preset in a LyCORIS preset .toml; a key the file leaves out keeps preset full's value, as
    lycoris.kohya keeps its class defaults (preset full) for keys a file does not set."""
    shown = given or str(path)
    if not path.is_file():
        raise UserError(
            f"--network_args preset: {shown} is not a file; give the path of a LyCORIS preset .toml or "
            f"one of {', '.join(BUILTIN_PRESETS)}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"--network_args preset: {shown} cannot be read as TOML ({reason}); fix the file"
        ) from None
    return _preset_from(data, shown)


def _preset_from(data: Mapping[str, Any], shown: str) -> Preset:
    where = f"--network_args preset: {shown}:"
    for key, value in data.items():
        if key in _WRAPPER_KEYS:
            raise UserError(
                f"{where} {key} is read by LyCORIS' create_lycoris, not by lycoris.kohya; {_WRAPPER_KEYS[key]}"
            )
        if key in _ALGO_MAP_KEYS:
            if value:
                raise UserError(
                    f"{where} {key} (another algorithm or options per module) is not built by loracraft; "
                    "remove it to train the network's algo on every target"
                )
            continue
        if key not in _PRESET_KEYS:
            raise UserError(
                f"{where} unknown key {key!r}{did_you_mean(key, _PRESET_KEYS)}; "
                f"a preset holds {', '.join(_PRESET_KEYS)}"
            )
    values = {key: _preset_value(key, data[key], where) for key in _PRESET_KEYS if key in data}
    preset = replace(BUILTIN_PRESETS["full"], **values)
    if not preset.use_fnmatch:
        for key in ("unet_target_name", "text_encoder_target_name", "exclude_name"):
            for name in getattr(preset, key):
                try:
                    re.compile(name)
                except re.error as err:
                    raise UserError(
                        f"{where} {key} {name!r} is not a regular expression ({err}); fix it or set use_fnmatch = true"
                    ) from None
    return preset


def _preset_value(key: str, value: Any, where: str) -> bool | tuple[str, ...]:
    if key in ("enable_conv", "use_fnmatch"):
        if not isinstance(value, bool):
            raise UserError(f"{where} {key} must be true or false, not {value!r}")
        return value
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f'{where} {key} must be a list of strings, e.g. {key} = ["Transformer2DModel"]')
    return tuple(value)
