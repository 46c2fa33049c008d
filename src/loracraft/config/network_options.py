"""Run settings: the LoRA network."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from loracraft.config.fields import NETWORK, flag


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

    @property
    def network_rank(self) -> int:
        """--network_dim, or 4 when it is not given (kohya's networks.lora default)."""
        return self.network_dim or 4
