"""Write and read kohya-format LoRA files (.safetensors with metadata and hashes, or .ckpt/.pt).

A .safetensors file gets `sshs_model_hash` and `sshs_legacy_hash` like kohya's, except that both are
computed on the bytes of the final file (what A1111 and additional-networks recompute), not on kohya's
in-memory copy with only the ss_* metadata:
- `sshs_model_hash` hashes only the tensor data, which metadata never changes, so it equals kohya's value.
- `sshs_legacy_hash` hashes the 64 KiB at offset 1 MiB of the file, which the header length shifts; kohya
  hashes a shorter header than it writes, so its value misses its own file once that passes 1 MiB. Ours
  matches whenever the header is shorter than 1 MiB (always in practice; a longer header would contain
  the hash itself).
"""

import os
import pickle
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from loracraft.atomic import write_atomic
from loracraft.errors import UserError
from loracraft.networks.hashes import addnet_hash, legacy_hash
from loracraft.safetensors_header import canonical_bytes

MODEL_HASH_KEY = "sshs_model_hash"
LEGACY_HASH_KEY = "sshs_legacy_hash"
_TORCH_SUFFIXES = (".ckpt", ".pt")


def save_lora_file(
    state_dict: dict[str, Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a LoRA atomically; the format follows the suffix (.safetensors, .ckpt or .pt).

    `dtype` is the save precision (`--save_precision`: float32, float16 or bfloat16; None keeps each
    tensor's dtype). `alpha` tensors always stay fp32: they set each module's strength. Metadata and
    hashes are written to .safetensors only, as kohya does.
    """
    path = Path(path)
    tensors = _tensors_for_saving(state_dict, dtype)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data = _serialize_with_hashes(tensors, metadata or {})
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
    elif suffix in _TORCH_SUFFIXES:
        write_atomic(path, lambda tmp: torch.save(tensors, tmp))
    else:
        raise UserError(
            f"{path}: unknown LoRA file type {suffix!r}; use .safetensors, .ckpt or .pt (--save_model_as)"
        )


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors (on CPU) and metadata of a LoRA file; .ckpt/.pt files have no metadata."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: LoRA file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in _TORCH_SUFFIXES:
        return _read_torch(path), {}
    raise UserError(f"{path}: unknown LoRA file type {suffix!r}; expected .safetensors, .ckpt or .pt")


def read_lora_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A .safetensors file's metadata from its header alone (no tensor is read); {} for .ckpt/.pt files,
    which have none, and for a file that cannot be read (reading its tensors names what is wrong)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except (safetensors.SafetensorError, OSError):
        return {}


def _tensors_for_saving(state_dict: dict[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    def convert(key: str, tensor: Tensor) -> Tensor:
        target = torch.float32 if key.endswith(".alpha") else (dtype or tensor.dtype)
        return tensor.detach().to(device="cpu", dtype=target).contiguous()

    return {key: convert(key, tensor) for key, tensor in state_dict.items()}


def _serialize_with_hashes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    # Placeholders as long as the real hashes give the draft the final header length, hence the final
    # layout; the real values then replace them without moving a byte of tensor data.
    placeholders = {MODEL_HASH_KEY: "0" * 64, LEGACY_HASH_KEY: "0" * 8}
    draft = canonical_bytes(safetensors.torch.save(tensors, {**metadata, **placeholders}))
    hashes = {MODEL_HASH_KEY: addnet_hash(draft), LEGACY_HASH_KEY: legacy_hash(draft)}
    del draft
    return canonical_bytes(safetensors.torch.save(tensors, {**metadata, **hashes}))


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (safetensors.SafetensorError, OSError) as error:
        raise UserError(
            f"{path}: not a readable .safetensors file ({error}); re-download or re-save it"
        ) from error
    return tensors, metadata


def _read_torch(path: Path) -> dict[str, Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise UserError(
            f"{path}: not a readable LoRA checkpoint ({error}); re-download or re-save it"
        ) from error
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise UserError(f"{path}: does not hold a LoRA state dict (a mapping of names to tensors)")
    return loaded
