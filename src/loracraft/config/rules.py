"""Rules between settings, written once and shown in the words of where the settings came from.

A rule's message names settings in backticks: "`min_bucket_reso` 1024 is larger than `max_bucket_reso`
512". On the command line that reads `--min_bucket_reso 1024 ...`; in a dataset TOML table it reads with
the table's key names (`batch_size`, not `--train_batch_size`), while settings that exist only as flags
keep their `--`. So one rule serves the flags and every TOML table, and its message fits both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loracraft.config.schema import TrainConfig
    from loracraft.config.subset_options import SubsetOptions

_NAME = re.compile(r"`(\w+)`")


class RuleViolation(ValueError):
    """A broken rule; `str()` reads as flags, `for_table` as the keys of a TOML table."""

    def __init__(self, template: str) -> None:
        super().__init__(_NAME.sub(lambda match: f"--{match.group(1)}", template))
        self.template = template

    def for_table(self, table_keys: Mapping[str, str]) -> str:
        """The message with the settings a table holds named by their key (`table_keys`: field -> key)."""
        return _NAME.sub(lambda match: table_keys.get(match.group(1), f"--{match.group(1)}"), self.template)


def run_conflict_with_subset(run: TrainConfig, subset: SubsetOptions) -> RuleViolation | None:
    """What the run's caches forbid in one folder's options (as flags, `subset` is the run itself)."""
    changing = subset.changes_pixels_each_epoch
    if run.cache_latents and changing:
        return RuleViolation(
            f"`{changing}` changes the pixels every epoch, so latents cannot be cached: drop `{changing}` "
            "or set `cache_latents` false (flip_aug works with the cache)"
        )
    changing = subset.changes_caption_each_epoch
    if run.cache_text_encoder_outputs and changing:
        return RuleViolation(
            f"`cache_text_encoder_outputs` needs captions that never change, but `{changing}` changes them "
            "each epoch; drop one of the two"
        )
    if subset.conditioning_data_dir and not run.masked_loss:
        return RuleViolation(
            "`conditioning_data_dir` holds loss masks, which only `masked_loss` applies: add `masked_loss`"
        )
    return None
