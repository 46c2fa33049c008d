"""Text-encoder outputs computed once per caption, kept in memory or in `.npz` files beside the images.

`--cache_text_encoder_outputs` is SDXL-only in kohya; a frozen SD1/SD2 text encoder gives the same
saving (reference §4.7), so we offer it there too. The caller guarantees captions that never change
(the config refuses shuffling, dropout and wildcards with the cache) and a frozen text encoder.

The encoder is injected as `encode(captions) -> states` (B, tokens, width), or `-> (states, pooled)`
(B, width) for SDXL, whose U-Net also takes TE2's pooled output; results are kept as float32 on the CPU,
one tensor (or pair) per caption. Each distinct caption is encoded once, however many images share it.

A disk file is `<stem>_te_<family>.npz` beside the image (kohya's SDXL files are `_te_outputs.npz`;
the name differs so neither trainer reads the other's), distinct where two images' names would collide
(see `cache_names`). It holds `hidden_states` and what they depend on: the caption text, the
text-encoder identity (the caller's fingerprint of the weights, clip skip and token length) and the
cache format, and `pooled` for an SDXL encoder. Any difference recomputes the file; an unreadable file is recomputed with a warning.
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

TextOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""A caption's states, or (states, pooled) from an encoder with a pooled output (SDXL)."""
TextEncoder = Callable[[list[str]], TextOutput]

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


def _encode_batch(encode: TextEncoder, batch: list[str]) -> list[TextOutput]:
    """One output per caption, each part checked finite; clones, since a view would keep the whole batch
    alive and pickle it to every worker."""
    with torch.no_grad():
        output = encode(batch)
    parts = [
        encode_checked(lambda _, part=part: part, batch, batch, _non_finite_message)
        for part in (output if isinstance(output, tuple) else (output,))
    ]
    rows = [tuple(row.clone() for row in caption_rows) for caption_rows in zip(*parts, strict=True)]
    return [row if len(row) > 1 else row[0] for row in rows]


def _encode_unique(
    captions: Sequence[str], encode: TextEncoder, batch_size: int, progress: bool
) -> dict[str, TextOutput]:
    """Each distinct caption's output, encoded in batches, in first-seen order."""
    unique = list(dict.fromkeys(captions))
    outputs: dict[str, TextOutput] = {}
    with tqdm(
        total=len(unique), desc="caching text encoder outputs", unit="caption", disable=not progress
    ) as bar:
        for start in range(0, len(unique), batch_size):
            batch = unique[start : start + batch_size]
            outputs.update(zip(batch, _encode_batch(encode, batch), strict=True))
            bar.update(len(batch))
    return outputs


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


def _write(path: Path, output: TextOutput, deps: dict[str, np.ndarray]) -> None:
    if isinstance(output, tuple):
        arrays = {"hidden_states": output[0].numpy(), "pooled": output[1].numpy()}
    else:
        arrays = {"hidden_states": output.numpy()}

    def write(tmp: Path) -> None:
        # A file object, because np.savez appends ".npz" to a path that lacks it.
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **deps)

    try:
        write_atomic(path, write)
    except OSError as err:
        raise UserError(
            f"cannot write text-encoder cache {path} ({err}); make the folder writable or drop "
            "--cache_text_encoder_outputs_to_disk"
        ) from err


def load_cached_text_states(path: Path) -> torch.Tensor:
    """The `hidden_states` of a text cache file as a float32 tensor (tokens, width)."""
    output = load_cached_text_output(path)
    return output[0] if isinstance(output, tuple) else output


def load_cached_text_output(path: Path) -> TextOutput:
    """A text cache file's states (tokens, width), or (states, pooled) when it holds a pooled output."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            states = torch.from_numpy(npz["hidden_states"].astype(np.float32))
            if "pooled" not in npz.files:
                return states
            return states, torch.from_numpy(npz["pooled"].astype(np.float32))
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
) -> list[TextOutput]: ...


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
) -> list[TextOutput] | tuple[list[Path], TextCacheReport]:
    """Text-encoder outputs for every caption, index-aligned with `captions`.

    Without `files`: the tensors, kept in memory (images with the same caption share one tensor).
    With `files` (index-aligned, from `text_cache_file_paths`): each file made current, and the files
    with a report. `identity` names the encoder setup the states depend on; it is stored in files only.
    """
    if files is not None:
        return _cache_to_disk(captions, files, encode, identity, batch_size, progress)
    states = _encode_unique(captions, encode, batch_size, progress)
    return [states[caption] for caption in captions]
