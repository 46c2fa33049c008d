"""Run settings: the LoRA network."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from loracraft.config.fields import NETWORK, flag
from loracraft.config.rules import RuleViolation
from loracraft.config.values import OptionalPath
from loracraft.errors import UserError
from loracraft.networks.network_spec import network_spec

# kohya module names loracraft does not train, each with what to use instead.
_OTHER_MODULES = {
    "networks.lora_fa": "LoRA-FA (a LoRA whose lora_down stays frozen) is not supported; use networks.lora",
    "networks.loha": "kohya's native LoHa: use lycoris.kohya with --network_args algo=loha, the same LoHa",
    "networks.lokr": "kohya's native LoKr: use lycoris.kohya with --network_args algo=lokr, the same LoKr",
    "locon.locon_kohya": "the old LoCon extension: use networks.lora with --network_args conv_dim=N",
}


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
    network_module: Literal["networks.lora", "networks.dylora", "networks.oft", "lycoris.kohya"] = flag(
        "networks.lora",
        NETWORK,
        "The network type, as kohya names its module: networks.lora (LoRA; LoCon with --network_args "
        "conv_dim=N), networks.dylora (DyLoRA), networks.oft (kohya's OFT) or lycoris.kohya (LyCORIS: "
        "--network_args algo=lora, locon, loha, lokr, ia3, dylora, glora, diag-oft, boft or full). kohya has "
        "no default; the kohya_ss GUI's LoRA type Standard is networks.lora.",
        ss_key="ss_network_module",
    )
    network_args: list[str] = flag(
        [],
        NETWORK,
        "Options of the network type as key=value (kohya's format). networks.lora: conv_dim, conv_alpha "
        "(adapters on the ResNet and down/up-sampler 3x3 convolutions too), rank_dropout, module_dropout, "
        "dropout, loraplus_lr_ratio, loraplus_unet_lr_ratio, loraplus_text_encoder_lr_ratio (LoRA+: lora_up "
        "learns this many times faster; 16 is the paper's value) and the per-block keys down_lr_weight, "
        "mid_lr_weight, up_lr_weight, block_lr_zero_threshold, block_lr, block_dims, block_alphas, "
        "conv_block_dims, conv_block_alphas. networks.dylora: the same and unit. networks.oft: "
        "enable_all_linear, enable_conv (its constraint is --network_alpha). lycoris.kohya: algo, preset "
        "(full, full-lin, attn-mlp, attn-only, unet-only, unet-transformer-only, unet-convblock-only or a "
        "preset .toml file), conv_dim, conv_alpha (default --network_dim and --network_alpha), use_tucker, "
        "use_scalar, dora_wd and wd_on_output (DoRA), factor, decompose_both and full_matrix (LoKr), "
        "constraint and rescaled (OFT, BOFT), block_size (DyLoRA), train_on_input (IA3), rank_dropout_scale, "
        "train_norm, bypass_mode, the dropouts, LoRA+ and block keys. Every module: target_module (module "
        "class names), exclude_patterns and include_patterns (regular expressions matched against whole "
        "module names; one, or a Python list: exclude_patterns=['.*attn2.*']). Unlike kohya, an unknown key "
        "or one the chosen type does not use stops the run.",
    )
    network_dropout: float | None = flag(
        None,
        NETWORK,
        "Neuron dropout: the fraction of each adapter's rank activations dropped at random every step "
        "(empty or 0: none; the guides use 0.1). It damps training, so the LoRA follows prompts more loosely "
        "and needs more steps. LyCORIS receives it as its dropout network arg, as kohya passes it.",
        ss_key="ss_network_dropout",
        ge=0,
        lt=1,
    )
    scale_weight_norms: float | None = flag(
        None,
        NETWORK,
        "Max-norm regularisation: after every step, each module whose weight change has a norm above this "
        "value is scaled back to it, against overtraining; the log shows the keys scaled and the average key "
        "norm (keys scaled climbing step after step is a sign of an overcooked U-Net). 1 is a common start; "
        "too small a value stops learning. Empty or 0: off.",
        ss_key="ss_scale_weight_norms",
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
        "must be of this run's network type and options and have exactly the modules this run trains, at "
        "--network_dim's rank (or add --dim_from_weights). Its alpha is kept, so training starts from what the file computes: unlike "
        "kohya, which keeps --network_alpha's scale and then saves the file's alpha; the saved files "
        "record the alpha used.",
    )
    dim_from_weights: bool = flag(
        False,
        NETWORK,
        "Take each module's rank and alpha from --network_weights instead of --network_dim, as kohya's "
        "create_network_from_weights builds the network from the file (3x3 convolutions included).",
    )

    @field_validator("network_module", mode="before")
    @classmethod
    def _other_kohya_modules(cls, value: Any) -> Any:
        if value in _OTHER_MODULES:
            raise ValueError(_OTHER_MODULES[value])
        return value

    @model_validator(mode="after")
    def _network_args_apply(self) -> NetworkOptions:
        try:
            network_spec(self)
        except UserError as err:
            raise RuleViolation(str(err)) from None
        return self

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
