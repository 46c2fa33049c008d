"""Tiny kohya dataset trees for tests: `img/N_concept/` with mixed sizes and formats, captions, a reg folder;
and reference loaders that decode an image the way training does, without augmentation.

tree = make_kohya_dataset(tmp_path)
scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loracraft.data.buckets import Size, center_crop_box
from loracraft.data.images import decode_upright, open_image, resize_and_crop, to_tensor

DEFAULT_SIZES = ((96, 64), (64, 96), (64, 64), (128, 80))
DEFAULT_FORMATS = ("png", "jpg", "webp", "png")
_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


@dataclass(frozen=True)
class KohyaTree:
    train_dir: Path  # pass as --train_data_dir
    reg_dir: Path | None  # pass as --reg_data_dir; None without reg images
    concept_dir: Path  # train_dir / f"{repeats}_{concept}"
    images: tuple[Path, ...]  # training images, in name order
    captions: tuple[str, ...]  # the caption each training image trains on (concept name when uncaptioned)
    reg_images: tuple[Path, ...]


def write_test_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A smooth seeded picture (gradient plus a coloured block), saved in the format of `path`'s suffix."""
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, size=3)
    pixels = np.stack([(base[c] + 120 * xs / width + 60 * ys / height) % 256 for c in range(3)], axis=-1)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    pixels[top : top + height // 3, left : left + width // 3] = rng.uniform(0, 255, size=3)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return path


def make_kohya_dataset(
    tmp_path: Path,
    *,
    concept: str = "sks toy",
    repeats: int = 2,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    formats: Sequence[str] = DEFAULT_FORMATS,
    caption_extension: str = ".txt",
    uncaptioned: Sequence[int] = (3,),
    reg_class: str = "toy",
    reg_count: int = 2,
    reg_repeats: int = 1,
    reg_size: tuple[int, int] = (64, 64),
) -> KohyaTree:
    """`tmp_path/img/{repeats}_{concept}/image_NN.<fmt>` (+ captions except for indices in `uncaptioned`)
    and, when `reg_count` > 0, `tmp_path/reg/{reg_repeats}_{reg_class}/reg_NN.png` without captions.
    Image i has size `sizes[i]` and format `formats[i]`; captions read "<concept>, <colour> block, plain"."""
    concept_dir = tmp_path / "img" / f"{repeats}_{concept}"
    concept_dir.mkdir(parents=True)
    images, captions = [], []
    for i, (size, fmt) in enumerate(zip(sizes, formats, strict=True)):
        image = write_test_image(concept_dir / f"image_{i:02d}.{fmt}", size, seed=i)
        images.append(image)
        if i in uncaptioned:
            captions.append(concept)
            continue
        caption = f"{concept}, {_COLOURS[i % len(_COLOURS)]} block, plain"
        image.with_name(image.stem + caption_extension).write_text(caption + "\n", encoding="utf-8")
        captions.append(caption)
    reg_dir, reg_images = None, []
    if reg_count:
        reg_dir = tmp_path / "reg"
        reg_folder = reg_dir / f"{reg_repeats}_{reg_class}"
        reg_folder.mkdir(parents=True)
        reg_images = [
            write_test_image(reg_folder / f"reg_{i:02d}.png", reg_size, seed=100 + i)
            for i in range(reg_count)
        ]
    return KohyaTree(
        train_dir=tmp_path / "img",
        reg_dir=reg_dir,
        concept_dir=concept_dir,
        images=tuple(images),
        captions=tuple(captions),
        reg_images=tuple(reg_images),
    )


def load_image_rgb(path: Path) -> Image.Image:
    """`path` decoded upright (EXIF orientation applied) as RGB, through the decoder training uses."""
    with open_image(path) as img:
        return decode_upright(img, path)[0]


def load_bucket_tensor(path: Path, resized_size: Size, bucket: Size) -> torch.Tensor:
    """The (3, H, W) pixels of one image in its bucket, centre-cropped: what training and the latent cache
    should see for an image without augmentation."""
    with open_image(path) as img:
        rgb, _ = decode_upright(img, path, at_least=resized_size)
    return to_tensor(resize_and_crop(rgb, resized_size, center_crop_box(resized_size, bucket)))
