"""Where the CLIP tokenizers come from, first match wins.

The tokenizer (every family):
1. `--tokenizer_path DIR` (a folder with vocab.json and merges.txt), when given;
2. a diffusers folder's `tokenizer/`;
3. for a single file `NAME.safetensors`: a folder `NAME-tokenizer/` beside it, else `tokenizer/` beside it;
4. the Hugging Face hub or its local cache: `openai/clip-vit-large-patch14` (SD1, SDXL) or
   `stabilityai/stable-diffusion-2-1-base`'s `tokenizer/` (SD2). Offline (HF_HUB_OFFLINE=1) only the
   cache is tried; without one the run stops with a message naming the flag.

SDXL's second tokenizer:
1. `--tokenizer_2_path DIR`;
2. a diffusers folder's `tokenizer_2/`;
3. for a single file: `NAME-tokenizer_2/` beside it, else `tokenizer_2/` beside it;
4. when the first tokenizer came from a folder: that tokenizer, padded with `!`;
5. else the hub's `laion/CLIP-ViT-bigG-14-laion2B-39B-b160k` (what kohya loads), or, when it cannot
   be had, the first tokenizer padded with `!`.

Steps 4 and 5 give the same tokenizer: SDXL's tokenizer 2 is CLIP's own vocabulary and merges, padded
with `!` (id 0 in CLIP's vocabulary) where tokenizer 1 pads with its end-of-text token. OpenCLIP pads
with id 0, so the OpenCLIP encoders (SD2's, SDXL's second) were trained seeing `!` after the text:
SD2's tokenizer and SDXL's tokenizer 2 pad with `!` whichever folder they come from.
"""

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from transformers import CLIPTokenizer

from loracraft.errors import UserError

HUB_TOKENIZERS = {  # family -> (repository, subfolder)
    "sd1": ("openai/clip-vit-large-patch14", ""),
    "sd2": ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
    "sdxl": ("openai/clip-vit-large-patch14", ""),
}
HUB_TOKENIZER_2 = ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "")
OPEN_CLIP_PAD = "!"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
HUB_FILES = [*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json"]


def load_tokenizers(
    family: str,
    model: Path,
    tokenizer_path: str | os.PathLike | None,
    tokenizer_2_path: str | os.PathLike | None = None,
) -> tuple[CLIPTokenizer, CLIPTokenizer | None]:
    """The tokenizer and, for SDXL, the second one, for the single file or diffusers folder `model`."""
    local = _given(tokenizer_path, "--tokenizer_path") or _found(model, "tokenizer")
    folder = local or _from_hub(*HUB_TOKENIZERS[family], model)
    tokenizer = _load(folder, OPEN_CLIP_PAD if family == "sd2" else None)
    if family != "sdxl":
        return tokenizer, None
    folder_2 = _given(tokenizer_2_path, "--tokenizer_2_path") or _found(model, "tokenizer_2")
    if folder_2 is None and local is None:
        folder_2 = _hub_if_available(*HUB_TOKENIZER_2)
    return tokenizer, _load(folder_2 or folder, OPEN_CLIP_PAD)


def hub_offline() -> bool:
    """Read at call time (huggingface_hub reads its constant once, at import)."""
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _given(path: str | os.PathLike | None, flag: str) -> Path | None:
    if path is None:
        return None
    if not _has_tokenizer_files(Path(path)):
        raise UserError(f"{flag} {path}: not a folder with {' and '.join(TOKENIZER_FILES)}")
    return Path(path)


def _found(model: Path, name: str) -> Path | None:
    """`name` ("tokenizer" or "tokenizer_2") inside a diffusers folder, or beside a single file."""
    if model.is_dir():
        candidates = [model / name]
    else:
        candidates = [model.with_name(f"{model.stem}-{name}"), model.parent / name]
    return next((folder for folder in candidates if _has_tokenizer_files(folder)), None)


def _has_tokenizer_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in TOKENIZER_FILES)


def _load(folder: Path, pad_token: str | None) -> CLIPTokenizer:
    padding = {"pad_token": pad_token} if pad_token is not None else {}
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True, **padding)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{folder}: the CLIP tokenizer files there do not load ({reason})") from error


def _download(repository: str, subfolder: str) -> Path:
    # Download the files rather than call CLIPTokenizer.from_pretrained(repo id): transformers 5 returns an
    # empty 3-token tokenizer, without any error, when it finds no files.
    patterns = [f"{subfolder}/{name}" if subfolder else name for name in HUB_FILES]
    snapshot = snapshot_download(repository, allow_patterns=patterns, local_files_only=hub_offline())
    return Path(snapshot) / subfolder


def _from_hub(repository: str, subfolder: str, model: Path) -> Path:
    try:
        folder = _download(repository, subfolder)
    except OSError as error:
        reason = (
            "offline (HF_HUB_OFFLINE is set)"
            if hub_offline()
            else f"the hub did not answer ({type(error).__name__})"
        )
        beside = model / "tokenizer" if model.is_dir() else model.with_name(model.stem + "-tokenizer")
        raise UserError(
            f"no tokenizer for {model}: {reason} and none beside it; pass --tokenizer_path DIR (a folder with "
            f"vocab.json and merges.txt) or put one in {beside}/"
        ) from error
    if not _has_tokenizer_files(folder):
        raise UserError(
            f"no tokenizer for {model}: {repository} on the hub lacks {' or '.join(TOKENIZER_FILES)}"
        )
    return folder


def _hub_if_available(repository: str, subfolder: str) -> Path | None:
    try:
        folder = _download(repository, subfolder)
    except OSError:
        return None
    return folder if _has_tokenizer_files(folder) else None
