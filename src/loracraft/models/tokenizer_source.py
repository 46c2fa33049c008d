"""Where the CLIP tokenizer comes from, first match wins:

1. `--tokenizer_path DIR` (a folder with vocab.json and merges.txt), when given;
2. a diffusers folder's `tokenizer/`;
3. for a single file `NAME.safetensors`: a folder `NAME-tokenizer/` beside it, else `tokenizer/` beside it;
4. the Hugging Face hub (`openai/clip-vit-large-patch14`, SD1's tokenizer) or its local cache. Offline
   (HF_HUB_OFFLINE=1) only the cache is tried; without one the run stops with a message naming the flag.
"""

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from transformers import CLIPTokenizer

from loracraft.errors import UserError

HUB_TOKENIZER = "openai/clip-vit-large-patch14"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
HUB_FILES = [*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json"]


def tokenizer_beside(model_file: Path) -> Path | None:
    """The tokenizer folder shipped next to a single-file checkpoint, if any."""
    for folder in (model_file.with_name(f"{model_file.stem}-tokenizer"), model_file.parent / "tokenizer"):
        if _has_tokenizer_files(folder):
            return folder
    return None


def load_tokenizer(
    folder: Path | None, tokenizer_path: str | os.PathLike | None, model: Path
) -> CLIPTokenizer:
    """The tokenizer from `tokenizer_path`, else `folder` (found beside the model), else the hub."""
    if tokenizer_path is not None:
        tokenizer_path = Path(tokenizer_path)
        if not _has_tokenizer_files(tokenizer_path):
            raise UserError(
                f"--tokenizer_path {tokenizer_path}: not a folder with {' and '.join(TOKENIZER_FILES)}"
            )
        return _from_folder(tokenizer_path)
    if folder is not None:
        return _from_folder(folder)
    return _from_hub(model)


def hub_offline() -> bool:
    """Read at call time (huggingface_hub reads its constant once, at import)."""
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _has_tokenizer_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in TOKENIZER_FILES)


def _from_folder(folder: Path) -> CLIPTokenizer:
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{folder}: the CLIP tokenizer files there do not load ({reason})") from error


def _from_hub(model: Path) -> CLIPTokenizer:
    # Download the files rather than call CLIPTokenizer.from_pretrained(repo id): transformers 5 returns an
    # empty 3-token tokenizer, without any error, when it finds no files.
    offline = hub_offline()
    try:
        folder = snapshot_download(HUB_TOKENIZER, allow_patterns=HUB_FILES, local_files_only=offline)
    except OSError as error:
        reason = (
            "offline (HF_HUB_OFFLINE is set)"
            if offline
            else f"the hub did not answer ({type(error).__name__})"
        )
        raise UserError(
            f"no tokenizer for {model}: {reason} and none beside it; pass --tokenizer_path DIR (a folder with "
            f"vocab.json and merges.txt) or put one in {model.with_name(model.stem + '-tokenizer')}/"
        ) from error
    if not _has_tokenizer_files(Path(folder)):
        raise UserError(
            f"no tokenizer for {model}: {HUB_TOKENIZER} on the hub lacks {' or '.join(TOKENIZER_FILES)}"
        )
    return _from_folder(Path(folder))
