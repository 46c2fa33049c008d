"""Reading single-file checkpoints safely, and the one-line errors for broken files."""

import pytest
import torch

from loracraft.errors import UserError
from loracraft.models.checkpoint_file import read_checkpoint, write_checkpoint

TENSORS = {"model.diffusion_model.out.2.weight": torch.arange(6.0).reshape(2, 3), "ids": torch.arange(3)}


def test_safetensors_round_trip_with_metadata(tmp_path):
    write_checkpoint(tmp_path / "m.safetensors", TENSORS, {"loracraft.vae_scaling_factor": "0.5"})

    loaded = read_checkpoint(tmp_path / "m.safetensors")

    assert loaded.metadata == {"loracraft.vae_scaling_factor": "0.5"}
    assert all(torch.equal(loaded.tensors[key], TENSORS[key]) for key in TENSORS)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


@pytest.mark.parametrize("wrap", [False, True])
def test_ckpt_loads_with_weights_only_and_unwraps_state_dict(tmp_path, wrap):
    torch.save({"state_dict": TENSORS, "global_step": 10} if wrap else TENSORS, tmp_path / "m.ckpt")

    loaded = read_checkpoint(tmp_path / "m.ckpt")

    assert sorted(loaded.tensors) == sorted(TENSORS)
    assert loaded.metadata == {}


class Payload:
    """A class in the pickle: weights_only refuses to build it."""


def error_of(path) -> str:
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "no such file" in error_of(tmp_path / "nope.safetensors")


def test_truncated_safetensors(tmp_path):
    write_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(1000)}, {})
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    assert "is not a valid .safetensors file" in error_of(tmp_path / "m.safetensors")


def test_text_file_renamed_ckpt(tmp_path):
    (tmp_path / "m.ckpt").write_text("this is not a checkpoint\n")
    assert "cannot be read as a PyTorch checkpoint with weights_only=True" in error_of(tmp_path / "m.ckpt")


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"state_dict": TENSORS, "callback": Payload()}, tmp_path / "m.ckpt")
    message = error_of(tmp_path / "m.ckpt")
    assert "Unsupported global" in message and "Payload" in message


def test_pickle_that_holds_no_dict(tmp_path):
    torch.save(torch.zeros(2), tmp_path / "m.pt")
    assert "holds a Tensor, not a dictionary of tensors" in error_of(tmp_path / "m.pt")


def test_unknown_extension(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\0")
    assert "unknown checkpoint type '.onnx'" in error_of(tmp_path / "m.onnx")
