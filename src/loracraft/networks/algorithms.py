"""The adapter of each network type: which LyCORIS module class does the math, with which options.

kohya's own types map onto LyCORIS' modules: networks.lora is LoCon (kohya's LoRA module is LyCORIS'
LoConModule), networks.dylora is DyLoRA, networks.oft is Diag-OFT; `lycoris.kohya` names its algorithm in
`algo`. The modules are built one by one under kohya's names (never through LyCORIS' `create_network`,
which fails on a diffusers SD1 U-Net and misnames transformers-5 text encoders), so every type shares the
targets and names of the plain LoRA.

What a module's LyCORIS state dict holds is what the file holds, with one exception that consumers need:
DyLoRA keeps a Conv2d's `lora_up` as a matrix, and consumers need it 4-D (`adapter_state`,
`load_adapter_state`).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from lycoris.modules import (
    ButterflyOFTModule,
    DiagOFTModule,
    DyLoraModule,
    FullModule,
    GLoRAModule,
    IA3Module,
    LoConModule,
    LohaModule,
    LokrModule,
)
from lycoris.modules.base import LycorisBaseModule
from torch import Tensor, nn

from loracraft.errors import UserError

if TYPE_CHECKING:
    from loracraft.networks.network_spec import NetworkSpec


class DyLoraFullRankInEval(DyLoraModule):
    """LyCORIS' DyLoRA, at its full rank outside training: LyCORIS draws a random rank on every forward,
    so samples and validation during a run would show a random part of the network, not the file."""

    def get_random_rank_weight(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.training:
            return super().get_random_rank_weight()
        return self.get_weight((self.block_count - 1) * self.block_size)  # every block


MODULE_CLASSES: dict[str, type[LycorisBaseModule]] = {
    "lora": LoConModule,
    "locon": LoConModule,
    "loha": LohaModule,
    "lokr": LokrModule,
    "ia3": IA3Module,
    "dylora": DyLoraFullRankInEval,
    "glora": GLoRAModule,
    "diag-oft": DiagOFTModule,
    "boft": ButterflyOFTModule,
    "full": FullModule,
}
# LyCORIS releases before these cannot factorise common widths (3.1's BOFT refuses 320 at factor 4).
MINIMUM_LYCORIS = {"boft": "4.1"}
# Types whose modules have a rank and an alpha (IA3, OFT and full have neither, or another meaning).
RANKED = frozenset({"lora", "locon", "loha", "lokr", "dylora", "glora"})


@dataclass(frozen=True)
class AdapterKind:
    """How every adapter of one network is built: the type and the options its module class takes."""

    algo: str
    multiplier: float = 1.0
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    """Class-specific keyword arguments (use_tucker, weight_decompose, factor, constraint, ...)."""

    @property
    def module_class(self) -> type[LycorisBaseModule]:
        return MODULE_CLASSES[self.algo]

    @property
    def bypass_mode(self) -> bool | None:
        """kohya's forward (x -> down -> up, with dropout on the rank) for plain LoRA/LoCon: LyCORIS'
        default for them rebuilds the whole delta weight every step and skips dropout. DoRA needs the
        merged weight; other types keep LyCORIS' choice unless `bypass_mode` is given."""
        if "bypass_mode" in self.options:
            return self.options["bypass_mode"]
        plain = self.algo in ("lora", "locon") and not self.options.get("weight_decompose")
        return True if plain else None


def check_installed_lycoris(kind: AdapterKind) -> None:
    """Refuse a type the installed LyCORIS builds wrongly, or an option its module class does not take:
    every class swallows unknown keyword arguments, so an old LyCORIS would silently train something else."""
    installed = importlib.metadata.version("lycoris-lora")
    needed = MINIMUM_LYCORIS.get(kind.algo)
    if needed is not None and _release(installed) < _release(needed):
        raise UserError(
            f"--network_args algo={kind.algo} needs lycoris-lora {needed} or newer (installed: {installed}): "
            "pip install -U lycoris-lora"
        )
    accepted = inspect.signature(kind.module_class.__init__).parameters
    for name in kind.options:
        if name not in accepted:
            raise UserError(
                f"--network_args: {kind.algo} with {name} needs a newer LyCORIS than the installed "
                f"{importlib.metadata.version('lycoris-lora')}: pip install -U lycoris-lora"
            )


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def make_adapter(
    kind: AdapterKind, name: str, module: nn.Module, rank: int, alpha: float | None
) -> nn.Module:
    """The adapter of `module` under its kohya `name`, not yet applied. `alpha` None or 0 means rank
    (scale 1), as kohya reads --network_alpha 0."""
    options = dict(kind.options)
    options.pop("bypass_mode", None)
    try:
        return kind.module_class(
            name,
            module,
            multiplier=kind.multiplier,
            lora_dim=rank,
            alpha=alpha or rank,
            dropout=kind.dropout,
            rank_dropout=kind.rank_dropout,
            module_dropout=kind.module_dropout,
            bypass_mode=kind.bypass_mode,
            **options,
        )
    except (ValueError, AssertionError) as err:  # LyCORIS' factorisations refuse some sizes
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--network_args algo={kind.algo}: LyCORIS cannot build the adapter of {name} "
            f"({type(module).__name__} {_size(module)}): {reason}; try another --network_dim or factor"
        ) from None


def _size(module: nn.Module) -> str:
    weight = getattr(module, "weight", None)
    return "x".join(map(str, weight.shape)) if isinstance(weight, Tensor) else "?"


def adapter_state(adapter: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors as the file holds them (part -> tensor, detached): LyCORIS' own state of the
    module (DyLoRA joins its blocks, full writes the difference), with a DyLoRA Conv2d's `lora_up` made
    4-D, since consumers reshape a convolution's delta from 4-D parts, and DyLoRA's alpha in consumers' scale."""
    state = {part: tensor.detach() for part, tensor in adapter.state_dict().items()}
    if isinstance(adapter, DyLoraModule):
        if _is_conv(adapter):
            state["lora_up.weight"] = state["lora_up.weight"].reshape(*state["lora_up.weight"].shape, 1, 1)
        # LyCORIS' DyLoRA scales by alpha / blocks, every consumer by alpha / rank: the file's alpha is
        # block_size times the trained one, so consumers compute the full-rank delta that trained.
        state["alpha"] = state["alpha"] * adapter.block_size
    return state


def load_adapter_state(adapter: nn.Module, parts: Mapping[str, Tensor]) -> None:
    """Load a file's parts (shaped as `adapter_state` gives them) into the adapter."""
    if not isinstance(adapter, DyLoraModule):
        adapter.load_state_dict(dict(parts))
        return
    # LyCORIS' DyLoRA ignores load_state_dict: its rank is stored in blocks of block_size.
    up, down = parts["lora_up.weight"].flatten(1), parts["lora_down.weight"].flatten(1)
    size = adapter.block_size
    with torch.no_grad():
        for index, (up_block, down_block) in enumerate(zip(adapter.up_list, adapter.down_list, strict=True)):
            up_block.copy_(up[:, index * size : (index + 1) * size])
            down_block.copy_(down[index * size : (index + 1) * size])
        if "alpha" in parts:
            adapter.alpha.copy_(parts["alpha"] / size)


def _is_conv(adapter: nn.Module) -> bool:
    return getattr(adapter, "module_type", None) == "conv2d"


def adapter_kind(spec: NetworkSpec, multiplier: float = 1.0) -> AdapterKind:
    """The adapters of a run's network type (network_spec.NetworkSpec): its algorithm and the options its
    LyCORIS class takes. DoRA writes `dora_scale` per input column unless wd_on_output is given: that is
    the one layout A1111, ComfyUI and Forge all read the same way (reference/lora-format.md §2.1), where
    LyCORIS' default (per output row) is misread by A1111 and older ComfyUI."""
    options: dict[str, Any] = {}
    if spec.algo in ("lora", "locon", "loha", "lokr"):
        options.update(use_tucker=spec.use_tucker, use_scalar=spec.use_scalar)
        if spec.dora_wd:
            options.update(
                weight_decompose=True, wd_on_out=spec.wd_on_output if "wd_on_output" in spec.given else False
            )
    if spec.algo == "lokr":
        options.update(factor=spec.factor, decompose_both=spec.decompose_both, full_matrix=spec.full_matrix)
    if spec.algo == "dylora":
        options["block_size"] = spec.dylora_unit
    if spec.algo == "ia3":
        options["train_on_input"] = spec.train_on_input
    if spec.algo in ("diag-oft", "boft"):
        options.update(constraint=spec.constraint, rescaled=spec.rescaled)
    if spec.rank_dropout_scale:
        options["rank_dropout_scale"] = True
    if spec.bypass_mode is not None:
        options["bypass_mode"] = spec.bypass_mode
    return AdapterKind(
        spec.algo,
        multiplier=multiplier,
        dropout=spec.dropout or 0.0,
        rank_dropout=spec.rank_dropout,
        module_dropout=spec.module_dropout,
        options=options,
    )


def check_buildable(spec: NetworkSpec) -> None:
    """Refuse, in one line, an option that would change nothing for the chosen network (network_spec
    refuses the network args that do not apply; this adds the flags)."""
    if spec.module == "networks.oft":
        _check_oft(spec)


def _check_oft(spec: NetworkSpec) -> None:
    """kohya's OFT has no dropout (its network args refuse rank and module dropout already), no
    per-block learning rates and its own targets."""
    blocks = [key for key, text in spec.blocks.items() if str(text).strip()]
    if blocks:
        raise UserError(
            f"--network_args {', '.join(blocks)}: kohya's OFT (--network_module networks.oft) has no per-block "
            "learning rates; leave them out"
        )
    chosen = [key for key in ("target_module", "exclude_patterns", "include_patterns") if getattr(spec, key)]
    if chosen:
        raise UserError(
            f"--network_args {', '.join(chosen)}: kohya's OFT (--network_module networks.oft) chooses its "
            "targets with enable_all_linear and enable_conv only; leave them out"
        )
    if spec.dropout:
        raise UserError(
            f"--network_dropout {spec.dropout:g}: kohya's OFT (--network_module networks.oft) has no dropout, "
            "so this changes nothing; leave it out"
        )


def loraplus_ratios(spec: NetworkSpec) -> tuple[float | None, float | None]:
    """LoRA+'s lr ratio of the `lora_up` weights (U-Net, text encoders): the part's own ratio, else
    loraplus_lr_ratio, as kohya reads them; None where LoRA+ is off."""
    shared = spec.loraplus_lr_ratio
    unet = spec.loraplus_unet_lr_ratio if spec.loraplus_unet_lr_ratio is not None else shared
    text_encoder = (
        spec.loraplus_text_encoder_lr_ratio if spec.loraplus_text_encoder_lr_ratio is not None else shared
    )
    return unet, text_encoder
