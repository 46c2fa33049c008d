"""The settings one image folder (a kohya subset) may have of its own: captions and augmentation.

Each is a command-line flag for every folder, and a key that a dataset TOML's `[general]`, `[[datasets]]`
or `[[datasets.subsets]]` table may set for its folders (kohya's "ascendable" subset keys). The rules
here run on the flags and on every resolved TOML subset alike.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from loracraft.config.fields import AUGMENT, CAPTIONS, DATASET, flag
from loracraft.config.values import OptionalPath


def parse_face_crop_range(value: Any) -> tuple[float, float] | None:
    """`"2.0,4.0"` (the flag) or `[2.0, 4.0]` (TOML) -> (2.0, 4.0); lo must be positive and <= hi."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise ValueError(f"face_crop_aug_range {value!r} is not 'LOW,HIGH', e.g. 2.0,4.0") from None
    if not 0 < low <= high:
        raise ValueError(f"face_crop_aug_range needs 0 < LOW <= HIGH, got {low},{high}")
    return low, high


FaceCropRange = Annotated[tuple[float, float] | None, BeforeValidator(parse_face_crop_range)]


class SubsetOptions(BaseModel):
    """Caption and augmentation settings of one image folder, in kohya's names, units and defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    caption_extension: str = flag(
        ".caption",
        DATASET,
        "Extension of the caption file beside each image. If it is missing but a .txt with the same stem "
        "exists, the .txt is used and a warning says so. No caption file: the concept name of the folder.",
        gui_default=".txt",
        aliases=("caption_extention",),
    )
    shuffle_caption: bool = flag(
        False,
        CAPTIONS,
        "Shuffle the caption's tags (split at caption_separator) each time.",
        ss_key="ss_shuffle_caption",
        ss_folders_only=True,
        in_subset_record=True,
    )
    caption_separator: str = flag(",", CAPTIONS, "Separator between tags.", min_length=1)
    keep_tokens: int = flag(
        0,
        CAPTIONS,
        "Keep the first N tags in place when shuffling or dropping tags.",
        ss_key="ss_keep_tokens",
        ss_folders_only=True,
        ge=0,
        in_subset_record=True,
    )
    keep_tokens_separator: str = flag(
        "",
        CAPTIONS,
        "A marker in the caption: tags before it stay fixed, tags after it are shuffled (overrides keep_tokens).",
        in_subset_record=True,
    )
    secondary_separator: str | None = flag(
        None,
        CAPTIONS,
        "Separator inside a tag group that is kept together, replaced by caption_separator after shuffling.",
        in_subset_record=True,
    )
    caption_prefix: str | None = flag(None, CAPTIONS, "Text put before every caption.", in_subset_record=True)
    caption_suffix: str | None = flag(None, CAPTIONS, "Text put after every caption.", in_subset_record=True)
    caption_dropout_rate: float = flag(
        0.0,
        CAPTIONS,
        "Chance of training an image with an empty caption.",
        ss_key="ss_caption_dropout_rate",
        ge=0,
        le=1,
    )
    caption_dropout_every_n_epochs: int = flag(
        0,
        CAPTIONS,
        "Train with empty captions every N-th epoch; 0 = never.",
        ss_key="ss_caption_dropout_every_n_epochs",
        ge=0,
    )
    caption_tag_dropout_rate: float = flag(
        0.0,
        CAPTIONS,
        "Chance of dropping each (not kept) tag.",
        ss_key="ss_caption_tag_dropout_rate",
        ge=0,
        le=1,
    )
    token_warmup_min: int = flag(
        1,
        CAPTIONS,
        "Caption token warm-up: the number of (not kept) tags a caption starts with at step 0.",
        ge=0,
    )
    token_warmup_step: float = flag(
        0,
        CAPTIONS,
        "Caption token warm-up: the optimizer step (or, below 1, the share of all steps) by which captions "
        "have all their tags; 0 = no warm-up. In between, the tags kept grow linearly from "
        "token_warmup_min. kohya counts steps as data-loader workers happen to see them; loracraft from "
        "each batch's place in the run, so runs are reproducible.",
        ge=0,
    )
    enable_wildcard: bool = flag(
        False,
        CAPTIONS,
        "Expand {a|b|c} to one random choice; a multi-line caption file gives one random line.",
        in_subset_record=True,
    )

    flip_aug: bool = flag(
        False,
        AUGMENT,
        "Flip images horizontally at random (the latent cache keeps both versions).",
        ss_key="ss_flip_aug",
        ss_folders_only=True,
        in_subset_record=True,
    )
    color_aug: bool = flag(
        False,
        AUGMENT,
        "Shift hue or gamma at random. Needs images decoded each step: no latent cache.",
        ss_key="ss_color_aug",
        ss_folders_only=True,
        in_subset_record=True,
    )
    random_crop: bool = flag(
        False,
        AUGMENT,
        "Crop at a random place instead of the centre. No latent cache.",
        ss_key="ss_random_crop",
        ss_folders_only=True,
        in_subset_record=True,
    )
    face_crop_aug_range: FaceCropRange = flag(
        None,
        AUGMENT,
        "'lo,hi': crop around the face box encoded in the file name (*_cx_cy_w_h), scaled at random. "
        "No latent cache.",
        ss_key="ss_face_crop_aug_range",
    )
    alpha_mask: bool = flag(
        False,
        AUGMENT,
        "Use each image's alpha channel as a loss mask (transparent pixels do not train).",
        in_subset_record=True,
    )
    conditioning_data_dir: OptionalPath = flag(
        None,
        AUGMENT,
        "With masked_loss: a folder holding, for each image of the folder, a mask image of the same file stem "
        "and size; its red channel is the loss mask (white trains, black does not). It overrides alpha_mask. "
        "Every image needs a mask and every mask an image, as in kohya.",
    )

    @property
    def changes_pixels_each_epoch(self) -> str | None:
        """The first option that makes an image's pixels differ per epoch (so latents cannot be cached)."""
        for name in ("color_aug", "random_crop", "face_crop_aug_range"):
            if getattr(self, name):
                return name
        return None

    @property
    def changes_caption_each_epoch(self) -> str | None:
        """The first option that makes a caption differ per epoch (so its encoding cannot be cached)."""
        for name, on in (
            ("shuffle_caption", self.shuffle_caption),
            ("caption_dropout_rate", self.caption_dropout_rate > 0),
            ("caption_dropout_every_n_epochs", self.caption_dropout_every_n_epochs > 0),
            ("caption_tag_dropout_rate", self.caption_tag_dropout_rate > 0),
            ("enable_wildcard", self.enable_wildcard),
            ("token_warmup_step", self.token_warmup_step > 0),
        ):
            if on:
                return name
        return None

    @property
    def is_static(self) -> bool:
        """True when a caption comes out the same every epoch, so its text-encoder output can be cached."""
        return self.changes_caption_each_epoch is None
