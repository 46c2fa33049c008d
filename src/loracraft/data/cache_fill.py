"""`--cache_only`: make a run's disk caches current and stop, so a later run (on this machine or one
that shares the dataset folder) starts training at once."""

from collections.abc import Sequence
from dataclasses import dataclass

from loracraft.data.latent_cache import Encoder, cache_latents_to_disk
from loracraft.data.plan import PlannedImage
from loracraft.data.text_cache import TextEncoder, cache_text_states, text_cache_file_paths


@dataclass(frozen=True)
class LatentCacheJob:
    """The arguments of `latent_cache.cache_latents_to_disk` besides the images."""

    encode: Encoder
    vae_identity: str
    vae_batch_size: int
    latent_sampling: str = "sample"
    family: str = "sd"
    flip_aug: bool = False
    alpha_mask: bool = False
    per_image_noise: bool = False
    """`encode` takes `noise_seeds`: each file's posterior draw is seeded by what the file depends on."""


@dataclass(frozen=True)
class TextCacheJob:
    """The final (static) caption of each planned image, and how to encode them."""

    captions: Sequence[str]
    encode: TextEncoder
    identity: str
    batch_size: int
    family: str = "sd"


def fill_disk_caches(
    images: Sequence[PlannedImage],
    *,
    latents: LatentCacheJob | None,
    text: TextCacheJob | None,
    progress: bool = True,
) -> tuple[str, list[str]]:
    """Fill the latent and/or text-encoder disk caches of `images`: (one-line summary, warnings)."""
    parts, warnings = [], []
    if latents is not None:
        _, report = cache_latents_to_disk(
            images,
            encode=latents.encode,
            vae_identity=latents.vae_identity,
            vae_batch_size=latents.vae_batch_size,
            latent_sampling=latents.latent_sampling,
            family=latents.family,
            flip_aug=latents.flip_aug,
            alpha_mask=latents.alpha_mask,
            per_image_noise=latents.per_image_noise,
            progress=progress,
        )
        parts.append(f"latent caches {report.encoded} written, {report.loaded} already current")
        warnings += report.warnings
    if text is not None:
        files = text_cache_file_paths([image.record.path for image in images], text.captions, text.family)
        _, text_report = cache_text_states(
            text.captions,
            encode=text.encode,
            identity=text.identity,
            batch_size=text.batch_size,
            files=files,
            progress=progress,
        )
        parts.append(
            f"text-encoder caches {text_report.encoded} written, {text_report.loaded} already current"
        )
        warnings += text_report.warnings
    done = "; ".join(parts) if parts else "no disk cache is enabled, nothing written"
    count = f"{len(images)} image{'' if len(images) == 1 else 's'}"
    return f"cache_only: {count}: {done}; no training was run", warnings
