"""`loracraft train` whose process of rank POISON_RANK gets a NaN loss at its POISON_BATCH-th batch (counted
from 1), as an overflow on one GPU would give it; run as `python -m torch.distributed.run ...
nan_on_one_process.py train ...`."""

import math
import os
import sys

from loracraft.cli import main
from loracraft.training import trainer


def poisoned(diffusion_loss, batch_number: int):
    calls = []

    def loss(*args, **kwargs):
        calls.append(1)
        result = diffusion_loss(*args, **kwargs)
        return result * math.nan if len(calls) == batch_number else result

    return loss


if __name__ == "__main__":
    if os.environ["RANK"] == os.environ["POISON_RANK"]:
        trainer.diffusion_loss = poisoned(trainer.diffusion_loss, int(os.environ["POISON_BATCH"]))
    sys.exit(main(sys.argv[1:]))
