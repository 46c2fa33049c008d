"""A fixed order for a .safetensors header, so the same tensors and metadata always give the same bytes.

safetensors writes its metadata map in hash order, which changes from process to process: two runs that
compute identical weights would write different files. Sorting the header's keys makes a seeded LoRA run,
or a rebuild of the tiny model, byte-identical to the last one. Tensor data and offsets are untouched, and
the header still starts with `{"` and stays padded with spaces to 8 bytes, as A1111 and safetensors want.
"""

import json
import os
from pathlib import Path

_LENGTH_BYTES = 8


def canonical_header(header_json: bytes) -> bytes:
    """The header's JSON with `__metadata__` first, then every key sorted, padded to 8 bytes."""
    header = json.loads(header_json)
    metadata = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % 8)


def canonical_bytes(serialized: bytes) -> bytes:
    """A whole serialized file, in memory, with its header in canonical order."""
    length = int.from_bytes(serialized[:_LENGTH_BYTES], "little")
    header = canonical_header(serialized[_LENGTH_BYTES : _LENGTH_BYTES + length])
    return len(header).to_bytes(_LENGTH_BYTES, "little") + header + serialized[_LENGTH_BYTES + length :]


def canonicalize_file(path: str | os.PathLike) -> None:
    """Put the header of a written file in canonical order without reading its tensors into memory.

    Reordering keys keeps the header's length, so it is rewritten in place. Should the JSON ever come out
    of another length (an escape written differently), the file is rewritten whole.
    """
    path = Path(path)
    with path.open("r+b") as file:
        length = int.from_bytes(file.read(_LENGTH_BYTES), "little")
        header = canonical_header(file.read(length))
        if len(header) == length:
            file.seek(_LENGTH_BYTES)
            file.write(header)
            return
    path.write_bytes(canonical_bytes(path.read_bytes()))
