"""--network_weights and --dim_from_weights: a run whose network starts from an existing LoRA or LyCORIS
file, of any type loracraft trains.

Not a resume: the file gives only the network's initial weights; the optimizer, the learning-rate
schedule and the step count start fresh (--resume continues a saved training state instead).

The file is read as kohya's and LyCORIS' create_network_from_weights read it: each module's type, rank and
alpha from its parts (networks/lora_input.py). Where they leave the choice open or trap the user,
loracraft decides:
- The file's type must be the run's (--network_module / --network_args), with the options its parts show
  (Tucker, DoRA and its layout, IA3's train_on_input, OFT's constraint and rescaled). kohya's networks.lora
  loads another type's file with `strict=False`, so it silently trains from scratch; LyCORIS builds
  whatever the file holds, whatever the run asked for.
- The file must name exactly the modules this run trains, at this run's ranks. kohya loads it with
  `strict=False`, so a file made for other modules silently trains from scratch, and modules the run
  does not train disappear from the files it saves.
- `--dim_from_weights` builds the file's modules, each at its own rank and alpha, as kohya's
  create_network_from_weights does (3x3 convolutions included): `module_ranks()` is what
  build_lora_network's `from_file` takes. --network_dim then records the rank of most modules.
- The file's alpha is kept, module by module. kohya keeps the scale --network_alpha gives (its FIXME) yet
  saves the file's alpha, so its saved LoRA computes something other than what it trained. Here each
  module's alpha is the file's, and --network_alpha becomes the file's (that of most modules), with a
  note when --network_alpha said otherwise: the network starts out computing exactly what the file does in
  A1111, and the saved files (tensors and ss_network_alpha) record that alpha.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from loracraft.config.load import updated_config
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.networks.algorithms import adapter_state
from loracraft.networks.lora_input import (
    TUCKER_PARTS,
    TYPE_NAMES,
    LoRAModules,
    ModuleSize,
    check_naming_family,
    file_type,
    module_size,
    module_type,
    read_modules,
)
from loracraft.networks.lora_network import LoRANetwork
from loracraft.networks.module_ranks import RankAlpha
from loracraft.networks.network_spec import LYCORIS, OFT, NetworkSpec, network_spec

FLAG = "network_weights"


@dataclass(frozen=True)
class InitialWeights:
    """The --network_weights file, read and checked against the base model's family."""

    path: str
    modules: LoRAModules
    algo: str
    """The file's type: a key of lora_input.TYPE_NAMES."""
    sizes: Mapping[str, ModuleSize]
    """Each module's rank and alpha (lora_input.module_size)."""

    @classmethod
    def read(cls, path: str, family: str) -> InitialWeights:
        modules = read_modules(path, FLAG)
        check_naming_family(modules, family, FLAG, path)
        algo = file_type(modules, FLAG, path)
        # train_norm's adapters have their own type in a file of any type
        sizes = {
            name: module_size(module_type(name, parts) or algo, parts) for name, parts in modules.items()
        }
        return cls(path, modules, algo, sizes)

    @property
    def ranks(self) -> Counter[int]:
        """How many modules have each rank."""
        return Counter(size.dim for size in self.sizes.values() if size.ranked)

    @property
    def alphas(self) -> Counter[float]:
        """How many modules have each alpha, at the float32 precision files keep."""
        return Counter(_shortest(size.alpha) for size in self.sizes.values() if size.alpha is not None)

    @property
    def rank(self) -> int | None:
        """The rank of the file's modules (of most of them, when they differ); None for a type without one."""
        return _most_common(self.ranks)

    @property
    def alpha(self) -> float | None:
        """Their alpha as consumers apply it (a missing or zero alpha is the rank; of most modules, when
        they differ); None for a type without one."""
        return _most_common(self.alphas)

    @property
    def per_module_ranks(self) -> bool:
        """Whether the file's modules have different ranks (kohya's LoCon: conv_dim on 3x3 convolutions)."""
        return len(self.ranks) > 1

    def module_ranks(self) -> dict[str, RankAlpha]:
        """Each module's (rank, alpha) that rebuilds it exactly: build_lora_network's `from_file`."""
        return {name: (size.dim, size.alpha) for name, size in self.sizes.items()}

    def run_settings(self, config: TrainConfig) -> tuple[TrainConfig, tuple[str, ...]]:
        """`config` with the file's rank (--dim_from_weights) and alpha, and a note for each value the
        user gave otherwise. The file's type and options must be the run's. Without --dim_from_weights, a
        file of one rank other than --network_dim's is refused (per-module ranks: by `load_into`)."""
        spec = network_spec(config)
        check_same_type(self, spec)
        updates: dict[str, float] = {}
        notes = []
        if self.rank is not None:
            self._rank_settings(config, updates, notes)
        if self.alpha is not None:
            self._alpha_settings(config, _file_alpha_per_trained(spec), updates, notes)
        return (updated_config(config, updates) if updates else config), tuple(notes)

    def _rank_settings(self, config: TrainConfig, updates: dict[str, float], notes: list[str]) -> None:
        assert self.rank is not None
        if config.dim_from_weights:
            if config.network_dim != self.rank:
                updates["network_dim"] = self.rank
            if self.per_module_ranks and config.network_dim != self.rank:
                notes.append(
                    f"--dim_from_weights: {self.path} has a rank per module ({_counted(self.ranks)}): each "
                    f"module trains at its own, as kohya builds them; --network_dim records {self.rank}, "
                    "the rank of most modules"
                )
            elif config.network_dim is not None and config.network_dim != self.rank:
                notes.append(
                    f"--dim_from_weights: rank {self.rank} from {self.path}, not --network_dim {config.network_dim}"
                )
        elif not self.per_module_ranks and config.network_rank != self.rank:
            raise UserError(
                f"--network_weights {self.path} has rank {self.rank}, but --network_dim is {config.network_rank}: "
                f"set --network_dim {self.rank}, or add --dim_from_weights"
            )

    def _alpha_settings(
        self, config: TrainConfig, per_trained: int, updates: dict[str, float], notes: list[str]
    ) -> None:
        """`per_trained`: the file's alpha over the alpha that trains (DyLoRA's block size, else 1)."""
        assert self.alpha is not None
        alpha = _shortest(self.alpha / per_trained)
        given_alpha = config.network_alpha or self.rank or 0  # alpha 0 means alpha = rank
        if np.isclose(given_alpha, alpha, rtol=1e-6, atol=0):
            return
        updates["network_alpha"] = alpha
        if len(self.alphas) > 1:
            alphas = Counter({_shortest(value / per_trained): count for value, count in self.alphas.items()})
            notes.append(
                f"--network_weights {self.path} has an alpha per module ({_counted(alphas)}): training "
                f"keeps each module's, not --network_alpha {config.network_alpha:g}, so the network starts out "
                f"computing what the file does; the saved files record them (ss_network_alpha "
                f"{alpha:g}, the alpha of most modules)"
            )
            return
        notes.append(
            f"--network_weights {self.path} has alpha {alpha:g} (rank {self.rank}): training keeps "
            f"it, not --network_alpha {config.network_alpha:g}, so the LoRA starts out computing what "
            f"the file does; the saved files record alpha {alpha:g}"
        )

    def load_into(self, network: LoRANetwork) -> None:
        """Set the network's weights and alphas to the file's (strict: the same modules, ranks, parts
        and shapes; the first difference is one line naming the module and the setting to change)."""
        source = f"--network_weights {self.path}"
        unexpected = sorted(set(self.modules) - set(network.names))
        if network.unet_names and set(network.unet_names) <= set(self.modules):
            self._check_convolutions(unexpected)
        if set(self.modules) == set(network.names):
            for name in sorted(self.modules):
                self._check_module(name, network.adapter(name))
        state = {
            f"{name}.{part}": tensor for name, parts in self.modules.items() for part, tensor in parts.items()
        }
        network.load_kohya_state_dict(state, source=source)

    def _check_convolutions(self, unexpected: list[str]) -> None:
        """kohya's LoCon files hold 3x3 convolutions a run without conv_dim does not train: say so."""
        conv = next((name for name in unexpected if _is_conv_3x3(self.modules[name])), None)
        if conv is None:
            return
        size = self.sizes[conv]
        raise UserError(
            f"--network_weights {self.path} has adapters on 3x3 convolutions (e.g. {conv}, rank {size.dim}), "
            f"which this run does not train: add --network_args conv_dim={size.dim} "
            f"conv_alpha={size.alpha or size.dim:g}, or --dim_from_weights"
        )

    def _check_module(self, name: str, adapter: nn.Module) -> None:
        size = self.sizes[name]
        built = getattr(adapter, "lora_dim", getattr(adapter, "num_blocks", None))
        if size.ranked and isinstance(built, int) and built != size.dim:
            raise UserError(
                f"--network_weights {self.path}: {name} has rank {size.dim}, but this run builds it at rank "
                f"{built} (--network_dim, conv_dim, block_dims): set them to the file's ranks, or add "
                "--dim_from_weights"
            )
        file_tucker = sorted(set(self.modules[name]) & set(TUCKER_PARTS))
        built_tucker = sorted(set(adapter_state(adapter)) & set(TUCKER_PARTS))
        if bool(file_tucker) != bool(built_tucker):
            has = f"has Tucker parts ({', '.join(file_tucker)})" if file_tucker else "has no Tucker part"
            fix = "add --network_args use_tucker=True" if file_tucker else "leave use_tucker out"
            raise UserError(
                f"--network_weights {self.path}: {name} {has}, unlike this run's adapter "
                f"({', '.join(built_tucker) or 'no Tucker part'}): {fix}"
            )


def initial_weights_settings(config: TrainConfig, family: str) -> tuple[TrainConfig, tuple[str, ...]]:
    """The run's settings once the base model's family is known: with --network_weights, its rank
    (--dim_from_weights) and alpha, and the notes saying so; `config` unchanged without it."""
    if not config.network_weights:
        return config, ()
    return InitialWeights.read(config.network_weights, family).run_settings(config)


def run_type(spec: NetworkSpec) -> str:
    """The file type (lora_input.TYPE_NAMES) the run's network writes: every LoRA/LoCon/DyLoRA writes
    lora_down/lora_up."""
    if spec.module == OFT:
        return "kohya-oft"
    return "lora" if spec.algo in ("lora", "locon", "dylora") else spec.algo


def check_same_type(weights: InitialWeights, spec: NetworkSpec) -> None:
    """Refuse a file of another type than the run's, or with other options its parts show, in one line
    naming the setting that trains the file's."""
    path, run = weights.path, run_type(spec)
    if weights.algo != run and weights.algo != "norm":
        raise UserError(
            f"--network_weights {path} is {_article(TYPE_NAMES[weights.algo])} file, but this run trains "
            f"{TYPE_NAMES[run]} ({_run_flags(spec)}): set {_flags_for(weights.algo)}"
        )
    problem = (
        _norm_problem(weights, spec)
        or _tucker_problem(weights, spec)
        or _dora_problem(weights, spec)
        or _ia3_problem(weights, spec)
        or _oft_problem(weights, spec)
        or _dylora_problem(weights, spec)
        or _kohya_oft_problem(weights, spec)
    )
    if problem:
        raise UserError(f"--network_weights {path} {problem}")


def _norm_problem(weights: InitialWeights, spec: NetworkSpec) -> str | None:
    norm = _first(weights.modules, lambda parts: "w_norm" in parts)
    if norm is not None and not spec.train_norm:
        return f"has adapters on norm layers ({norm}): {_lycoris_fix(spec, 'train_norm=True')}"
    if norm is None and spec.train_norm:
        return (
            "has no adapter on a norm layer, but this run trains them (train_norm=True): leave train_norm out"
        )
    return None


def _tucker_problem(weights: InitialWeights, spec: NetworkSpec) -> str | None:
    tucker = _first(weights.modules, lambda parts: bool(set(parts) & set(TUCKER_PARTS)))
    if tucker is not None and not spec.use_tucker:
        part = sorted(set(weights.modules[tucker]) & set(TUCKER_PARTS))[0]
        return f"has Tucker parts ({tucker}.{part}): {_lycoris_fix(spec, 'use_tucker=True')}"
    plain_conv = _first(weights.modules, lambda parts: _is_conv_3x3(parts) and "lora_mid.weight" not in parts)
    if spec.use_tucker and weights.algo == "lora" and plain_conv is not None:
        return f"has 3x3 convolutions without Tucker parts ({plain_conv}): leave use_tucker out"
    return None


def _dora_problem(weights: InitialWeights, spec: NetworkSpec) -> str | None:
    dora = _first(weights.modules, lambda parts: "dora_scale" in parts)
    if dora is not None and not spec.dora_wd:
        return f"has DoRA's dora_scale ({dora}.dora_scale): {_lycoris_fix(spec, 'dora_wd=True')}"
    if dora is None and spec.dora_wd:
        return "has no dora_scale (it is not DoRA), but this run trains DoRA: leave dora_wd out"
    if dora is None:
        return None
    run_on_output = spec.wd_on_output if "wd_on_output" in spec.given else False
    on_output = _scale_on_output(weights.modules[dora]["dora_scale"])
    if on_output is not None and on_output != run_on_output:
        layout = "per output row" if on_output else "per input column"
        return f"keeps DoRA's dora_scale {layout} ({dora}): set --network_args wd_on_output={on_output}"
    return None


def _ia3_problem(weights: InitialWeights, spec: NetworkSpec) -> str | None:
    if weights.algo != "ia3":
        return None
    first = _first(weights.modules, lambda parts: "on_input" in parts)
    on_input = bool(weights.modules[first]["on_input"].item())
    if on_input == spec.train_on_input:
        return None
    fix = "set --network_args train_on_input=True" if on_input else "leave train_on_input out"
    return f"scales each layer's {'input' if on_input else 'output'} (on_input): {fix}"


def _oft_problem(weights: InitialWeights, spec: NetworkSpec) -> str | None:
    if weights.algo not in ("diag-oft", "boft"):
        return None
    parts = weights.modules[_first(weights.modules, lambda parts: "oft_blocks" in parts)]
    constraint = float(parts["alpha"].item()) if "alpha" in parts else 0.0
    if not np.isclose(constraint, spec.constraint, rtol=1e-6, atol=0):
        return (
            f"has constraint {_shortest(constraint):g} (its alpha), but this run's is {spec.constraint:g}: "
            f"set --network_args constraint={_shortest(constraint):g}"
        )
    rescaled = "rescale" in parts
    if rescaled and not spec.rescaled:
        return "has OFT's rescale weights: set --network_args rescaled=True"
    if spec.rescaled and not rescaled:
        return "has no rescale weights, but this run trains them: leave rescaled out"
    return None


def _dylora_problem(weights: InitialWeights, spec: NetworkSpec) -> str | None:
    if spec.algo != "dylora":
        return None
    unit = spec.dylora_unit
    ranked = sorted(name for name, size in weights.sizes.items() if size.ranked)
    uneven = next((name for name in ranked if weights.sizes[name].dim % unit), None)
    if uneven is None:
        return None
    key = "unit" if spec.module != LYCORIS else "block_size"
    return (
        f"has {uneven} at rank {weights.sizes[uneven].dim}, which DyLoRA's {key} {unit} does not divide: "
        f"set --network_args {key} to a divisor of every rank of the file"
    )


def _kohya_oft_problem(weights: InitialWeights, spec: NetworkSpec) -> str | None:
    """kohya's OFT chooses its targets with enable_conv and enable_all_linear; its create_network_from_weights
    reads them from the file's names, here they must be the run's."""
    if weights.algo != "kohya-oft":
        return None
    for key, added_by_key in (("enable_conv", _in_conv_block), ("enable_all_linear", _in_transformer)):
        found = _first(weights.modules, added_by_key, by_name=True)
        if found is not None and not getattr(spec, key):
            return f"has adapters that need {key} (e.g. {found}): set --network_args {key}=True"
        if found is None and getattr(spec, key):
            return f"has no adapter that {key} adds: leave {key} out"
    return None


def _in_conv_block(name: str) -> bool:
    """A module of a ResNet block or sampler: kohya's targets outside a Transformer2DModel."""
    return not _in_transformer(name) and "_attn" not in name


def _in_transformer(name: str) -> bool:
    """A Linear or 1x1 convolution of a Transformer2DModel outside its attention (enable_all_linear's)."""
    return "_ff_" in name or name.endswith(("_proj_in", "_proj_out"))


def _article(name: str) -> str:
    return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"


def _run_flags(spec: NetworkSpec) -> str:
    if spec.module == LYCORIS:
        return f"--network_module {LYCORIS} --network_args algo={spec.algo}"
    return f"--network_module {spec.module}"


def _flags_for(algo: str) -> str:
    """The flags that train a file of type `algo`."""
    if algo == "lora":
        return "--network_module networks.lora, or lycoris.kohya with --network_args algo=locon"
    if algo == "kohya-oft":
        return f"--network_module {OFT}"
    return f"--network_module {LYCORIS} --network_args algo={algo}"


def _lycoris_fix(spec: NetworkSpec, arg: str) -> str:
    """How to turn on a LyCORIS option `arg`: a LyCORIS run adds it; kohya's own modules lack it."""
    if spec.module == LYCORIS:
        return f"add --network_args {arg}"
    return f"set --network_module {LYCORIS} --network_args algo=locon {arg}"


def _scale_on_output(scale: Tensor) -> bool | None:
    """Whether DoRA's scale is per output row ([out, 1, ...]) or per input column ([1, in, ...])."""
    rows, columns = scale.shape[0], scale.shape[1] if scale.dim() > 1 else 1
    if rows == columns:
        return None
    return columns == 1


def _is_conv_3x3(parts: Mapping[str, Tensor]) -> bool:
    """A LoRA/LoCon module on a convolution with a kernel larger than 1x1 (its down or mid weight)."""
    weight = parts.get("lora_mid.weight", parts.get("lora_down.weight"))
    return weight is not None and weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1)


def _first(modules: LoRAModules, test: Callable, by_name: bool = False) -> str | None:
    """The first module (by name) whose parts (or name) pass `test`."""
    return next((name for name in sorted(modules) if test(name if by_name else modules[name])), None)


def _file_alpha_per_trained(spec: NetworkSpec) -> int:
    """DyLoRA's file holds alpha x block_size (algorithms.adapter_state), what consumers read as alpha."""
    return spec.dylora_unit if spec.algo == "dylora" else 1


def _shortest(value: float) -> float:
    """The shortest decimal of the float32 value: the config (and ss_network_alpha) reads 0.1, not
    0.10000000149011612, and still turns back into exactly the file's alpha."""
    return float(str(np.float32(value)))


def _most_common(counts: Counter) -> int | float | None:
    """The value most modules have (the larger on a tie); None without any."""
    if not counts:
        return None
    return max(counts.items(), key=lambda item: (item[1], item[0]))[0]


def _counted(counts: Counter) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], -item[0]))
    return ", ".join(f"{value:g} on {count} module{'s' if count > 1 else ''}" for value, count in ordered)
