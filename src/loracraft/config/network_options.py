"""Run settings: the LoRA network."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from loracraft.config.fields import NETWORK, flag
from loracraft.config.rules import RuleViolation
from loracraft.config.values import OptionalPath


class NetworkOptions(BaseModel):
    """The adapters: rank, alpha, which models they go on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network_dim: int | None = flag(
        None,
        NETWORK,
        "LoRA rank: the size of the added low-rank matrices; empty = 4 (kohya's networks.lora default).",
        ss_key="ss_network_dim",
        ge=1,
        gui_default=8,
    )
    network_alpha: float = flag(
        1.0,
        NETWORK,
        "LoRA alpha. The update is scaled by alpha/rank, so alpha 1 with rank 32 trains 1/32 as strongly as "
        "alpha 32. 0 means alpha = rank.",
        ss_key="ss_network_alpha",
        ge=0,
    )
    network_train_unet_only: bool = flag(False, NETWORK, "Train LoRA on the U-Net only (no text encoder).")
    network_train_text_encoder_only: bool = flag(False, NETWORK, "Train LoRA on the text encoder only.")
    # What loracraft decides where kohya loads with strict=False and keeps --network_alpha's scale:
    # networks/initial_weights.py.
    network_weights: OptionalPath = flag(
        None,
        NETWORK,
        "Start from an existing LoRA file (.safetensors, .ckpt, .pt): its weights are the network's "
        "initial values. Not a resume: the optimizer and the learning-rate schedule start fresh. The file "
        "must have exactly the modules this run trains, at --network_dim's rank (or add "
        "--dim_from_weights). Its alpha is kept, so training starts from what the file computes: unlike "
        "kohya, which keeps --network_alpha's scale and then saves the file's alpha; the saved files "
        "record the alpha used.",
    )
    dim_from_weights: bool = flag(
        False,
        NETWORK,
        "Take the rank from --network_weights instead of --network_dim. The file must have one rank for "
        "every module (kohya can build a rank per module; loracraft trains one rank).",
    )

    @model_validator(mode="after")
    def _dim_from_weights_needs_weights(self) -> NetworkOptions:
        if self.dim_from_weights and not self.network_weights:
            raise RuleViolation(
                "`dim_from_weights` reads the rank from `network_weights`: give `network_weights` FILE, "
                "or drop `dim_from_weights`"
            )
        return self

    @property
    def network_rank(self) -> int:
        """--network_dim, or 4 when it is not given (kohya's networks.lora default)."""
        return self.network_dim or 4
