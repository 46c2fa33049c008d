"""The rank and alpha each targeted module gets: one network-wide value (--network_dim/--network_alpha, the
3x3 convolutions conv_dim/conv_alpha), kohya's per-block values (block_dims, conv_block_dims, ...), or the
values of a --network_weights file read with --dim_from_weights (kohya's create_network_from_weights)."""

from collections.abc import Mapping
from dataclasses import dataclass

from loracraft.networks.blocks import BlockDims, block_index
from loracraft.networks.targets import LoRATarget, is_conv_3x3

RankAlpha = tuple[int, float | None]
"""(rank, alpha); alpha None or 0 means alpha = rank (scale 1), as kohya reads --network_alpha 0."""


@dataclass(frozen=True)
class ModuleRanks:
    rank: int
    alpha: float | None
    conv: RankAlpha | None = None
    """conv_dim and conv_alpha, for convolutions with a kernel larger than 1x1; None: kohya's LoRA without
    LoCon, whose targets hold no such convolution."""
    family: str = "sd1"
    blocks: BlockDims | None = None
    """Per-block values of the U-Net's modules; modules outside kohya's blocks keep the network-wide ones."""
    from_file: Mapping[str, RankAlpha] | None = None
    """kohya name -> (rank, alpha) of every module of a --network_weights file: only those modules train."""

    def of(self, target: LoRATarget, in_unet: bool) -> RankAlpha | None:
        """The module's (rank, alpha), or None when it gets no adapter (rank 0 in its block, or absent
        from the file the network is built from)."""
        if self.from_file is not None:
            return self.from_file.get(target.name)
        conv3x3 = is_conv_3x3(target.module)
        block = block_index(target.name, self.family) if in_unet and self.blocks is not None else None
        if block is not None and self.blocks is not None:
            return self.blocks.rank_and_alpha(block, conv3x3)
        if conv3x3:
            return self.conv
        return self.rank, self.alpha

    @property
    def trains_convolutions(self) -> bool:
        """Whether kohya's LoCon targets (ResNet blocks, samplers) are candidates: with conv_dim or
        conv_block_dims, or a file that may hold them (its names decide)."""
        if self.from_file is not None:
            return True
        return self.conv is not None or (self.blocks is not None and self.blocks.conv_dims is not None)
