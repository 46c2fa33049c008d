"""The optimizer: kohya's names (registry), building and checking it (build), and what the loop reads from
it while training (running)."""

from loracraft.training.optimizer.build import (
    build_optimizer,
    check_optimizer,
    choose_optimizer,
    describe_optimizer,
)
from loracraft.training.optimizer.running import evaluation_weights, learning_rates

__all__ = [
    "build_optimizer",
    "check_optimizer",
    "choose_optimizer",
    "describe_optimizer",
    "evaluation_weights",
    "learning_rates",
]
