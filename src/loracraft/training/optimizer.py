"""The optimizer over the LoRA parameter groups."""

from __future__ import annotations

import torch

from loracraft.config.schema import TrainConfig


def build_optimizer(config: TrainConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW with the user's optimizer_args; each group keeps its own learning rate."""
    return torch.optim.AdamW(param_groups, lr=config.learning_rate, **config.optimizer_kwargs)


def describe_optimizer(config: TrainConfig) -> str:
    """kohya's ss_optimizer text: 'torch.optim.adamw.AdamW(weight_decay=0.01)'."""
    args = ",".join(config.optimizer_args)
    return f"torch.optim.adamw.AdamW({args})" if args else "torch.optim.adamw.AdamW"
