"""VAE latents computed once per image, kept in memory or in `.npz` files next to the images.

The VAE is injected as `encode(pixels) -> latents`: pixels (B, 3, H, W) float32 in [-1, 1] on the CPU,
latents (B, C, H/8, W/8) unscaled (the caller applies the VAE scaling factor per step, as kohya does,
and moves tensors to its device and dtype). Images are encoded bucket by bucket in chunks of
`vae_batch_size`, while a thread decodes the next chunk.

A disk cache file is named like kohya's, `<stem>_<WWWW>x<HHHH>_<family>.npz` with the image's original
size, and holds `latents` (float32 C x h x w), `original_size` and `crop_ltrb` where kohya reads them
(our `crop_ltrb` is the real crop window in the resized image, not kohya's Stability-style estimate).
kohya trusts any file with a `latents` key, so an edited image, a new bucket or another VAE silently
trains on stale latents (reference §4.6). Our files also record what the latents depend on: a hash of
the image bytes (a copy or a restore keeps the mtime, and editors may keep the size), the bucket,
the resize and crop, the VAE identity and the cache format. Any difference re-encodes the image.
"""

import hashlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loracraft.atomic import write_atomic
from loracraft.data.buckets import Size, center_crop_box
from loracraft.data.images import load_bucket_tensor
from loracraft.data.plan import PlannedImage
from loracraft.errors import UserError

Encoder = Callable[[torch.Tensor], torch.Tensor]

# Bump when the pixels given to the VAE change for the same image, bucket and crop (a new resize
# filter, say), so old files are re-encoded instead of trusted.
CACHE_FORMAT = "loracraft-latents-1"
_HASH_CHUNK = 1 << 20
_DEPENDENCY_KEYS = ("cache_format", "image_hash", "vae_identity", "bucket_reso", "resized_size", "crop_ltrb")


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


def cache_file_path(image_path: Path, original_size: Size, family: str = "sd") -> Path:
    """kohya's name for the latent file of an image; `family` is "sd" (SD1/SD2) or "sdxl"."""
    width, height = original_size
    return image_path.with_name(f"{image_path.stem}_{width:04d}x{height:04d}_{family}.npz")


def _dependencies(image: PlannedImage, image_hash: str, vae_identity: str) -> dict[str, np.ndarray]:
    choice = image.choice
    return {
        "cache_format": np.array(CACHE_FORMAT),
        "image_hash": np.array(image_hash),
        "vae_identity": np.array(vae_identity),
        "bucket_reso": np.array(choice.bucket, dtype=np.int64),
        "resized_size": np.array(choice.resized_size, dtype=np.int64),
        "crop_ltrb": np.array(center_crop_box(choice.resized_size, choice.bucket), dtype=np.int64),
    }


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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        return False, f"latent cache {path} is unreadable ({err}); re-encoding it"
    if "latents" not in stored or stored["latents"].ndim != 3:
        return False, None
    return all(key in stored and np.array_equal(stored[key], expected[key]) for key in _DEPENDENCY_KEYS), None


def _write_cache(path: Path, latents: torch.Tensor, image: PlannedImage, deps: dict[str, np.ndarray]) -> None:
    record = image.record

    def write(tmp: Path) -> None:
        # A file object, because np.savez appends ".npz" to a path that lacks it.
        with open(tmp, "wb") as f:
            np.savez(
                f, latents=latents.numpy(), original_size=np.array([record.width, record.height]), **deps
            )

    try:
        write_atomic(path, write)
    except OSError as err:
        raise UserError(
            f"cannot write latent cache {path} ({err}); make the folder writable or drop --cache_latents_to_disk"
        ) from err


def load_cached_latents(path: Path) -> torch.Tensor:
    """The `latents` array of a cache file written by this module, as a float32 tensor."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return torch.from_numpy(npz["latents"].astype(np.float32))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
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


def _load_pixels(images: Sequence[PlannedImage], chunk: list[int]) -> torch.Tensor:
    return torch.stack(
        [
            load_bucket_tensor(images[i].record.path, images[i].choice.resized_size, images[i].choice.bucket)
            for i in chunk
        ]
    )


def _encode_all(
    images: Sequence[PlannedImage], todo: Sequence[int], encode: Encoder, vae_batch_size: int, progress: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, latents) for every index in `todo`; the next chunk is decoded while the VAE runs."""
    chunks = _chunks(images, todo, vae_batch_size)
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(total=len(todo), desc="caching latents", unit="img", disable=not progress) as bar,
    ):
        pending = pool.submit(_load_pixels, images, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            pixels = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(_load_pixels, images, chunks[k + 1])
            with torch.no_grad():
                latents = encode(pixels).float().cpu()
            for i, latent in zip(chunk, latents, strict=True):
                if not torch.isfinite(latent).all():
                    raise UserError(
                        f"the VAE produced NaN/inf latents for {images[i].record.path}; "
                        "use --no_half_vae (a half-precision VAE overflows on some images)"
                    )
                # clone: a view would keep the whole batch's storage alive and pickle it to every worker.
                yield i, latent.clone()
            bar.update(len(chunk))


def cache_latents_in_memory(
    images: Sequence[PlannedImage], *, encode: Encoder, vae_batch_size: int, progress: bool = True
) -> list[torch.Tensor]:
    """Latents for every planned image, index-aligned with `images`, kept on the CPU."""
    latents: list[torch.Tensor | None] = [None] * len(images)
    for i, latent in _encode_all(images, range(len(images)), encode, vae_batch_size, progress):
        latents[i] = latent
    return latents


def cache_latents_to_disk(
    images: Sequence[PlannedImage],
    *,
    encode: Encoder,
    vae_identity: str,
    vae_batch_size: int,
    family: str = "sd",
    progress: bool = True,
) -> tuple[list[Path], LatentCacheReport]:
    """Make every planned image's cache file current; returns the files, index-aligned with `images`."""
    paths = [
        cache_file_path(image.record.path, (image.record.width, image.record.height), family)
        for image in images
    ]
    expected, todo, warnings = [], [], []
    checks = tqdm(images, desc="checking latent cache", unit="img", disable=not progress)
    for i, image in enumerate(checks):
        deps = _dependencies(image, file_hash(image.record.path), vae_identity)
        expected.append(deps)
        fresh, warning = _is_fresh(paths[i], deps)
        if warning:
            warnings.append(warning)
        if not fresh:
            todo.append(i)
    for i, latent in _encode_all(images, todo, encode, vae_batch_size, progress):
        _write_cache(paths[i], latent, images[i], expected[i])
    return paths, LatentCacheReport(
        encoded=len(todo), loaded=len(images) - len(todo), warnings=tuple(warnings)
    )
