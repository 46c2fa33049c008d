"""Loss masks from mask images: a folder's `conditioning_data_dir`, read as kohya's masked loss reads it.

Each training image of a folder with a `conditioning_data_dir` has there an image with the same file stem
(any image extension); its red channel is the mask, white trains and black does not (kohya maps the
conditioning image to [-1, 1] and back, which is red / 255). The mask must have its image's size: it is
resized, cropped and flipped exactly as the image is. As in kohya, an image without a mask and a mask
without an image are errors, found when the run starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import ImageOps

from loracraft.data.buckets import Size
from loracraft.data.images import (
    Box,
    ImageFileError,
    mask_to_tensor,
    open_image,
    resize_and_crop,
    upright_size,
)
from loracraft.data.plan import DatasetPlan
from loracraft.data.scan import IMAGE_EXTENSIONS
from loracraft.errors import UserError


def _images_by_stem(folder: Path) -> dict[str, Path]:
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise UserError(
            f"--conditioning_data_dir {folder}: not a readable folder ({err.strerror}); give the folder of "
            "mask images"
        ) from None
    found: dict[str, Path] = {}
    for name in names:
        stem, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS:
            found.setdefault(stem, folder / name)
    return found


def mask_files(plan: DatasetPlan) -> list[Path | None]:
    """The mask image of each planned image (index-aligned with `plan.images`); None where its folder has no
    `conditioning_data_dir`. Raises a UserError for a missing or an unpaired mask."""
    folders = {subset.options.conditioning_data_dir for subset in plan.subsets} - {None}
    available = {folder: _images_by_stem(Path(folder)) for folder in sorted(folders)}
    used: dict[str, set[str]] = {folder: set() for folder in folders}
    found: list[Path | None] = []
    for image in plan.images:
        folder = plan.subsets[image.subset_index].options.conditioning_data_dir
        if folder is None:
            found.append(None)
            continue
        stem = image.record.path.stem
        if stem not in available[folder]:
            raise UserError(
                f"{image.record.path} has no mask in --conditioning_data_dir {folder} (an image named "
                f"{stem}.png or another image extension); add one or move the image out of the folder"
            )
        used[folder].add(stem)
        found.append(available[folder][stem])
    for folder in sorted(folders):
        extra = sorted(set(available[folder]) - used[folder])
        if extra:
            raise UserError(
                f"--conditioning_data_dir {folder}: {len(extra)} mask(s) without a training image "
                f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); remove them or add their images"
            )
    return found


def load_mask(path: Path, image_size: Size, resized_size: Size, box: Box) -> torch.Tensor:
    """The mask (1, H, W) in [0, 1] from the red channel of `path`, resized to `resized_size` and cropped to
    `box` as its image (upright size `image_size`) is."""
    with open_image(path) as img:
        if upright_size(img) != image_size:
            width, height = upright_size(img)
            raise UserError(
                f"mask {path} is {width}x{height} but its image is {image_size[0]}x{image_size[1]}; a mask "
                "must have its image's size"
            )
        try:
            red = ImageOps.exif_transpose(img).convert("RGB").getchannel("R")
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise ImageFileError(path, str(err) or type(err).__name__) from err
    return mask_to_tensor(resize_and_crop(red, resized_size, box))
