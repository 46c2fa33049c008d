"""LoRA file writing and reading: formats, precision, hashes recomputed from the final bytes, atomicity."""

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from loracraft.errors import UserError
from loracraft.networks import lora_file
from loracraft.networks.lora_file import read_lora_file, save_lora_file

NAME = "lora_unet_down_blocks_0_attentions_0_proj_in"


def lora_state(rank: int = 4, width: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        f"{NAME}.lora_down.weight": torch.randn(rank, width, 1, 1, generator=generator),
        f"{NAME}.lora_up.weight": torch.randn(width, rank, 1, 1, generator=generator),
        f"{NAME}.alpha": torch.tensor(rank / 2),
    }


def big_lora_state() -> dict[str, torch.Tensor]:
    """About 2 MiB of tensor data, so the legacy hash window (64 KiB at 1 MiB) holds real bytes."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for i in range(4):
        name = f"lora_te_text_model_encoder_layers_{i}_mlp_fc1"
        state[f"{name}.lora_down.weight"] = torch.randn(64, 1024, generator=generator)
        state[f"{name}.lora_up.weight"] = torch.randn(1024, 64, generator=generator)
        state[f"{name}.alpha"] = torch.tensor(32.0)
    return state


def header_and_data(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    end = 8 + int.from_bytes(raw[:8], "little")
    return raw[8:end], raw[end:]


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    state = lora_state()
    save_lora_file(state, path, {"ss_network_dim": "4", "ss_tag_frequency": json.dumps({"a": {"b": 1}})})
    loaded, metadata = read_lora_file(path)
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key])
    assert metadata["ss_network_dim"] == "4"
    assert json.loads(metadata["ss_tag_frequency"]) == {"a": {"b": 1}}
    assert all(isinstance(value, str) for value in metadata.values())
    header, _ = header_and_data(path)
    assert header.startswith(b'{"'), 'A1111 asserts the header starts with {"'


@pytest.mark.parametrize("state_factory", [lora_state, big_lora_state])
def test_hashes_match_the_final_file(tmp_path: Path, state_factory) -> None:
    path = tmp_path / "out.safetensors"
    state = state_factory()
    metadata = {"ss_output_name": "x", "modelspec.title": "x", "modelspec.date": "2024-01-01T00:00:00"}
    save_lora_file(state, path, metadata, torch.float16)
    _, written = read_lora_file(path)
    raw = path.read_bytes()
    _, data = header_and_data(path)
    # A1111 `addnet_hash_safetensors` and additional-networks' legacy hash, on the final file
    assert written["sshs_model_hash"] == hashlib.sha256(data).hexdigest()
    assert written["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    # kohya's in-memory hash (tensors + ss_* metadata only) agrees: metadata never moves tensor data
    kohya_bytes = safetensors.torch.save(
        {k: v.to(torch.float32 if k.endswith(".alpha") else torch.float16) for k, v in state.items()},
        {k: v for k, v in metadata.items() if k.startswith("ss_")},
    )
    kohya_data = kohya_bytes[8 + int.from_bytes(kohya_bytes[:8], "little") :]
    assert written["sshs_model_hash"] == hashlib.sha256(kohya_data).hexdigest()


def test_kohya_in_memory_legacy_hash_would_miss_the_final_file(tmp_path: Path) -> None:
    """Why we do not copy kohya here: its legacy hash sees a header without modelspec/sshs keys."""
    path = tmp_path / "big.safetensors"
    state, metadata = big_lora_state(), {"ss_output_name": "x", "modelspec.title": "x"}
    save_lora_file(state, path, metadata)
    kohya_bytes = safetensors.torch.save(state, {"ss_output_name": "x"})
    kohya_legacy = hashlib.sha256(kohya_bytes[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert read_lora_file(path)[1]["sshs_legacy_hash"] != kohya_legacy


def test_big_file_exercises_the_legacy_window(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_lora_file(big_lora_state(), path)
    assert path.stat().st_size > 0x110000
    assert read_lora_file(path)[1]["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_save_precision_keeps_alpha_fp32(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "out.safetensors"
    save_lora_file(lora_state(), path, None, dtype)
    loaded, _ = read_lora_file(path)
    assert loaded[f"{NAME}.lora_down.weight"].dtype == dtype
    assert loaded[f"{NAME}.lora_up.weight"].dtype == dtype
    alpha = loaded[f"{NAME}.alpha"]
    assert alpha.dtype == torch.float32 and alpha.shape == () and alpha.item() == 2.0


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_torch_formats_hold_the_same_keys(tmp_path: Path, suffix: str) -> None:
    state = lora_state()
    save_lora_file(state, tmp_path / f"out{suffix}", {"ss_network_dim": "4"}, torch.float16)
    save_lora_file(state, tmp_path / "out.safetensors", {"ss_network_dim": "4"}, torch.float16)
    loaded, metadata = read_lora_file(tmp_path / f"out{suffix}")
    reference, _ = read_lora_file(tmp_path / "out.safetensors")
    assert metadata == {}
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in loaded)


def test_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    transposed = torch.randn(32, 4).t()
    save_lora_file({**lora_state(), "lora_unet_x.lora_down.weight": transposed}, tmp_path / "out.safetensors")
    assert torch.equal(
        read_lora_file(tmp_path / "out.safetensors")[0]["lora_unet_x.lora_down.weight"], transposed
    )


def test_unknown_suffix_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="out.bin: unknown LoRA file type '.bin'"):
        save_lora_file(lora_state(), tmp_path / "out.bin")
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="x.bin: unknown LoRA file type"):
        read_lora_file(tmp_path / "x.bin")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
            "not a readable .safetensors",
        ),
        ("short.safetensors", b"\x01", "not a readable .safetensors"),
        ("bad.pt", b"definitely not a pickle", "not a readable LoRA checkpoint"),
    ],
)
def test_unreadable_files_are_user_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=f"{name}: {message}"):
        read_lora_file(tmp_path / name)


def test_missing_and_non_lora_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.safetensors: LoRA file not found"):
        read_lora_file(tmp_path / "nope.safetensors")
    torch.save({"step": 3}, tmp_path / "state.pt")
    with pytest.raises(UserError, match="state.pt: does not hold a LoRA state dict"):
        read_lora_file(tmp_path / "state.pt")


def fail_half_way(target: Path) -> None:
    target.write_text("partial")
    raise OSError("disk full")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_failed_write_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    path = tmp_path / f"out{suffix}"
    save_lora_file(lora_state(), path, {"ss_epoch": "1"})
    before = path.read_bytes()
    if suffix == ".pt":
        monkeypatch.setattr(lora_file.torch, "save", lambda obj, target: fail_half_way(target))
    else:
        monkeypatch.setattr(Path, "write_bytes", lambda target, data: fail_half_way(target))
    with pytest.raises(OSError, match="disk full"):
        save_lora_file(lora_state(rank=2), path, {"ss_epoch": "2"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left behind"


def test_header_is_canonical_so_seeded_runs_write_identical_bytes(tmp_path):
    # safetensors orders the metadata map by hash, which varies between processes; ours is sorted.
    tensors = {"lora_unet_b.alpha": torch.tensor(1.0), "lora_unet_a.alpha": torch.tensor(2.0)}
    metadata = {f"ss_key_{i}": str(i) for i in range(30)}
    path = tmp_path / "x.safetensors"
    save_lora_file(tensors, path, metadata)
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    assert raw[8:10] == b'{"' and length % 8 == 0
    header = json.loads(raw[8 : 8 + length])
    assert list(header) == ["__metadata__", "lora_unet_a.alpha", "lora_unet_b.alpha"]
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    again = tmp_path / "y.safetensors"
    save_lora_file(tensors, again, dict(reversed(list(metadata.items()))))
    assert again.read_bytes() == raw
