"""`loracraft train` with each image's noise and timesteps drawn from a seed made of its name, so two
runs that group the same images differently into steps (processes or accumulation) compute the same
gradients. As a script it is `loracraft` (`python -m torch.distributed.run ... noise_per_image.py
train ...`); `seeded_by_path` is the same patch for a run inside the test's process."""

import sys
import zlib
from pathlib import Path

import torch

from loracraft.cli import main
from loracraft.training import trainer


def seeded_by_path(diffusion_loss):
    """`diffusion_loss` that first seeds torch from the batch's image names (batches of one image)."""

    def same_noise_for_the_same_image(models, batch, device):
        names = "|".join(Path(path).name for path in batch["paths"])
        torch.manual_seed(zlib.crc32(names.encode()))
        return diffusion_loss(models, batch, device)

    return same_noise_for_the_same_image


if __name__ == "__main__":
    trainer.diffusion_loss = seeded_by_path(trainer.diffusion_loss)
    sys.exit(main(sys.argv[1:]))
