"""--network_weights and --dim_from_weights: a run whose LoRA starts from an existing LoRA file.

Not a resume: the file gives only the network's initial weights; the optimizer, the learning-rate
schedule and the step count start fresh (--resume continues a saved training state instead).

Where kohya leaves the choice open or traps the user, loracraft decides:
- The file must name exactly the modules this run trains, at this run's rank. kohya loads it with
  `strict=False`, so a file made for other modules silently trains from scratch, and modules the run
  does not train disappear from the files it saves.
- `--dim_from_weights` takes the rank from the file instead of --network_dim. The file must have one
  rank and one alpha for every module: kohya can build per-module ranks from a file, but loracraft's
  network has one rank (build_lora_network), so such a file is refused in one line.
- The file's alpha is kept. kohya keeps the scale --network_alpha gives (its FIXME) yet saves the file's
  alpha, so its saved LoRA computes something other than what it trained. Here the run's alpha becomes
  the file's, with a note when --network_alpha said otherwise: the LoRA starts out computing exactly
  what the file does in A1111, and the saved files (tensors and ss_network_alpha) record that alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from loracraft.config.load import updated_config
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.networks.lora_input import (
    LoRAModules,
    check_naming_family,
    module_alpha,
    module_rank,
    read_lora_modules,
)
from loracraft.networks.lora_network import LoRANetwork

FLAG = "network_weights"


@dataclass(frozen=True)
class InitialWeights:
    """The --network_weights file, read and checked against the base model's family."""

    path: str
    modules: LoRAModules
    rank: int
    alpha: float
    """As consumers apply it (a missing or zero alpha is the rank), at the float32 precision files keep."""

    @classmethod
    def read(cls, path: str, family: str) -> InitialWeights:
        modules = read_lora_modules(path, FLAG)
        check_naming_family(modules, family, FLAG, path)
        rank = int(_one_value(modules, module_rank, "rank", path))
        alpha = _one_value(modules, module_alpha, "alpha", path)
        # The shortest decimal of the float32 alpha: the config (and ss_network_alpha) reads 0.1, not
        # 0.10000000149011612, and still turns back into exactly the file's alpha.
        return cls(path, modules, rank, float(str(np.float32(alpha))))

    def run_settings(self, config: TrainConfig) -> tuple[TrainConfig, tuple[str, ...]]:
        """`config` with the file's rank (--dim_from_weights) and alpha, and a note for each value the
        user gave otherwise. Without --dim_from_weights, a rank other than --network_dim's is refused."""
        updates: dict[str, float] = {}
        notes = []
        if config.dim_from_weights:
            if config.network_dim is not None and config.network_dim != self.rank:
                notes.append(
                    f"--dim_from_weights: rank {self.rank} from {self.path}, not --network_dim {config.network_dim}"
                )
            if config.network_dim != self.rank:
                updates["network_dim"] = self.rank
        elif config.network_rank != self.rank:
            raise UserError(
                f"--network_weights {self.path} has rank {self.rank}, but --network_dim is {config.network_rank}: "
                f"set --network_dim {self.rank}, or add --dim_from_weights"
            )
        given_alpha = config.network_alpha or self.rank  # alpha 0 means alpha = rank
        if not np.isclose(given_alpha, self.alpha, rtol=1e-6, atol=0):
            updates["network_alpha"] = self.alpha
            notes.append(
                f"--network_weights {self.path} has alpha {self.alpha:g} (rank {self.rank}): training keeps "
                f"it, not --network_alpha {config.network_alpha:g}, so the LoRA starts out computing what "
                f"the file does; the saved files record alpha {self.alpha:g}"
            )
        return (updated_config(config, updates) if updates else config), tuple(notes)

    def load_into(self, network: LoRANetwork) -> None:
        """Set the network's weights and alpha to the file's (strict: the same modules and shapes)."""
        state: dict[str, Tensor] = {}
        for name, parts in self.modules.items():
            state[f"{name}.lora_down.weight"] = parts["lora_down.weight"]
            state[f"{name}.lora_up.weight"] = parts["lora_up.weight"]
            state[f"{name}.alpha"] = torch.tensor(self.alpha)
        network.load_kohya_state_dict(state, source=f"--network_weights {self.path}")


def initial_weights_settings(config: TrainConfig, family: str) -> tuple[TrainConfig, tuple[str, ...]]:
    """The run's settings once the base model's family is known: with --network_weights, its rank
    (--dim_from_weights) and alpha, and the notes saying so; `config` unchanged without it."""
    if not config.network_weights:
        return config, ()
    return InitialWeights.read(config.network_weights, family).run_settings(config)


def _one_value(
    modules: LoRAModules, value_of: Callable[[dict[str, Tensor]], float], what: str, path: str
) -> float:
    values = {name: value_of(modules[name]) for name in sorted(modules)}
    first_name, first = next(iter(values.items()))
    other = next(((name, value) for name, value in values.items() if value != first), None)
    if other is not None:
        raise UserError(
            f"--network_weights {path} has different {what}s per module ({first_name}: {first:g}, "
            f"{other[0]}: {other[1]:g}); loracraft trains one {what} for every module: start from a LoRA "
            f"with one {what}"
        )
    return first
