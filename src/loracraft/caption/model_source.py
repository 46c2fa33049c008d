"""Finding a captioning `--model`: a local folder, or a hub id downloaded once into the hub cache.

A folder is used as it is. A hub id is fetched in two steps: the small files first (configs, the tag
list), which say what the model is, then only the weights that kind runs (a tagger's model.onnx; a
transformers model's safetensors, or its .bin files where a repository has no safetensors). Offline, the
cache serves what an earlier run fetched; a model that is not there is one line naming the `--model`
folder to pass instead. kohya's tagger flags are taken too: `--repo_id` names the model, and a
`--model_dir` that holds kohya's download of it (`MODEL_DIR/owner_name/`) is used as it is.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from loracraft.errors import UserError

# kohya's tag_images_by_wd14_tagger.py default.
DEFAULT_TAGGER = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
TAGGER_MODEL = "model.onnx"
TAGGER_TAGS = "selected_tags.csv"
# A repository's Python files are never fetched: loracraft runs no code from a model repository.
_SMALL_FILES = ["*.json", "*.csv", "*.txt", "*.model", "*.tiktoken"]
# The hub's rule: ASCII letters, digits, `_`, `-` and `.`, neither first nor last (`./name` is a path).
_HUB_ID = re.compile(r"^\w(?:[\w.-]*\w)?/\w(?:[\w.-]*\w)?$", re.ASCII)


class ModelKind(Enum):
    TAGGER = "WD14 tagger"
    BLIP = "BLIP"
    BLIP2 = "BLIP-2"
    GIT = "GIT"
    FLORENCE2 = "Florence-2"


# config.json's model_type for each transformers captioner.
MODEL_TYPES = {
    "blip": ModelKind.BLIP,
    "blip-2": ModelKind.BLIP2,
    "git": ModelKind.GIT,
    "florence2": ModelKind.FLORENCE2,
}
_KINDS_TEXT = "a WD14 tagger (model.onnx with selected_tags.csv), BLIP, BLIP-2, GIT or Florence-2"


@dataclass(frozen=True)
class Model:
    folder: Path
    kind: ModelKind
    name: str


def find_model(args: argparse.Namespace) -> Model:
    """The model `--model` (or kohya's `--repo_id`) names, with its files on disk."""
    name = args.model or getattr(args, "repo_id", None) or DEFAULT_TAGGER
    folder = Path(name).expanduser()
    if folder.is_dir():
        return Model(folder, model_kind(folder, name), name)
    if folder.exists():
        raise UserError(
            f"--model {name} is a file; pass the folder that holds the model's files, or a hub id"
        )
    kohya_copy = _kohya_model_dir_copy(name, getattr(args, "model_dir", None))
    if kohya_copy is not None:
        return Model(kohya_copy, model_kind(kohya_copy, name), name)
    if not _HUB_ID.match(name):
        raise UserError(f"--model {name}: no such folder, and not a hub id (owner/name); check the path")
    return _from_hub(name, force=getattr(args, "force_download", False))


def _kohya_model_dir_copy(repo_id: str, model_dir: str | None) -> Path | None:
    """kohya's tagger download of `repo_id` in `model_dir`, when it has the tagger's files."""
    if not model_dir:
        return None
    folder = Path(model_dir).expanduser() / repo_id.replace("/", "_")
    return folder if (folder / TAGGER_MODEL).is_file() else None


def model_kind(folder: Path, name: str) -> ModelKind:
    """What the model in `folder` is, from its files; anything else is one line naming what it is."""
    if (folder / TAGGER_MODEL).is_file() or any(folder.glob("*.onnx")):
        if not (folder / TAGGER_TAGS).is_file():
            raise UserError(
                f"--model {name}: the tagger has no {TAGGER_TAGS} beside its ONNX model; "
                f"copy the one from the tagger's hub page into {folder}"
            )
        return ModelKind.TAGGER
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"--model {name}: {folder} holds no captioning model; pass {_KINDS_TEXT} folder")
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
        model_type = settings.get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise UserError(f"--model {name}: cannot read {config} ({error}); download the model again") from None
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"--model {name} is a {model_type or 'untyped'} model, not a captioner loracraft runs; "
            f"use {_KINDS_TEXT} model, or --endpoint for other vision-language models"
        )
    if MODEL_TYPES[model_type] is ModelKind.FLORENCE2 and "auto_map" in settings:
        # Its config points at Python files in the repository (trust_remote_code): never run, never fetched.
        raise UserError(
            f"--model {name} is Florence-2's original release, which runs its own code; use its "
            "transformers conversion instead, e.g. --model florence-community/Florence-2-large"
        )
    return MODEL_TYPES[model_type]


def _from_hub(repo_id: str, force: bool) -> Model:
    folder = _download(repo_id, _SMALL_FILES, force)
    kind = model_kind_of_download(folder, repo_id)
    weights = [TAGGER_MODEL] if kind is ModelKind.TAGGER else ["*.safetensors"]
    folder = _download(repo_id, weights, force)
    if kind is not ModelKind.TAGGER and not any(folder.glob("*.safetensors")):
        folder = _download(repo_id, ["*.bin"], force)
    return Model(folder, kind, repo_id)


def model_kind_of_download(folder: Path, repo_id: str) -> ModelKind:
    """A hub model's kind from its small files (its ONNX weights are not fetched yet)."""
    if (folder / TAGGER_TAGS).is_file() and not (folder / "config.json").is_file():
        return ModelKind.TAGGER
    return model_kind(folder, repo_id)


def _download(repo_id: str, patterns: list[str], force: bool) -> Path:
    """The files of `repo_id` matching `patterns`, from the hub cache (fetched there first when online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, force_download=force))
    except GatedRepoError:
        raise UserError(
            f"--model {repo_id} is gated on the hub: accept its terms on its page and log in "
            "(`hf auth login`), or download it and pass --model FOLDER"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"--model {repo_id}: no such model on the hub; check the name, or pass a folder"
        ) from None
    except (LocalEntryNotFoundError, OSError) as error:
        if not isinstance(error, LocalEntryNotFoundError) and not _is_connection_error(error):
            raise
        raise UserError(
            f"--model {repo_id} is not in the local cache and the hub cannot be reached; on a machine "
            f"online, download it (`hf download {repo_id} --local-dir FOLDER`) and pass --model FOLDER"
        ) from None


def _is_connection_error(error: OSError) -> bool:
    """Whether `error` is the network's (the hub unreachable), not a disk's."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectionError", "ConnectTimeout", "ReadTimeout", "OfflineModeIsEnabled"})
