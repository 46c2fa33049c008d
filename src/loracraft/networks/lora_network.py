"""The LoRA network: one LyCORIS adapter per targeted module, registered under its kohya name.

The adapters are LyCORIS modules of one type (algorithms.py); for plain LoRA, LyCORIS' `LoConModule` is
kohya's LoRA module: kaiming-uniform `lora_down`, zero `lora_up`, an `alpha`
buffer, scale = alpha / rank (alpha 0 or None means rank), Conv2d targets get Conv2d adapters (4-D
weights, 1x1 included). It keeps the original module in a plain list, so the original weights never
appear in this network's parameters or state dict, and `apply_to()` patches the original's `forward`.
We use the module class directly: LyCORIS' `create_lycoris` / `apply_preset` configure class-level
globals, which two networks in one process would share.
"""

from collections.abc import Mapping, Sequence

import torch
from lycoris.modules.locon import LoConModule
from torch import Tensor, nn

from loracraft.errors import UserError
from loracraft.networks.algorithms import (
    AdapterKind,
    adapter_state,
    check_installed_lycoris,
    load_adapter_state,
    make_adapter,
)
from loracraft.networks.blocks import BlockDims, block_index
from loracraft.networks.kohya_names import text_encoder_prefixes
from loracraft.networks.module_ranks import ModuleRanks, RankAlpha
from loracraft.networks.target_selection import (
    TargetChoice,
    is_norm,
    norm_adapter,
    text_encoder_targets_for,
    unet_targets_for,
)
from loracraft.networks.targets import LoRATarget

_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")


class LoRANetwork(nn.Module):
    """LoRA adapters for a U-Net and/or its text encoders.

    Adapters are registered under their kohya names, so `state_dict()` keys are exactly the keys of a
    kohya LoRA file (`{name}.lora_down.weight`, `{name}.lora_up.weight`, `{name}.alpha`).
    """

    def __init__(
        self,
        unet_adapters: Sequence[nn.Module],
        text_encoder_adapters: Sequence[Sequence[nn.Module]] = (),
        family: str = "sd1",
    ):
        """`text_encoder_adapters` holds one list per text encoder, in kohya's TE1, TE2 order; `family`
        numbers the U-Net's blocks (per-block learning rates)."""
        super().__init__()
        self.family = family
        for adapter in (*unet_adapters, *(a for adapters in text_encoder_adapters for a in adapters)):
            self.add_module(adapter.lora_name, adapter)
        self.unet_names = tuple(adapter.lora_name for adapter in unet_adapters)
        self.per_text_encoder_names = tuple(
            tuple(adapter.lora_name for adapter in adapters) for adapters in text_encoder_adapters
        )
        """The text-encoder names of each text encoder: one tuple (SD1/SD2) or two (SDXL TE1, TE2)."""
        self.text_encoder_names = tuple(name for names in self.per_text_encoder_names for name in names)
        self.names = self.unet_names + self.text_encoder_names
        self._applied = False

    @property
    def num_unet_modules(self) -> int:
        return len(self.unet_names)

    @property
    def num_text_encoder_modules(self) -> int:
        return len(self.text_encoder_names)

    def adapter(self, name: str) -> nn.Module:
        return self._modules[name]

    def apply(self) -> None:
        """Patch every targeted module's forward to add its adapter's output. Call once."""
        # A second apply_to would wrap the adapter around itself on older LyCORIS versions.
        if self._applied:
            raise RuntimeError("LoRANetwork.apply() was already called")
        for adapter in self.children():
            adapter.apply_to()
        self._applied = True

    def set_multiplier(self, multiplier: float) -> None:
        """Strength of every adapter's output (1.0 to train; 0.0 gives the base model's prediction)."""
        for adapter in self.children():
            adapter.multiplier = multiplier

    def freeze_text_encoder(self) -> None:
        """Stop training the text encoders' adapters (--stop_text_encoder_training): no gradient is computed
        for them from now on, so the optimizer leaves them as they are; eval mode turns off their dropout."""
        for name in self.text_encoder_names:
            adapter = self.adapter(name)
            adapter.requires_grad_(False)
            adapter.eval()

    def param_groups(
        self,
        unet_lr: float,
        text_encoder_lr: float | Sequence[float],
        plus_ratios: tuple[float | None, float | None] = (None, None),
        unet_block_lrs: Sequence[float] | None = None,
    ) -> list[dict]:
        """Optimizer parameter groups `{"params", "lr", "name"}`, named as kohya's learning-rate logs:
        "unet", then "textencoder" (SD1/SD2) or "textencoder 1" and "textencoder 2" (SDXL).

        `text_encoder_lr` is one rate for every text encoder or one per text encoder, as kohya reads
        `--text_encoder_lr` (config.effective_text_encoder_lrs): a single-encoder network uses the first.
        LoRA+ (`plus_ratios`: the U-Net's and the text encoders' ratio, None for off) moves every
        `lora_up` weight of a part into its own group "NAME plus" at lr x ratio, as kohya does.
        `unet_block_lrs` (networks/blocks.block_learning_rates: one rate per block) splits the U-Net into
        kohya's groups "unet_block{index}", in kohya's module order; U-Net modules outside
        kohya's blocks (LyCORIS' conv_in, time embedding) stay in "unet" at `unet_lr`.

        Like kohya, a group whose lr is 0 is dropped (`--text_encoder_lr 0` trains only the U-Net
        adapters), as is a group with no adapters. Unlike kohya, the dropped group's parameters are also
        frozen (requires_grad=False), so no gradient is computed for weights that never change.
        """
        groups = []
        for group_name, names, lr in self._groups(unet_lr, text_encoder_lr, unet_block_lrs):
            params = [p for name in names for p in self.adapter(name).parameters()]
            trained = bool(params) and lr != 0
            for param in params:
                param.requires_grad_(trained)
            if not trained:
                continue
            ratio = plus_ratios[0 if group_name.startswith("unet") else 1]
            plus = self._lora_up_parameters(names) if ratio is not None else []
            rest = [param for param in params if not any(param is up for up in plus)]
            groups.append({"params": rest, "lr": lr, "name": group_name})
            if plus:
                groups.append({"params": plus, "lr": lr * ratio, "name": f"{group_name} plus"})
        if not groups:
            raise UserError(
                "nothing to train: the learning rate of every trained part is 0 "
                "(--unet_lr / --text_encoder_lr / --learning_rate); set at least one above 0"
            )
        return groups

    def _lora_up_parameters(self, names: Sequence[str]) -> list[nn.Parameter]:
        return [
            param
            for name in names
            for part, param in self.adapter(name).named_parameters()
            if "lora_up" in part or part.startswith("up_list.")  # DyLoRA keeps its up weight in blocks
        ]

    def _groups(
        self,
        unet_lr: float,
        text_encoder_lr: float | Sequence[float],
        unet_block_lrs: Sequence[float] | None = None,
    ) -> list[tuple[str, tuple[str, ...], float]]:
        """(kohya's group name, adapter names, lr) of every part."""
        rates = [text_encoder_lr] if isinstance(text_encoder_lr, (int, float)) else list(text_encoder_lr)
        groups = self._unet_groups(unet_lr, unet_block_lrs)
        if not self.per_text_encoder_names:  # U-Net only, or the text-encoder outputs are cached
            return groups
        if len(self.per_text_encoder_names) == 1:
            return groups + [("textencoder", self.per_text_encoder_names[0], rates[0])]
        # kohya's rule for two text encoders: one value is both encoders' rate, two are TE1's and TE2's.
        rates = rates * 2 if len(rates) == 1 else rates
        return groups + [
            (f"textencoder {index}", names, lr)
            for index, (names, lr) in enumerate(zip(self.per_text_encoder_names, rates, strict=True), 1)
        ]

    def _unet_groups(
        self, unet_lr: float, block_lrs: Sequence[float] | None
    ) -> list[tuple[str, tuple[str, ...], float]]:
        if block_lrs is None:
            return [("unet", self.unet_names, unet_lr)]
        by_block: dict[int | None, list[str]] = {}
        for name in self.unet_names:
            by_block.setdefault(block_index(name, self.family), []).append(name)
        if self.family == "sdxl":  # kohya's SDXL U-Net holds its blocks in LDM order (IN, MID, OUT)
            by_block = dict(sorted(by_block.items(), key=lambda item: -1 if item[0] is None else item[0]))
        return [
            ("unet", tuple(names), unet_lr)
            if block is None
            else (f"unet_block{block}", tuple(names), block_lrs[block])
            for block, names in by_block.items()
        ]

    def kohya_state_dict(self) -> dict[str, Tensor]:
        """The file's tensors, detached, on the network's device: exact kohya keys, alpha 0-dim fp32,
        every tensor in the shape consumers read (algorithms.file_tensor)."""
        state = {}
        for name in self.names:
            for part, tensor in adapter_state(self.adapter(name)).items():
                state[f"{name}.{part}"] = tensor.to(torch.float32) if part == "alpha" else tensor
        return state

    def load_kohya_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str = "--network_weights"
    ) -> None:
        """Load a kohya LoRA state dict into this network (to continue training from a saved LoRA).

        Strict: the file must have exactly this network's module names and plain-LoRA parts with matching
        shapes; anything else is a UserError naming `source`. A module without `alpha` gets alpha = rank
        (scale 1), as every consumer reads such files. The file's alpha also sets the adapter's scale,
        where kohya keeps the scale from `--network_alpha` and then saves the file's alpha again.
        """
        by_name: dict[str, dict[str, Tensor]] = {}
        for key, tensor in state_dict.items():
            name, _, part = key.partition(".")
            by_name.setdefault(name, {})[part] = tensor
        _check_names(set(by_name), set(self.names), source)
        for name, parts in by_name.items():
            _check_parts(name, parts, self.adapter(name), source)
        for name, parts in by_name.items():
            adapter = self.adapter(name)
            if "alpha" in adapter_state(adapter) and "alpha" not in parts and hasattr(adapter, "lora_dim"):
                parts["alpha"] = torch.tensor(float(adapter.lora_dim))
            load_adapter_state(adapter, parts)
            if isinstance(getattr(adapter, "alpha", None), Tensor) and hasattr(adapter, "lora_dim"):
                adapter.scale = adapter.alpha.item() / adapter.lora_dim


def _check_names(found: set[str], expected: set[str], source: str) -> None:
    unexpected, missing = sorted(found - expected), sorted(expected - found)
    if not unexpected and not missing:
        return
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} module(s) this network does not have (e.g. {unexpected[0]})")
    if missing:
        problems.append(f"{len(missing)} of this network's module(s) missing (e.g. {missing[0]})")
    raise UserError(
        f"{source}: {' and '.join(problems)}; the LoRA was trained for another base model or with "
        "other parts trained (--network_train_unet_only / --network_train_text_encoder_only)"
    )


def _check_parts(name: str, parts: dict[str, Tensor], adapter: nn.Module, source: str) -> None:
    if isinstance(adapter, LoConModule) and set(adapter.state_dict()) <= set(_PARTS):
        _check_plain_parts(name, parts, adapter, source)
        return
    needed = adapter_state(adapter)
    optional = {"alpha"} if hasattr(adapter, "lora_dim") else set()  # a missing alpha means rank
    if set(parts) - set(needed) or set(needed) - set(parts) - optional:
        raise UserError(
            f"{source}: {name} has the parts {', '.join(sorted(parts))}; this network's "
            f"{type(adapter).__name__} has {', '.join(sorted(needed))}: the file is of another network type "
            "or has other options (--network_module / --network_args)"
        )
    for part, tensor in parts.items():
        if part != "alpha" and tensor.shape != needed[part].shape:
            raise UserError(
                f"{source}: {name}.{part} has shape {tuple(tensor.shape)}, this network needs "
                f"{tuple(needed[part].shape)}; the file was trained with another rank (--network_dim, "
                "conv_dim), other options, or for another base model"
            )


def _check_plain_parts(name: str, parts: dict[str, Tensor], adapter: LoConModule, source: str) -> None:
    unknown = sorted(set(parts) - set(_PARTS))
    if unknown or "lora_down.weight" not in parts or "lora_up.weight" not in parts:
        raise UserError(
            f"{source}: {name} is not a plain LoRA module (parts: {', '.join(sorted(parts))}); "
            "only lora_down.weight, lora_up.weight and alpha can be loaded"
        )
    for part, expected in (
        ("lora_down.weight", adapter.lora_down.weight),
        ("lora_up.weight", adapter.lora_up.weight),
    ):
        if parts[part].shape == expected.shape:
            continue
        rank = parts["lora_down.weight"].shape[0]
        fix = (
            f"set --network_dim to the file's rank ({rank})"
            if rank != adapter.lora_dim
            else "the LoRA was made for another base model (SD1.x and SD2.x share module names)"
        )
        raise UserError(
            f"{source}: {name}.{part} has shape {tuple(parts[part].shape)}, this network needs "
            f"{tuple(expected.shape)}; {fix}"
        )


def _adapters(
    targets: list[LoRATarget], kind: AdapterKind, ranks: ModuleRanks, in_unet: bool
) -> list[nn.Module]:
    """An adapter per target that `ranks` gives a rank (a block's rank 0 or a file without it: none)."""
    adapters = []
    for target in targets:
        if is_norm(target.module):  # train_norm: LyCORIS' NormModule, whatever the algorithm
            if ranks.from_file is None or target.name in ranks.from_file:
                adapters.append(norm_adapter(kind, target.name, target.module))
            continue
        rank_alpha = ranks.of(target, in_unet)
        if rank_alpha is not None:
            adapters.append(make_adapter(kind, target.name, target.module, *rank_alpha))
    return adapters


def build_lora_network(
    unet: nn.Module,
    text_encoders: Sequence[nn.Module],
    family: str,
    rank: int,
    alpha: float | None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    kind: AdapterKind | None = None,
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
    *,
    blocks: BlockDims | None = None,
    from_file: Mapping[str, RankAlpha] | None = None,
    choice: TargetChoice | None = None,
) -> LoRANetwork:
    """Create (not yet apply) adapters on kohya's targets, under kohya's names for `family` ("sd1",
    "sd2" or "sdxl").

    `text_encoders` are the base model's text encoders in kohya's TE1, TE2 order (ModelBundle.text_encoders),
    or empty when the text encoders do not train (their outputs cached). `rank` is `--network_dim`, `alpha`
    is `--network_alpha` (None or 0 means alpha = rank). `kind` is the network type with its multiplier and
    dropouts (plain LoRA, no dropout, when None);
    `conv_dim` adds kohya's LoCon targets (ResNet blocks, down/up-samplers), whose 3x3 convolutions get
    `conv_dim`/`conv_alpha` (kohya's default conv_alpha is 1). `blocks` gives the U-Net's modules their
    block's rank and alpha instead (networks/blocks.py); `from_file` builds exactly the modules of a
    --network_weights file at its ranks and alphas (--dim_from_weights). `choice` (preset, target_module,
    exclude/include patterns, train_norm: networks/target_selection.py) picks the targets; None: kohya's.
    """
    if not train_unet and not train_text_encoder:
        raise UserError(
            "--network_train_unet_only and --network_train_text_encoder_only together leave nothing to train"
        )
    if rank < 1:
        raise UserError(f"--network_dim must be at least 1, got {rank}")
    prefixes = text_encoder_prefixes(family)
    if train_text_encoder and len(text_encoders) != len(prefixes):
        raise ValueError(f"training {family}'s text encoders needs {len(prefixes)}, got {len(text_encoders)}")
    kind = kind or AdapterKind("lora")
    check_installed_lycoris(kind)
    conv = (conv_dim, 1.0 if conv_alpha is None else conv_alpha) if conv_dim else None
    ranks = ModuleRanks(rank, alpha, conv, family, blocks, from_file)
    choice = choice or TargetChoice()
    unet_adapters = (
        _adapters(
            unet_targets_for(unet, family, choice, ranks.trains_convolutions), kind, ranks, in_unet=True
        )
        if train_unet
        else []
    )
    text_encoder_adapters = (
        [
            _adapters(text_encoder_targets_for(model, prefix, choice), kind, ranks, in_unet=False)
            for model, prefix in zip(text_encoders, prefixes, strict=True)
        ]
        if train_text_encoder
        else []
    )
    return LoRANetwork(unet_adapters, text_encoder_adapters, family)
