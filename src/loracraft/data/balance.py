"""kohya's regularization balancing (reference §4.2): an epoch holds about as many reg samples as train
samples, whatever the reg folders' repeat counts say."""

from collections.abc import Sequence


def balance_reg_repeats(num_train_samples: int, folder_repeats: Sequence[int]) -> list[int]:
    """How often each reg image is used per epoch, in the order given; 0 means the image is unused.

    The first pass takes each reg image with its folder's repeats; later passes add one repeat per
    image, cycling. Both stop as soon as the reg samples reach `num_train_samples`, so with more reg
    samples than train samples the images at the end of the list are never used.
    """
    repeats = [0] * len(folder_repeats)
    total = 0
    first_pass = True
    while folder_repeats and total < num_train_samples:
        for i, folder_repeat in enumerate(folder_repeats):
            added = folder_repeat if first_pass else 1
            repeats[i] += added
            total += added
            if total >= num_train_samples:
                break
        first_pass = False
    return repeats
