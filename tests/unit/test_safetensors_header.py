"""The canonical .safetensors header: same tensors and metadata, same bytes, whatever wrote the file."""

import json

import torch
from safetensors.torch import load_file, save, save_file

from loracraft.models.checkpoint_file import read_checkpoint, write_checkpoint
from loracraft.safetensors_header import canonical_bytes, canonicalize_file

TENSORS = {"z.weight": torch.arange(4.0), "a.weight": torch.ones(2, 3, dtype=torch.float16)}
METADATA = {f"key_{i:02d}": str(i) for i in range(40)}


def header_of(raw: bytes) -> tuple[int, dict]:
    length = int.from_bytes(raw[:8], "little")
    return length, json.loads(raw[8 : 8 + length])


def test_checkpoints_with_the_same_content_are_byte_identical(tmp_path):
    write_checkpoint(tmp_path / "a.safetensors", TENSORS, METADATA)
    write_checkpoint(
        tmp_path / "b.safetensors", dict(reversed(TENSORS.items())), dict(reversed(METADATA.items()))
    )

    raw = (tmp_path / "a.safetensors").read_bytes()
    assert raw == (tmp_path / "b.safetensors").read_bytes()
    length, header = header_of(raw)
    assert raw[8:10] == b'{"' and length % 8 == 0
    assert list(header) == ["__metadata__", "a.weight", "z.weight"]
    assert list(header["__metadata__"]) == sorted(METADATA)
    loaded = read_checkpoint(tmp_path / "a.safetensors")
    assert loaded.metadata == METADATA
    assert all(torch.equal(loaded.tensors[key], value) for key, value in TENSORS.items())


def test_in_place_rewrite_matches_the_in_memory_one(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(TENSORS, str(path), metadata=METADATA)
    expected = canonical_bytes(path.read_bytes())

    canonicalize_file(path)

    assert path.read_bytes() == expected
    assert all(torch.equal(load_file(str(path))[key], value) for key, value in TENSORS.items())


def test_a_header_of_another_length_is_rewritten_whole(tmp_path):
    # Another writer's header with spaces after separators: the canonical one is shorter.
    raw = save(TENSORS, metadata={"note": "x"})
    length, header = header_of(raw)
    spaced = json.dumps(header).encode()
    spaced += b" " * (-len(spaced) % 8)
    path = tmp_path / "spaced.safetensors"
    path.write_bytes(len(spaced).to_bytes(8, "little") + spaced + raw[8 + length :])

    canonicalize_file(path)

    assert path.read_bytes() == canonical_bytes(raw)
    assert load_file(str(path))["z.weight"].tolist() == [0.0, 1.0, 2.0, 3.0]
