"""The `sshs_*` hashes a LoRA file stores, recomputed from the file and compared.

`sshs_model_hash` is the SHA-256 of the tensor data (what A1111 shows and Civitai looks up); only a change
of the tensors changes it. `sshs_legacy_hash` is the SHA-256 of the 64 KiB at offset 1 MiB of the file
(networks/hashes.py): for files past 1 MiB a change of the metadata moves that window. kohya computes
both on a copy of the file holding only its `ss_*` metadata (train_util.precalculate_safetensors_hashes),
so its legacy hash misses its own file once that passes 1 MiB; that value is recomputed too and counts
as a match (networks/lora_file.py writes hashes of the final file instead).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import Tensor

from loracraft.networks.hashes import addnet_hash, legacy_hash
from loracraft.networks.lora_file import LEGACY_HASH_KEY, MODEL_HASH_KEY

MATCH = "match"
DIFFER = "differ"
ABSENT = "absent"


@dataclass(frozen=True)
class HashCheck:
    key: str
    status: str
    """MATCH, DIFFER or ABSENT."""
    stored: str | None
    computed: str | None
    """None for a .ckpt/.pt file: its hashes are not defined."""
    note: str | None = None


def check_hashes(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> list[HashCheck]:
    """The check of each stored hash against the file's bytes."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        note = "a .ckpt/.pt file has no metadata to store hashes in"
        return [HashCheck(key, ABSENT, None, None, note) for key in (MODEL_HASH_KEY, LEGACY_HASH_KEY)]
    data = memoryview(path.read_bytes())
    model = _compare(
        MODEL_HASH_KEY,
        metadata.get(MODEL_HASH_KEY),
        addnet_hash(data),
        "the tensors were changed after saving",
    )
    legacy = _compare(
        LEGACY_HASH_KEY, metadata.get(LEGACY_HASH_KEY), legacy_hash(data), "the file was edited after saving"
    )
    if legacy.status == DIFFER and legacy.stored == _kohya_legacy_hash(tensors, metadata):
        legacy = HashCheck(LEGACY_HASH_KEY, MATCH, legacy.stored, legacy.computed,
                           "as kohya computes it, on the file with only its ss_* metadata")  # fmt: skip
    return [model, legacy]


def _compare(key: str, stored: str | None, computed: str, why_different: str) -> HashCheck:
    if stored is None:
        return HashCheck(key, ABSENT, None, computed)
    if stored == computed:
        return HashCheck(key, MATCH, stored, computed)
    return HashCheck(key, DIFFER, stored, computed, why_different)


def _kohya_legacy_hash(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    training = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    return legacy_hash(safetensors.torch.save(dict(tensors), training))
