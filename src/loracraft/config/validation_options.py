"""Run settings: when the validation loss is measured, and on how many batches.

Which images are held out is a dataset setting (`validation_split`, `validation_seed` in
`dataset_options.py`; a dataset TOML's `is_validation` subsets). These three only say when the held-out
images are evaluated, so they change nothing the run trains: a resumed run may change them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from loracraft.config.fields import OUTPUT, flag


class ValidationOptions(BaseModel):
    """kohya's validation schedule flags, with its names and defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validate_every_n_steps: int | None = flag(
        None,
        OUTPUT,
        "Also measure the validation loss every N optimizer steps. Empty: at the end of epochs only.",
        ss_key="ss_validate_every_n_steps",
        ge=1,
    )
    validate_every_n_epochs: int | None = flag(
        None,
        OUTPUT,
        "Measure the validation loss at the end of every N-th epoch. Empty: every epoch, when there is a "
        "validation set (validation_split above 0, or a dataset TOML subset with is_validation = true).",
        ss_key="ss_validate_every_n_epochs",
        ge=1,
    )
    max_validation_steps: int | None = flag(
        None,
        OUTPUT,
        "Evaluate at most N batches of the validation set each time (always the same ones). Empty: all.",
        ss_key="ss_max_validation_steps",
        ge=1,
    )
