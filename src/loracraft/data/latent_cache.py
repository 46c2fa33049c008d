"""VAE latents computed once per image, kept in memory or in `.npz` files next to the images.

The VAE is injected as `encode(pixels) -> latents`: pixels (B, 3, H, W) float32 in [-1, 1] on the CPU,
latents (B, C, H/8, W/8) unscaled (the caller applies the VAE scaling factor per step, as kohya does,
and moves tensors to its device and dtype). Images are encoded bucket by bucket in chunks of
`vae_batch_size`, while a thread decodes the next chunk. With `flip_aug` the mirrored image is
encoded too (`latents_flipped`), as kohya does; with `alpha_mask` the image's alpha mask is kept at
latent size (area-averaged, as kohya's masked loss resizes it).

A disk cache file is named like kohya's, `<stem>_<WWWW>x<HHHH>_<family>.npz` with the image's original
size (distinct where kohya's names collide, see `cache_names`), and holds `latents` (float32 C x h x w),
`original_size` and `crop_ltrb` where kohya reads them, plus `latents_flipped` and `alpha_mask`
(float32 h x w) when used (our `crop_ltrb` is the real crop window in the resized image, not kohya's
Stability-style estimate). kohya trusts any file with a `latents` key, so an edited image, a new bucket
or another VAE silently trains on stale latents (reference §4.6). Our files also record what the
latents depend on: a hash of the image bytes (a copy or a restore keeps the mtime, and editors may
keep the size), the bucket, the resize and crop, the VAE identity, `--latent_sampling` (a posterior
draw or its mean), flip_aug, alpha_mask and the cache format. Any difference re-encodes the image.
"""

import hashlib
import random
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loracraft.atomic import leftover_temp_files, write_atomic
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.augment import load_training_image, mask_to_latent_size
from loracraft.data.buckets import Size, center_crop_box
from loracraft.data.cache_names import cache_stem, needs_variant, shared_stem_paths
from loracraft.data.encode_checked import encode_checked
from loracraft.data.plan import PlannedImage
from loracraft.errors import UserError

Encoder = Callable[[torch.Tensor], torch.Tensor]

# Bump when the pixels given to the VAE change for the same image, bucket and crop (a new resize
# filter, say), so old files are re-encoded instead of trusted. 2: large JPEGs decode at DCT scale.
CACHE_FORMAT = "loracraft-latents-2"
_HASH_CHUNK = 1 << 20
_DEPENDENCY_KEYS = (
    "cache_format", "image_hash", "vae_identity", "latent_sampling", "bucket_reso", "resized_size", "crop_ltrb",
    "with_flip", "with_alpha_mask",
)  # fmt: skip
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


@dataclass(frozen=True)
class CachedLatents:
    """One image's cached VAE output: `latents` (C, h, w) float32 unscaled, `latents_flipped` of the
    mirrored image (with flip_aug), `alpha_mask` (1, h, w) float32 in [0, 1] (with alpha_mask)."""

    latents: torch.Tensor
    latents_flipped: torch.Tensor | None = None
    alpha_mask: torch.Tensor | None = None

    def for_sample(self, flipped: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latents, mask) of the sample as trained, mirrored when `flipped`."""
        if not flipped:
            return self.latents, self.alpha_mask
        if self.latents_flipped is None:
            raise ValueError("these latents were cached without flip_aug")
        return self.latents_flipped, None if self.alpha_mask is None else self.alpha_mask.flip(-1)


@dataclass(frozen=True)
class LatentCacheReport:
    """What the disk cache pass did; `warnings` are lines for the caller to print."""

    encoded: int
    loaded: int
    warnings: tuple[str, ...]


def file_hash(path: Path) -> str:
    """A fast content fingerprint (BLAKE2b, 128 bits) of the file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file_path(
    image_path: Path, original_size: Size, family: str = "sd", *, shares_stem: bool = False, variant: str = ""
) -> Path:
    """kohya's name for the latent file of an image; `family` is "sd" (SD1/SD2) or "sdxl"."""
    width, height = original_size
    tag = f"_{variant}" if variant else ""
    return image_path.with_name(
        f"{cache_stem(image_path, shares_stem)}_{width:04d}x{height:04d}{tag}_{family}.npz"
    )


def cache_file_paths(images: Sequence[PlannedImage], family: str = "sd") -> list[Path]:
    """The cache file of each planned image, distinct wherever two entries need different contents."""
    shared = shared_stem_paths(image.record.path for image in images)
    plain = [
        cache_file_path(
            image.record.path, _original_size(image), family, shares_stem=image.record.path in shared
        )
        for image in images
    ]
    crops = [(image.choice.bucket, image.choice.resized_size) for image in images]
    return [
        cache_file_path(
            image.record.path,
            _original_size(image),
            family,
            shares_stem=image.record.path in shared,
            variant=f"{bucket[0]}x{bucket[1]}-from-{resized[0]}x{resized[1]}" if tagged else "",
        )
        for image, (bucket, resized), tagged in zip(images, crops, needs_variant(plain, crops), strict=True)
    ]


def _original_size(image: PlannedImage) -> Size:
    return image.record.width, image.record.height


def _dependencies(
    image: PlannedImage,
    image_hash: str,
    vae_identity: str,
    latent_sampling: str,
    flip_aug: bool,
    alpha_mask: bool,
) -> dict[str, np.ndarray]:
    choice = image.choice
    return {
        "cache_format": np.array(CACHE_FORMAT),
        "image_hash": np.array(image_hash),
        "vae_identity": np.array(vae_identity),
        "latent_sampling": np.array(latent_sampling),
        "bucket_reso": np.array(choice.bucket, dtype=np.int64),
        "resized_size": np.array(choice.resized_size, dtype=np.int64),
        "crop_ltrb": np.array(center_crop_box(choice.resized_size, choice.bucket), dtype=np.int64),
        "with_flip": np.array(flip_aug),
        "with_alpha_mask": np.array(alpha_mask),
    }


def noise_seed(dependencies: dict[str, np.ndarray]) -> int:
    """A cache file's posterior-draw seed, from everything the file depends on (`_dependencies`)."""
    digest = hashlib.sha256()
    for key in sorted(dependencies):
        digest.update(f"{key}={dependencies[key].tolist()};".encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _is_fresh(path: Path, expected: dict[str, np.ndarray]) -> tuple[bool, str | None]:
    """Whether the file holds latents made from exactly `expected`; a warning when the file is broken."""
    if not path.exists():
        return False, None
    try:
        # Reading every array also checks the zip CRCs, so a truncated file is caught here, not mid-training.
        stored = _read_npz(path)
    except _UNREADABLE as err:
        return False, f"latent cache {path} is unreadable ({err}); re-encoding it"
    required = ["latents"] + ["latents_flipped"] * bool(expected["with_flip"])
    required += ["alpha_mask"] * bool(expected["with_alpha_mask"])
    if any(key not in stored for key in required) or stored["latents"].ndim != 3:
        return False, None
    return all(key in stored and np.array_equal(stored[key], expected[key]) for key in _DEPENDENCY_KEYS), None


def _write_cache(path: Path, entry: CachedLatents, image: PlannedImage, deps: dict[str, np.ndarray]) -> None:
    arrays = {"latents": entry.latents.numpy(), "original_size": np.array(_original_size(image))}
    arrays.update(deps)
    if entry.latents_flipped is not None:
        arrays["latents_flipped"] = entry.latents_flipped.numpy()
    if entry.alpha_mask is not None:
        arrays["alpha_mask"] = entry.alpha_mask[0].numpy()

    def write(tmp: Path) -> None:
        # A file object, because np.savez appends ".npz" to a path that lacks it.
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        write_atomic(path, write)
    except OSError as err:
        raise UserError(
            f"cannot write latent cache {path} ({err}); make the folder writable or drop --cache_latents_to_disk"
        ) from err


def read_latent_file(path: Path) -> CachedLatents:
    """A cache file written by this module; an unreadable file (changed during training) is a UserError."""
    try:
        stored = _read_npz(path)
        return CachedLatents(
            torch.from_numpy(stored["latents"].astype(np.float32)),
            torch.from_numpy(stored["latents_flipped"].astype(np.float32))
            if "latents_flipped" in stored
            else None,
            torch.from_numpy(stored["alpha_mask"].astype(np.float32))[None]
            if "alpha_mask" in stored
            else None,
        )
    except _UNREADABLE as err:
        raise UserError(
            f"latent cache {path} became unreadable during training ({err}); delete it and restart"
        ) from err


def _chunks(images: Sequence[PlannedImage], todo: Sequence[int], vae_batch_size: int) -> list[list[int]]:
    """Indices grouped by bucket (one tensor shape per VAE call), in chunks of `vae_batch_size`."""
    by_bucket: dict[Size, list[int]] = {}
    for i in todo:
        by_bucket.setdefault(images[i].choice.bucket, []).append(i)
    return [
        group[start : start + vae_batch_size]
        for _, group in sorted(by_bucket.items())
        for start in range(0, len(group), vae_batch_size)
    ]


def _load_chunk(
    images: Sequence[PlannedImage], chunk: list[int], alpha_mask: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # No random option is on, so the generator is never drawn from: cached pixels are the centre crop.
    options, rng = SubsetOptions(alpha_mask=alpha_mask), random.Random(0)
    loaded = [
        load_training_image(
            images[i].record.path, images[i].choice.resized_size, images[i].choice.bucket, options, rng
        )
        for i in chunk
    ]
    pixels = torch.stack([item.pixels for item in loaded])
    return pixels, torch.stack([item.mask for item in loaded]) if alpha_mask else None


def _encode_checked(encode: Encoder, pixels: torch.Tensor, paths: list[Path]) -> torch.Tensor:
    return encode_checked(
        encode,
        pixels,
        paths,
        lambda path: (
            f"the VAE produced NaN/inf latents for {path} in float32 (not a half-precision overflow), so "
            "its weights are likely broken; give a working VAE with --vae, or use another base model"
        ),
    )


def _encode_all(
    images: Sequence[PlannedImage],
    todo: Sequence[int],
    encode: Encoder,
    vae_batch_size: int,
    flip_aug: bool,
    alpha_mask: bool,
    progress: bool,
    seeds: dict[int, int] | None = None,
) -> Iterator[tuple[int, CachedLatents]]:
    """(index, cached latents) for every index in `todo`; the next chunk is decoded while the VAE runs.
    `seeds` (index -> seed) seed each image's posterior draw (its mirror's: the seed + 1)."""
    chunks = _chunks(images, todo, vae_batch_size)
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(total=len(todo), desc="caching latents", unit="img", disable=not progress) as bar,
    ):
        pending = pool.submit(_load_chunk, images, chunks[0], alpha_mask) if chunks else None
        for k, chunk in enumerate(chunks):
            pixels, masks = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(_load_chunk, images, chunks[k + 1], alpha_mask)
            paths = [images[i].record.path for i in chunk]
            encode_chunk = encode_mirror = encode
            if seeds is not None:
                encode_chunk = partial(encode, noise_seeds=[seeds[i] for i in chunk])
                encode_mirror = partial(encode, noise_seeds=[seeds[i] + 1 for i in chunk])
            latents = _encode_checked(encode_chunk, pixels, paths)
            flipped = _encode_checked(encode_mirror, pixels.flip(-1), paths) if flip_aug else None
            small_masks = mask_to_latent_size(masks, latents.shape[-2:]) if masks is not None else None
            for n, i in enumerate(chunk):
                # clone: a view would keep the whole batch's storage alive and pickle it to every worker.
                yield (
                    i,
                    CachedLatents(
                        latents[n].clone(),
                        flipped[n].clone() if flipped is not None else None,
                        small_masks[n].clone() if small_masks is not None else None,
                    ),
                )
            bar.update(len(chunk))


def encode_latents_in_memory(
    images: Sequence[PlannedImage],
    *,
    encode: Encoder,
    vae_batch_size: int,
    flip_aug: bool = False,
    alpha_mask: bool = False,
    progress: bool = True,
) -> list[CachedLatents]:
    """Cached latents for every planned image, index-aligned with `images`, kept on the CPU."""
    cached: list[CachedLatents | None] = [None] * len(images)
    for i, entry in _encode_all(
        images, range(len(images)), encode, vae_batch_size, flip_aug, alpha_mask, progress
    ):
        cached[i] = entry
    return cached


def cache_latents_to_disk(
    images: Sequence[PlannedImage],
    *,
    encode: Encoder,
    vae_identity: str,
    vae_batch_size: int,
    latent_sampling: str = "sample",
    family: str = "sd",
    flip_aug: bool = False,
    alpha_mask: bool = False,
    per_image_noise: bool = False,
    progress: bool = True,
) -> tuple[list[Path], LatentCacheReport]:
    """Make every planned image's cache file current; returns the files, index-aligned with `images`.

    `latent_sampling` says how `encode` reads the VAE posterior ("sample" or "mean"); it is recorded,
    so switching it re-encodes. With `per_image_noise`, `encode` takes `noise_seeds` and each file's
    draw is seeded by what the file depends on (`noise_seed`): the same image, bucket, VAE and options
    give the same file however the encoding was batched or interrupted."""
    paths = cache_file_paths(images, family)
    expected, todo, warnings, checked = {}, [], [], set()
    checks = tqdm(images, desc="checking latent cache", unit="img", disable=not progress)
    for i, image in enumerate(checks):
        # An image planned twice with the same contents shares one file: check and encode it once.
        if paths[i] in checked:
            continue
        checked.add(paths[i])
        deps = _dependencies(
            image, file_hash(image.record.path), vae_identity, latent_sampling, flip_aug, alpha_mask
        )
        expected[i] = deps
        fresh, warning = _is_fresh(paths[i], deps)
        if warning:
            warnings.append(warning)
        if not fresh:
            todo.append(i)
    # A run killed while writing a cache file left its temporary file beside it.
    stale = [tmp for i in todo for tmp in leftover_temp_files(paths[i])]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    if stale:
        warnings.append(
            f"removed {len(stale)} unfinished latent cache file(s) a stopped run left, e.g. {stale[0]}"
        )
    seeds = {i: noise_seed(expected[i]) for i in todo} if per_image_noise else None
    for i, entry in _encode_all(images, todo, encode, vae_batch_size, flip_aug, alpha_mask, progress, seeds):
        _write_cache(paths[i], entry, images[i], expected[i])
    return paths, LatentCacheReport(
        encoded=len(todo), loaded=len(checked) - len(todo), warnings=tuple(warnings)
    )
