"""The hashes A1111, sd-webui-additional-networks and kohya write into and read from metadata.

Old ("legacy") hash: SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits (A1111's old model hash;
for a .safetensors LoRA, additional-networks' legacy hash). New hash of a model file: SHA-256 of the
whole file. addnet hash of a .safetensors file: SHA-256 of everything after the header (the tensor data).
"""

import hashlib
import os

_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000
_CHUNK = 1 << 20


def safetensors_data_offset(serialized: bytes | memoryview) -> int:
    """Where the tensor data starts: after the 8-byte little-endian header length and the header."""
    return 8 + int.from_bytes(serialized[:8], "little")


def addnet_hash(serialized: bytes | memoryview) -> str:
    """SHA-256 of a serialized .safetensors file's data section (A1111 `addnet_hash_safetensors`)."""
    return hashlib.sha256(memoryview(serialized)[safetensors_data_offset(serialized) :]).hexdigest()


def legacy_hash(serialized: bytes | memoryview) -> str:
    """First 8 hex digits of SHA-256 of the 64 KiB at offset 1 MiB (empty past the end of small files)."""
    window = memoryview(serialized)[_LEGACY_OFFSET : _LEGACY_OFFSET + _LEGACY_LENGTH]
    return hashlib.sha256(window).hexdigest()[:8]


def file_legacy_hash(path: str | os.PathLike) -> str:
    """A1111's old model hash of a file (kohya `ss_sd_model_hash`)."""
    with open(path, "rb") as f:
        f.seek(_LEGACY_OFFSET)
        return hashlib.sha256(f.read(_LEGACY_LENGTH)).hexdigest()[:8]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a whole file, read in 1 MiB chunks (kohya `ss_new_sd_model_hash`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
