"""Where each family's tokenizers come from, and SDXL's second tokenizer when none is given."""

from pathlib import Path

import pytest

from loracraft.errors import UserError
from loracraft.models import tokenizer_source
from loracraft.models.tokenizer_build import build_clip_tokenizer
from loracraft.models.tokenizer_source import HUB_TOKENIZER_2, HUB_TOKENIZERS, load_tokenizers

WORDS = ["red", "circle", "sks"]


@pytest.fixture
def model(tmp_path) -> Path:
    """A single file's place; the tokenizer sources only look at names beside it."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"")
    return path


def make_tokenizer(folder: Path) -> Path:
    return build_clip_tokenizer(WORDS, folder)


def test_sdxl_tokenizer_2_beside_the_file(model):
    make_tokenizer(model.with_name("m-tokenizer"))
    make_tokenizer(model.with_name("m-tokenizer_2"))

    tokenizer, tokenizer_2 = load_tokenizers("sdxl", model, None)

    assert tokenizer.name_or_path == str(model.with_name("m-tokenizer"))
    assert tokenizer_2.name_or_path == str(model.with_name("m-tokenizer_2"))
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer_2.pad_token == "!"


def test_sdxl_tokenizer_2_is_tokenizer_1_padded_with_exclamation_mark(model):
    make_tokenizer(model.parent / "tokenizer")

    tokenizer, tokenizer_2 = load_tokenizers("sdxl", model, None)

    assert tokenizer_2.name_or_path == str(model.parent / "tokenizer")
    assert tokenizer_2.get_vocab() == tokenizer.get_vocab()
    assert tokenizer_2.pad_token_id == tokenizer.get_vocab()["!"] != tokenizer.pad_token_id
    ids = tokenizer_2("red circle", padding="max_length", max_length=8).input_ids
    assert ids[-1] == tokenizer_2.pad_token_id


def test_flags_win(model, tmp_path):
    make_tokenizer(model.with_name("m-tokenizer"))
    make_tokenizer(model.with_name("m-tokenizer_2"))
    first, second = make_tokenizer(tmp_path / "one"), make_tokenizer(tmp_path / "two")

    tokenizer, tokenizer_2 = load_tokenizers("sdxl", model, first, second)

    assert (tokenizer.name_or_path, tokenizer_2.name_or_path) == (str(first), str(second))


def test_bad_tokenizer_2_path(model, tmp_path):
    make_tokenizer(model.with_name("m-tokenizer"))
    with pytest.raises(UserError) as error:
        load_tokenizers("sdxl", model, None, tmp_path / "nothing")
    assert (
        str(error.value)
        == f"--tokenizer_2_path {tmp_path / 'nothing'}: not a folder with vocab.json and merges.txt"
    )


def test_diffusers_folder_tokenizers(tmp_path):
    make_tokenizer(tmp_path / "tokenizer")
    make_tokenizer(tmp_path / "tokenizer_2")

    tokenizer, tokenizer_2 = load_tokenizers("sdxl", tmp_path, None)

    assert tokenizer.name_or_path == str(tmp_path / "tokenizer")
    assert tokenizer_2.name_or_path == str(tmp_path / "tokenizer_2")


def test_sd1_and_sd2_have_no_second_tokenizer_and_sd2_pads_with_exclamation_mark(model):
    make_tokenizer(model.with_name("m-tokenizer"))
    sd1, none_1 = load_tokenizers("sd1", model, None)
    sd2, none_2 = load_tokenizers("sd2", model, None)
    assert none_1 is none_2 is None
    assert sd1.pad_token == "<|endoftext|>"
    assert sd2.pad_token == "!"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The hub as a dict of repository -> local folder; a missing repository fails as offline does."""
    folders: dict[str, Path] = {}
    asked: list[tuple[str, str]] = []

    def download(repository: str, subfolder: str) -> Path:
        asked.append((repository, subfolder))
        if repository not in folders:
            raise OSError("offline")
        return folders[repository] / subfolder

    monkeypatch.setattr(tokenizer_source, "_download", download)
    return folders, asked


def test_sdxl_tokenizers_from_the_hub(model, tmp_path, fake_hub):
    folders, asked = fake_hub
    folders[HUB_TOKENIZERS["sdxl"][0]] = make_tokenizer(tmp_path / "clip-l")
    folders[HUB_TOKENIZER_2[0]] = make_tokenizer(tmp_path / "bigg")

    tokenizer, tokenizer_2 = load_tokenizers("sdxl", model, None)

    assert asked == [HUB_TOKENIZERS["sdxl"], HUB_TOKENIZER_2]
    assert tokenizer_2.name_or_path == str(tmp_path / "bigg")
    assert tokenizer_2.pad_token == "!"


def test_sdxl_tokenizer_2_falls_back_to_tokenizer_1_when_the_hub_lacks_it(model, tmp_path, fake_hub):
    folders, _ = fake_hub
    folders[HUB_TOKENIZERS["sdxl"][0]] = make_tokenizer(tmp_path / "clip-l")

    _, tokenizer_2 = load_tokenizers("sdxl", model, None)

    assert tokenizer_2.name_or_path == str(tmp_path / "clip-l")
    assert tokenizer_2.pad_token == "!"


def test_sd2_hub_tokenizer_is_sd2s(model, tmp_path, fake_hub):
    folders, asked = fake_hub
    make_tokenizer(tmp_path / "sd2" / "tokenizer")
    folders["stabilityai/stable-diffusion-2-1-base"] = tmp_path / "sd2"

    tokenizer, _ = load_tokenizers("sd2", model, None)

    assert asked == [("stabilityai/stable-diffusion-2-1-base", "tokenizer")]
    assert tokenizer.pad_token == "!"


def test_offline_without_any_tokenizer_names_the_flag(model, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        load_tokenizers("sdxl", model, None)
    message = str(error.value)
    assert message.startswith(f"no tokenizer for {model}: offline (HF_HUB_OFFLINE is set) and none beside it")
    assert "pass --tokenizer_path DIR" in message
    assert "\n" not in message
