"""Run settings: the sample images drawn while the LoRA trains."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

from loracraft.config.fields import OUTPUT, flag
from loracraft.config.rules import RuleViolation
from loracraft.config.values import OptionalPath

# kohya's --sample_sampler choices, in its order (train_util.add_training_arguments).
SAMPLERS = (
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
    "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)  # fmt: skip


def _zero_is_off(value: Any) -> Any:
    # kohya turns 0 or less into "not set" (with a warning); the kohya_ss GUI writes 0 for "off".
    if value == "" or (isinstance(value, int | float) and not isinstance(value, bool) and value <= 0):
        return None
    return value


OptionalInterval = Annotated[int | None, BeforeValidator(_zero_is_off)]


class SampleOptions(BaseModel):
    """When sample images are drawn during training, with which prompts and which sampler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_every_n_steps: OptionalInterval = flag(
        None,
        OUTPUT,
        "Draw sample images every N optimizer steps (0 = never); ignored when sample_every_n_epochs is set.",
    )
    sample_every_n_epochs: OptionalInterval = flag(
        None,
        OUTPUT,
        "Draw sample images at the end of every N-th epoch (0 = never); overrides sample_every_n_steps.",
    )
    sample_at_first: bool = flag(False, OUTPUT, "Draw sample images once before the first step.")
    sample_sampler: Literal[SAMPLERS] = flag(
        "ddim",
        OUTPUT,
        "Sampler of the sample images (a prompt's --ss overrides it): " + ", ".join(SAMPLERS) + ".",
        gui_default="euler_a",
    )
    sample_prompts: OptionalPath = flag(
        None,
        OUTPUT,
        "Prompts of the sample images: a .txt (one prompt a line with kohya's --n negative, --w/--h size, --d "
        "seed, --s steps, --l CFG scale, --ss sampler), a .toml ([prompt] defaults and [[prompt.subset]] "
        "entries) or a .json (a list of prompts or of tables). Read again at every sampling, so it can be "
        "edited while the run trains. Images go to OUTPUT/sample/.",
    )

    @model_validator(mode="after")
    def _prompts_for_samples(self) -> SampleOptions:
        if self.sample_prompts:
            return self
        for name in ("sample_every_n_epochs", "sample_every_n_steps", "sample_at_first"):
            if getattr(self, name):
                raise RuleViolation(
                    f"`{name}` needs the prompts of the sample images: add `sample_prompts` FILE (.txt, .toml or .json)"
                )
        return self

    @property
    def draws_samples(self) -> bool:
        return bool(self.sample_prompts) and bool(
            self.sample_at_first or self.sample_every_n_epochs or self.sample_every_n_steps
        )
