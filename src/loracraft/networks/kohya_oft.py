"""kohya's OFT (`--network_module networks.oft`, sd-scripts networks/oft.py): the same targets, math and file.

Each targeted layer's output rows are split into `--network_dim` equal blocks, and every block is rotated
by its own orthogonal matrix R = (I + Q)(I - Q)^-1 (Cayley transform) of the skew-symmetric Q = B - B^T,
B being the trained `oft_blocks`. Q is scaled down, across all blocks of the layer together, to a
Frobenius norm of at most constraint = --network_alpha x the layer's output width; the multiplier moves R
linearly from I (R' = I + multiplier (R - I)). The layer then computes with the weight R'^T W, block by
block. `oft_blocks` start at zero, so training starts from the base model.

Targets are on the U-Net only (kohya's OFT never trains a text encoder): the attention projections
(to_q, to_k, to_v, to_out.0) by default; every Linear and 1x1 convolution of the transformer blocks with
`enable_all_linear`; plus every layer of the ResNet blocks and down/up-samplers with `enable_conv`.
Names are kohya's LoRA names with the prefix `oft_unet` (SD1/SD2 diffusers paths, SDXL LDM paths); a
module's file tensors are `NAME.oft_blocks` [blocks, width / blocks, width / blocks] and `NAME.alpha`.

Where kohya would go wrong, loracraft stops first, in one line: a --network_dim that does not divide
every layer's width (kohya crashes at the first step), blocks of one row and --network_alpha 0 (kohya
trains nothing: a 1x1 skew-symmetric matrix is 0, a zero constraint clamps every rotation to I). A file's alpha, when loaded, also sets the constraint
(kohya keeps --network_alpha's and then saves the file's alpha).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers import Transformer2DModel
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

from loracraft.errors import UserError
from loracraft.networks.kohya_names import UNET_PREFIX
from loracraft.networks.lora_network import LoRANetwork
from loracraft.networks.targets import CONV_BLOCKS, LoRATarget, unet_targets

if TYPE_CHECKING:
    from loracraft.networks.network_spec import NetworkSpec

OFT_PREFIX = "oft_unet"
# kohya's OFTModule adds this to the clamped and the raw norm, so an all-zero Q keeps its scale of 1.
_EPSILON = 1e-8


def oft_rotation(oft_blocks: Tensor, constraint: float, multiplier: float = 1.0) -> Tensor:
    """kohya's weighted rotation of every block, [blocks, size, size]: R = (I + Q)(I - Q)^-1 with the
    skew-symmetric Q = B - B^T scaled to a norm of at most `constraint`, then I + multiplier (R - I).

    The identity is float32, as kohya's, so a half-precision B still gets a float32 rotation."""
    size = oft_blocks.shape[-1]
    eye = torch.eye(size, device=oft_blocks.device)
    skew = oft_blocks - oft_blocks.transpose(1, 2)
    norm = torch.norm(skew.flatten())
    skew = skew * ((torch.clamp(norm, max=constraint) + _EPSILON) / (norm + _EPSILON))
    rotation = torch.matmul(eye + skew, (eye - skew).float().inverse())
    return multiplier * (rotation - eye) + eye


def rotate_weight(rotation: Tensor, weight: Tensor) -> Tensor:
    """R^T W for each block of W's output rows (a Linear's or a Conv2d's weight, any kernel)."""
    blocks, size, _ = rotation.shape
    rows = weight.reshape(blocks, size, -1)
    return torch.einsum("knm,knp->kmp", rotation, rows).reshape(weight.shape)


class KohyaOFTModule(nn.Module):
    """kohya's OFTModule for one Linear or Conv2d: `oft_blocks` (trained) and the `alpha` buffer are its
    state dict, exactly a kohya OFT file's tensors for this module. The original module stays out of this
    module's parameters (kept in a plain list); `apply_to()` makes the original's forward this one's."""

    def __init__(self, oft_name: str, org_module: nn.Module, multiplier: float, dim: int, alpha: float):
        """`dim` is the number of blocks (--network_dim), `alpha` the constraint (--network_alpha)."""
        super().__init__()
        self.lora_name = oft_name
        self.multiplier = multiplier
        self.out_dim = output_width(org_module)
        check_oft_settings(dim, alpha, [self.out_dim])
        self.num_blocks = dim
        self.block_size = self.out_dim // dim
        self.constraint = float(alpha) * self.out_dim
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.oft_blocks = nn.Parameter(torch.zeros(dim, self.block_size, self.block_size))
        self.org_module = [org_module]
        self.org_forward = org_module.forward

    def apply_to(self) -> None:
        """Route the original module's calls through this module."""
        self.org_forward = self.org_module[0].forward
        self.org_module[0].forward = self.forward

    def rotation(self) -> Tensor:
        return oft_rotation(self.oft_blocks, self.constraint, self.multiplier)

    def forward(self, x: Tensor) -> Tensor:
        if self.multiplier == 0.0:
            return self.org_forward(x)
        module = self.org_module[0]
        # float32 rotation and weight, cast to the input's dtype for the layer's own operation, as kohya does
        weight = rotate_weight(self.rotation().to(torch.float32), module.weight.to(torch.float32))
        weight = weight.to(x.dtype)
        if isinstance(module, nn.Conv2d):
            return F.conv2d(
                x, weight, module.bias, module.stride, module.padding, module.dilation, module.groups
            )
        return F.linear(x, weight, module.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # The loaded alpha is the constraint the file was trained and will be saved with.
        if f"{prefix}alpha" in state_dict:
            self.constraint = float(self.alpha) * self.out_dim


def output_width(module: nn.Module) -> int:
    """The rows OFT rotates: a Linear's out_features, a Conv2d's out_channels."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    raise TypeError(f"kohya's OFT adapts Linear and Conv2d layers, not {type(module).__name__}")


def check_oft_settings(dim: int, alpha: float, widths: Sequence[int]) -> None:
    """Refuse what kohya would crash on or silently not train: a block count that does not split every
    width into equal blocks (a crash at the first step), blocks of one row (a 1x1 skew-symmetric Q is 0, so
    the layer never rotates) and a zero constraint (every rotation clamped to the identity)."""
    bad = sorted({width for width in widths if width % dim or width // dim < 2})
    if bad:
        common = math.gcd(*widths)
        choices = [str(d) for d in (2, 4, 8, 16, 32) if common % d == 0 and common // d >= 2] or ["1"]
        raise UserError(
            f"--network_dim {dim}: networks.oft splits each layer's output into --network_dim equal blocks of "
            f"2 or more rows, which the widths {', '.join(map(str, bad))} do not allow; use a divisor of "
            f"{common} such as {', '.join(choices)}"
        )
    if alpha <= 0:
        raise UserError(
            f"--network_alpha {alpha:g}: networks.oft reads --network_alpha as its constraint, and 0 keeps "
            "every rotation at the identity, so nothing trains; use a small value such as 1e-3"
        )


def oft_unet_targets(
    unet: nn.Module, family: str, enable_all_linear: bool, enable_conv: bool
) -> list[LoRATarget]:
    """kohya's OFT targets of a diffusers U-Net, in module order, under their `oft_unet_` names.

    kohya's rule, on its own U-Net's classes: the Linear and 1x1 Conv2d children of every `CrossAttention`
    (diffusers' `Attention`), or of every `Transformer2DModel` with enable_all_linear; with enable_conv
    also every Linear and Conv2d of `ResnetBlock2D`, `Downsample2D` and `Upsample2D`."""
    containers: tuple[type[nn.Module], ...] = (Transformer2DModel,) if enable_all_linear else (Attention,)
    if enable_conv:
        containers += CONV_BLOCKS
    return [
        target._replace(name=OFT_PREFIX + target.name.removeprefix(UNET_PREFIX))
        for target in unet_targets(unet, family, containers)
    ]


def kohya_oft_adapters(
    targets: Sequence[LoRATarget], multiplier: float, dim: int, alpha: float
) -> list[KohyaOFTModule]:
    """One KohyaOFTModule per target (not yet applied), after checking --network_dim against every width
    at once, so the error lists them all."""
    check_oft_settings(dim, alpha, [output_width(target.module) for target in targets])
    return [KohyaOFTModule(target.name, target.module, multiplier, dim, alpha) for target in targets]


def build_kohya_oft_network(unet: nn.Module, family: str, spec: NetworkSpec, dim: int) -> LoRANetwork:
    """kohya's OFT network of the U-Net (not yet applied): `dim` blocks per layer (--network_dim), the
    constraint from --network_alpha (spec.constraint), the targets enable_all_linear / enable_conv choose."""
    targets = oft_unet_targets(unet, family, spec.enable_all_linear, spec.enable_conv)
    return LoRANetwork(kohya_oft_adapters(targets, 1.0, dim, spec.constraint), [], family)
