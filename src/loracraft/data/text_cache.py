"""Text-encoder outputs computed once per caption, kept in memory or in `.npz` files beside the images.

`--cache_text_encoder_outputs` is SDXL-only in kohya; a frozen SD1/SD2 text encoder gives the same
saving (reference §4.7), so we offer it there too. The caller guarantees captions that never change
(the config refuses shuffling, dropout and wildcards with the cache) and a frozen text encoder.

The encoder is injected as `encode(captions) -> states` (B, tokens, width); results are kept as float32
on the CPU, one tensor per caption. Each distinct caption is encoded once, however many images share it.

A disk file is `<stem>_te_<family>.npz` beside the image (kohya's SDXL files are `_te_outputs.npz`;
the name differs so neither trainer reads the other's), distinct where two images' names would collide
(see `cache_names`). It holds `hidden_states` and what they depend on: the caption text, the
text-encoder identity (the caller's fingerprint of the weights, clip skip and token length) and the
cache format. Any difference recomputes the file; an unreadable file is recomputed with a warning.
"""

import hashlib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch
from tqdm import tqdm

from loracraft.atomic import write_atomic
from loracraft.data.cache_names import cache_stem, needs_variant, shared_stem_paths
from loracraft.data.encode_checked import encode_checked
from loracraft.errors import UserError

TextEncoder = Callable[[list[str]], torch.Tensor]

# Bump when the stored states change meaning for the same caption and identity.
TEXT_CACHE_FORMAT = "loracraft-text-1"
_DEPENDENCY_KEYS = ("cache_format", "caption", "te_identity")
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


@dataclass(frozen=True)
class TextCacheReport:
    """What the disk cache pass did: files written, files reused, and warnings to print."""

    encoded: int
    loaded: int
    warnings: tuple[str, ...]


def text_cache_file_path(
    image_path: Path, family: str = "sd", *, shares_stem: bool = False, variant: str = ""
) -> Path:
    tag = f"_{variant}" if variant else ""
    return image_path.with_name(f"{cache_stem(image_path, shares_stem)}_te{tag}_{family}.npz")


def text_cache_file_paths(
    image_paths: Sequence[Path], captions: Sequence[str], family: str = "sd"
) -> list[Path]:
    """The text cache file of each image; an image trained with two captions gets one file per caption."""
    shared = shared_stem_paths(image_paths)
    plain = [text_cache_file_path(path, family, shares_stem=path in shared) for path in image_paths]
    return [
        text_cache_file_path(
            path, family, shares_stem=path in shared, variant=_caption_tag(caption) if tagged else ""
        )
        for path, caption, tagged in zip(image_paths, captions, needs_variant(plain, captions), strict=True)
    ]


def _caption_tag(caption: str) -> str:
    return hashlib.blake2b(caption.encode(), digest_size=4).hexdigest()


def _non_finite_message(caption: str) -> str:
    return (
        f"the text encoder produced NaN/inf for the caption '{caption}'; an fp16 text "
        "encoder can overflow: try --mixed_precision bf16 or no"
    )


def _encode_unique(
    captions: Sequence[str], encode: TextEncoder, batch_size: int, progress: bool
) -> dict[str, torch.Tensor]:
    """Each distinct caption's states, encoded in batches, in first-seen order."""
    unique = list(dict.fromkeys(captions))
    states: dict[str, torch.Tensor] = {}
    with tqdm(
        total=len(unique), desc="caching text encoder outputs", unit="caption", disable=not progress
    ) as bar:
        for start in range(0, len(unique), batch_size):
            batch = unique[start : start + batch_size]
            encoded = encode_checked(encode, batch, batch, _non_finite_message)
            for caption, state in zip(batch, encoded, strict=True):
                # clone: a view would keep the whole batch alive and pickle it to every worker.
                states[caption] = state.clone()
            bar.update(len(batch))
    return states


def _dependencies(caption: str, identity: str) -> dict[str, np.ndarray]:
    return {
        "cache_format": np.array(TEXT_CACHE_FORMAT),
        "caption": np.array(caption),
        "te_identity": np.array(identity),
    }


def _is_fresh(path: Path, expected: dict[str, np.ndarray]) -> tuple[bool, str | None]:
    if not path.exists():
        return False, None
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {key: npz[key] for key in npz.files}
    except _UNREADABLE as err:
        return False, f"text-encoder cache {path} is unreadable ({err}); recomputing it"
    if "hidden_states" not in stored:
        return False, None
    return all(key in stored and np.array_equal(stored[key], expected[key]) for key in _DEPENDENCY_KEYS), None


def _write(path: Path, states: torch.Tensor, deps: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        # A file object, because np.savez appends ".npz" to a path that lacks it.
        with open(tmp, "wb") as f:
            np.savez(f, hidden_states=states.numpy(), **deps)

    try:
        write_atomic(path, write)
    except OSError as err:
        raise UserError(
            f"cannot write text-encoder cache {path} ({err}); make the folder writable or drop "
            "--cache_text_encoder_outputs_to_disk"
        ) from err


def load_cached_text_states(path: Path) -> torch.Tensor:
    """The `hidden_states` of a text cache file as a float32 tensor (tokens, width)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return torch.from_numpy(npz["hidden_states"].astype(np.float32))
    except _UNREADABLE as err:
        raise UserError(
            f"text-encoder cache {path} became unreadable during training ({err}); delete it and restart"
        ) from err


def _cache_to_disk(
    captions: Sequence[str],
    files: Sequence[Path],
    encode: TextEncoder,
    identity: str,
    batch_size: int,
    progress: bool,
) -> tuple[list[Path], TextCacheReport]:
    if len(files) != len(captions):
        raise ValueError(f"{len(files)} cache files for {len(captions)} captions")
    todo: dict[Path, str] = {}
    fresh: set[Path] = set()
    warnings = []
    for path, caption in zip(files, captions, strict=True):
        if path in todo or path in fresh:
            continue
        is_fresh, warning = _is_fresh(path, _dependencies(caption, identity))
        if warning:
            warnings.append(warning)
        if is_fresh:
            fresh.add(path)
        else:
            todo[path] = caption
    states = _encode_unique(list(todo.values()), encode, batch_size, progress)
    for path, caption in todo.items():
        _write(path, states[caption], _dependencies(caption, identity))
    return list(files), TextCacheReport(encoded=len(todo), loaded=len(fresh), warnings=tuple(warnings))


@overload
def cache_text_states(
    captions: Sequence[str],
    *,
    encode: TextEncoder,
    identity: str,
    batch_size: int,
    files: None = None,
    progress: bool = True,
) -> list[torch.Tensor]: ...


@overload
def cache_text_states(
    captions: Sequence[str],
    *,
    encode: TextEncoder,
    identity: str,
    batch_size: int,
    files: Sequence[Path],
    progress: bool = True,
) -> tuple[list[Path], TextCacheReport]: ...


def cache_text_states(
    captions: Sequence[str],
    *,
    encode: TextEncoder,
    identity: str,
    batch_size: int,
    files: Sequence[Path] | None = None,
    progress: bool = True,
) -> list[torch.Tensor] | tuple[list[Path], TextCacheReport]:
    """Text-encoder states for every caption, index-aligned with `captions`.

    Without `files`: the tensors, kept in memory (images with the same caption share one tensor).
    With `files` (index-aligned, from `text_cache_file_paths`): each file made current, and the files
    with a report. `identity` names the encoder setup the states depend on; it is stored in files only.
    """
    if files is not None:
        return _cache_to_disk(captions, files, encode, identity, batch_size, progress)
    states = _encode_unique(captions, encode, batch_size, progress)
    return [states[caption] for caption in captions]
