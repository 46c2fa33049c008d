"""Which modules get a LoRA: kohya's default targets (networks/lora.py), and with conv_dim its LoCon
targets (the ResNet blocks and the down/up-samplers).

U-Net: every Linear/Conv2d inside a `Transformer2DModel` (proj_in, proj_out, attn1/attn2 to_q/k/v/to_out.0,
ff.net.0.proj, ff.net.2): 192 modules on SD1.5 and SD2, 722 on SDXL. Text encoder: every Linear inside the
self-attention and MLP of each CLIP encoder layer (q/k/v/out_proj, fc1, fc2): 72 on CLIP ViT-L, 138 on
SD2's 23-layer OpenCLIP ViT-H, 192 on SDXL's ViT-bigG (whose `text_projection` is not a target).
"""

import re
from typing import NamedTuple

from diffusers import Transformer2DModel
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from loracraft.networks.kohya_names import TEXT_ENCODER_PREFIX, text_encoder_lora_name, unet_namer

# transformers 4.x nests the encoder under `text_model.`; 5.x `CLIPTextModel` does not. Matching the
# attribute names (self_attn, mlp) instead of class names also covers CLIPSdpaAttention and friends.
_CLIP_LAYER_CHILD = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.(self_attn|mlp)\.(.+)$")


class LoRATarget(NamedTuple):
    path: str
    """Dotted module path inside its model, as the model's `named_modules()` spells it."""
    name: str
    """kohya module name: the key prefix in the LoRA file."""
    module: nn.Module


# kohya's UNET_TARGET_REPLACE_MODULE_CONV2D_3X3, added to the targets when conv_dim is given.
CONV_BLOCKS = (ResnetBlock2D, Downsample2D, Upsample2D)


def unet_targets(
    unet: nn.Module, family: str, containers: tuple[type[nn.Module], ...] = (Transformer2DModel,)
) -> list[LoRATarget]:
    """Linear and Conv2d modules inside the U-Net's `containers` (kohya's: the Transformer2DModel blocks;
    add CONV_BLOCKS for LoCon), in module order, named for the model family (`unet` is a diffusers
    UNet2DConditionModel; SDXL names need its config)."""
    name = unet_namer(family, unet.config)
    targets = []
    for block_path, block in unet.named_modules():
        if not isinstance(block, containers):
            continue
        for child_path, child in block.named_modules():
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                path = ".".join(p for p in (block_path, child_path) if p)
                targets.append(LoRATarget(path, name(path), child))
    return targets


def text_encoder_targets(text_encoder: nn.Module, prefix: str = TEXT_ENCODER_PREFIX) -> list[LoRATarget]:
    """Linear modules inside each CLIP encoder layer's self_attn and mlp, in module order."""
    targets = []
    for path, module in text_encoder.named_modules():
        match = _CLIP_LAYER_CHILD.match(path)
        if match and isinstance(module, nn.Linear):
            layer, container, leaf = int(match[1]), match[2], match[3]
            targets.append(LoRATarget(path, text_encoder_lora_name(layer, container, leaf, prefix), module))
    return targets


def is_conv_3x3(module: nn.Module) -> bool:
    """A convolution with a kernel larger than 1x1: kohya gives it conv_dim/conv_alpha, while Linear
    layers and 1x1 convolutions (proj_in, conv_shortcut) take network_dim/network_alpha."""
    return isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)
