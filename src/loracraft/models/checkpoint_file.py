"""Single-file checkpoints: read `.safetensors` / `.ckpt` / `.pt` / `.pth` / `.bin`, write `.safetensors`.

Pickled files are read with `torch.load(weights_only=True)`: loracraft never runs code from a model file.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from loracraft.atomic import write_atomic
from loracraft.errors import UserError
from loracraft.safetensors_header import canonicalize_file

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """All tensors and (safetensors only) the metadata of a single-file checkpoint, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: no such file; pass a .safetensors or .ckpt checkpoint or a diffusers folder"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise UserError(
        f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors, {', '.join(PICKLE_SUFFIXES)}"
    )


def write_checkpoint(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write `tensors` as `.safetensors` atomically (a crash never leaves half a file), with a canonical
    header: the same tensors and metadata always give the same bytes."""
    contiguous = {key: tensor.contiguous() for key, tensor in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(contiguous, str(tmp), metadata=metadata)
        canonicalize_file(tmp)

    write_atomic(path, write)


def _read_safetensors(path: Path) -> CheckpointFile:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = dict(file.metadata() or {})
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError) as error:
        raise UserError(
            f"{path} is not a valid .safetensors file ({error}); it may be truncated, re-download it"
        ) from error
    return CheckpointFile(path, tensors, metadata)


def _read_pickle(path: Path) -> CheckpointFile:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load raises whatever the bytes trigger: KeyError for a text file, RuntimeError for a cut zip,
    # UnpicklingError for code it refuses to run.
    except Exception as error:
        raise UserError(
            f"{path} cannot be read as a PyTorch checkpoint with weights_only=True ({_pickle_reason(error)}); "
            "use the model's .safetensors release or re-download the file"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a dictionary of tensors")
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    return CheckpointFile(path, tensors)


def _pickle_reason(error: Exception) -> str:
    text = str(error)
    marker = "WeightsUnpickler error: "
    if marker in text:
        text = text.split(marker, 1)[1]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first.split('. ')[0][:200]}"
