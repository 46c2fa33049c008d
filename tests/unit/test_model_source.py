"""Finding `loracraft caption --model`: folders, files, hub ids (from the cache, offline, unreachable),
kohya's `--model_dir` copies, and each wrong thing passed as a model in one line.

The hub is never reached: its cache is a folder of the test's (huggingface_hub's own layout,
`models--owner--name/refs/main` and `snapshots/<commit>/`), offline mode and the endpoint are set in
huggingface_hub's constants, and `snapshot_download` is swapped for a recorder where the test is which
files each step asks for.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from transformers import CLIPTextConfig, CLIPTextModel

from loracraft.caption.model_source import DEFAULT_TAGGER, ModelKind, find_model
from loracraft.errors import UserError
from loracraft.tools.caption import make_parser

REPO = "someone/tiny-captioner"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SMALL_FILES = ["*.json", "*.csv", "*.txt", "*.model", "*.tiktoken"]  # never *.py: no repository code
KINDS_WE_TAKE = "a WD14 tagger (model.onnx with selected_tags.csv), BLIP, BLIP-2, GIT or Florence-2"


def flags(*argv: str):
    return make_parser().parse_args(["images", *argv])


def refusal(*argv: str) -> str:
    with pytest.raises(UserError) as caught:
        find_model(flags(*argv))
    message = str(caught.value)
    assert "\n" not in message
    return message


def transformers_folder(folder: Path, model_type: str, weights: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    (folder / weights).write_bytes(b"weights")
    return folder


def tagger_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,general,9,1\n")
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache of the test's own, with the hub offline."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cached_snapshot(cache: Path, repo_id: str) -> Path:
    """Where huggingface_hub keeps `repo_id`'s files at COMMIT, with `main` pointing at it."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return storage / "snapshots" / COMMIT


@pytest.mark.parametrize(
    ("model_type", "kind"),
    [
        ("blip", ModelKind.BLIP),
        ("blip-2", ModelKind.BLIP2),
        ("git", ModelKind.GIT),
        ("florence2", ModelKind.FLORENCE2),
    ],
)
def test_a_transformers_folder_is_the_kind_its_config_names(tmp_path, model_type, kind):
    folder = transformers_folder(tmp_path / "model", model_type)
    model = find_model(flags("--model", str(folder)))
    assert (model.folder, model.kind, model.name) == (folder, kind, str(folder))


def test_a_tagger_folder_is_a_tagger(tmp_path):
    folder = tagger_folder(tmp_path / "tagger")
    assert find_model(flags("--model", str(folder))).kind is ModelKind.TAGGER


def test_a_model_of_another_kind_names_its_type_and_the_kinds_we_take(tmp_path):
    folder = tmp_path / "clip-text"
    config = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    CLIPTextModel(config).save_pretrained(folder)
    assert refusal("--model", str(folder)) == (
        f"--model {folder} is a clip_text_model model, not a captioner loracraft runs; use {KINDS_WE_TAKE} "
        "model, or --endpoint for other vision-language models"
    )


def test_an_empty_folder_holds_no_model(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert refusal("--model", str(folder)) == (
        f"--model {folder}: {folder} holds no captioning model; pass {KINDS_WE_TAKE} folder"
    )


def test_a_file_passed_as_the_model_asks_for_its_folder(tmp_path):
    weights = transformers_folder(tmp_path / "blip", "blip") / "model.safetensors"
    assert refusal("--model", str(weights)) == (
        f"--model {weights} is a file; pass the folder that holds the model's files, or a hub id"
    )


def test_a_tagger_without_its_tag_list_says_where_to_put_it(tmp_path):
    folder = tagger_folder(tmp_path / "tagger")
    (folder / "selected_tags.csv").unlink()
    message = refusal("--model", str(folder))
    assert message.startswith(f"--model {folder}: the tagger has no selected_tags.csv beside its ONNX model")
    assert message.endswith(f"into {folder}")


def test_an_unreadable_config_says_to_download_again(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    message = refusal("--model", str(folder))
    assert message.startswith(f"--model {folder}: cannot read {folder / 'config.json'} (")
    assert message.endswith("download the model again")


@pytest.mark.parametrize(
    "path", ["missing-folder", "models/missing/folder", "./missing", "../up", "owner/name-", "é/model"]
)
def test_a_path_that_is_neither_a_folder_nor_a_hub_id(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    assert (
        refusal("--model", path)
        == f"--model {path}: no such folder, and not a hub id (owner/name); check the path"
    )


def test_kohyas_model_dir_copy_of_the_tagger_is_used_as_it_is(tmp_path, hub_cache):
    copy = tagger_folder(tmp_path / "wd14_tagger_model" / DEFAULT_TAGGER.replace("/", "_"))
    model = find_model(flags("--model_dir", str(tmp_path / "wd14_tagger_model")))
    assert (model.folder, model.kind, model.name) == (copy, ModelKind.TAGGER, DEFAULT_TAGGER)
    # kohya's --repo_id names the model too.
    assert (
        find_model(
            flags("--repo_id", DEFAULT_TAGGER, "--model_dir", str(tmp_path / "wd14_tagger_model"))
        ).folder
        == copy
    )


def offline_message(repo_id: str) -> str:
    return (
        f"--model {repo_id} is not in the local cache and the hub cannot be reached; on a machine online, "
        f"download it (`hf download {repo_id} --local-dir FOLDER`) and pass --model FOLDER"
    )


def test_offline_with_an_empty_cache_names_the_folder_to_pass(hub_cache):
    assert refusal("--model", REPO) == offline_message(REPO)
    assert list(hub_cache.rglob("*.safetensors")) == []


def test_an_unreachable_hub_with_an_empty_cache_names_the_folder_to_pass(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Nothing listens on the discard port: the connection is refused at once.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert refusal("--model", REPO) == offline_message(REPO)


def test_offline_a_hub_id_is_served_from_the_cache(hub_cache):
    snapshot = transformers_folder(cached_snapshot(hub_cache, REPO), "git")
    model = find_model(flags("--model", REPO))
    assert (Path(model.folder), model.kind, model.name) == (snapshot, ModelKind.GIT, REPO)


def test_offline_a_cached_tagger_is_served_from_the_cache(hub_cache):
    snapshot = tagger_folder(cached_snapshot(hub_cache, DEFAULT_TAGGER))
    model = find_model(flags())
    assert (Path(model.folder), model.kind, model.name) == (snapshot, ModelKind.TAGGER, DEFAULT_TAGGER)


class RecordedHub:
    """snapshot_download's stand-in: the patterns each call asks for, and the folder it gives back."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.calls: list[tuple[list[str], bool]] = []

    def __call__(self, repo_id: str, allow_patterns: list[str], force_download: bool = False) -> str:
        assert repo_id == REPO
        self.calls.append((allow_patterns, force_download))
        return str(self.folder)


@pytest.mark.parametrize(
    ("make", "weights"),
    [
        (lambda folder: transformers_folder(folder, "blip-2"), [["*.safetensors"]]),
        # A repository without safetensors: its PyTorch .bin weights are fetched instead.
        (
            lambda folder: transformers_folder(folder, "blip", "pytorch_model.bin"),
            [["*.safetensors"], ["*.bin"]],
        ),
        (tagger_folder, [["model.onnx"]]),
    ],
    ids=["safetensors", "bin", "tagger"],
)
def test_a_hub_model_is_fetched_small_files_first_then_only_its_weights(tmp_path, monkeypatch, make, weights):
    hub = RecordedHub(make(tmp_path / "download"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    find_model(flags("--model", REPO))
    assert hub.calls == [(SMALL_FILES, False)] + [(patterns, False) for patterns in weights]


def test_force_download_fetches_each_step_again(tmp_path, monkeypatch):
    hub = RecordedHub(transformers_folder(tmp_path / "download", "git"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    find_model(flags("--model", REPO, "--force_download"))
    assert hub.calls == [(SMALL_FILES, True), (["*.safetensors"], True)]


def hub_error(error_class: type[Exception]) -> Exception:
    """An error of huggingface_hub's kind without the HTTP response its constructor wants."""
    error = error_class.__new__(error_class)
    Exception.__init__(error, "404 Client Error")
    return error


@pytest.mark.parametrize(
    ("error_class", "expected"),
    [
        (
            RepositoryNotFoundError,
            f"--model {REPO}: no such model on the hub; check the name, or pass a folder",
        ),
        (
            GatedRepoError,
            f"--model {REPO} is gated on the hub: accept its terms on its page and log in (`hf auth login`), "
            "or download it and pass --model FOLDER",
        ),
    ],
)
def test_a_hub_id_that_cannot_be_fetched_says_why(monkeypatch, error_class, expected):
    def refuse(*args, **kwargs):
        raise hub_error(error_class)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    assert refusal("--model", REPO) == expected
