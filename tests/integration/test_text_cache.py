import numpy as np
import pytest
import torch

from data_helpers import make_kohya_dataset
from loracraft.data.cache_fill import LatentCacheJob, TextCacheJob, fill_disk_caches
from loracraft.data.plan import build_epoch_plan
from loracraft.data.scan import scan_dreambooth_dir
from loracraft.data.text_cache import (
    cache_text_states,
    load_cached_text_states,
    text_cache_file_path,
    text_cache_file_paths,
)
from loracraft.errors import UserError


class FakeTextEncoder:
    """(B, 3, 2) states that depend on each caption's characters; records every batch it is given."""

    def __init__(self, offset: float = 0.0):
        self.batches: list[list[str]] = []
        self.offset = offset

    def __call__(self, captions: list[str]) -> torch.Tensor:
        self.batches.append(list(captions))
        codes = [[float(sum(map(ord, c))), float(len(c)), self.offset] for c in captions]
        return torch.tensor(codes, dtype=torch.float16).reshape(len(captions), 3, 1).expand(-1, -1, 2)

    @property
    def encoded(self) -> list[str]:
        return [caption for batch in self.batches for caption in batch]


@pytest.fixture
def tree(tmp_path):
    return make_kohya_dataset(tmp_path, reg_count=0)


def disk_pass(tree, captions=None, identity="te-a", encoder=None):
    encoder = encoder or FakeTextEncoder()
    captions = list(captions or tree.captions)
    files = text_cache_file_paths(list(tree.images), captions)
    paths, report = cache_text_states(
        captions, encode=encoder, identity=identity, batch_size=2, files=files, progress=False
    )
    return encoder, paths, report


def test_in_memory_encodes_each_distinct_caption_once_in_batches():
    encoder = FakeTextEncoder()
    captions = ["a red circle", "a blue square", "a red circle", "x", "a blue square"]
    states = cache_text_states(captions, encode=encoder, identity="unused", batch_size=2, progress=False)
    assert encoder.batches == [["a red circle", "a blue square"], ["x"]]
    assert len(states) == 5 and states[0] is states[2]
    assert states[0].dtype == torch.float32 and states[0].shape == (3, 2)
    assert torch.equal(states[3], encoder(["x"])[0].float())


def test_disk_files_sit_beside_the_images_and_are_reused(tree):
    encoder, paths, report = disk_pass(tree)
    assert [p.name for p in paths] == [f"image_0{i}_te_sd.npz" for i in range(4)]
    assert all(p.parent == tree.concept_dir for p in paths)
    assert (report.encoded, report.loaded, report.warnings) == (4, 0, ())
    with np.load(paths[1]) as npz:
        assert str(npz["caption"]) == tree.captions[1] and str(npz["te_identity"]) == "te-a"
        assert npz["hidden_states"].dtype == np.float32
    assert torch.equal(load_cached_text_states(paths[1]), encoder([tree.captions[1]])[0].float())
    assert not list(tree.concept_dir.glob(".*tmp"))

    encoder, same, report = disk_pass(tree)
    assert (same, report.encoded, report.loaded, encoder.batches) == (paths, 0, 4, [])


def test_changed_caption_recomputes_that_file_only(tree):
    disk_pass(tree)
    captions = list(tree.captions)
    captions[2] = "sks toy, a new caption"
    encoder, paths, report = disk_pass(tree, captions)
    assert (report.encoded, report.loaded, encoder.encoded) == (1, 3, ["sks toy, a new caption"])
    assert torch.equal(load_cached_text_states(paths[2]), encoder(["sks toy, a new caption"])[0].float())


def test_changed_identity_recomputes_everything(tree):
    disk_pass(tree)
    encoder, paths, report = disk_pass(tree, identity="te-b clip_skip=2", encoder=FakeTextEncoder(offset=1))
    assert report.encoded == 4
    assert load_cached_text_states(paths[0])[2, 0] == 1


def test_corrupt_file_is_recomputed_with_a_warning(tree):
    _, paths, _ = disk_pass(tree)
    paths[0].write_bytes(b"PK\x03\x04 broken")
    paths[3].write_bytes(paths[3].read_bytes()[:60])
    _, _, report = disk_pass(tree)
    assert report.encoded == 2
    assert [w.split(" is unreadable")[0] for w in report.warnings] == [
        f"text-encoder cache {paths[0]}", f"text-encoder cache {paths[3]}"
    ]  # fmt: skip
    assert load_cached_text_states(paths[0]).shape == (3, 2)


def test_shared_captions_are_encoded_once_on_disk_too(tree):
    encoder, _, report = disk_pass(tree, ["same"] * 4)
    assert report.encoded == 4 and encoder.encoded == ["same"]


def test_an_image_trained_with_two_captions_gets_two_files(tree):
    image = tree.images[0]
    files = text_cache_file_paths([image, image, image], ["one", "two", "one"])
    assert files[0] == files[2] != files[1]
    assert files[0].name.startswith("image_00_te_") and files[0].name.endswith("_sd.npz")
    assert text_cache_file_paths([image], ["one"]) == [text_cache_file_path(image)]


def test_non_finite_states_stop_with_a_message(tree):
    def broken(captions):
        return torch.full((len(captions), 3, 2), float("nan"))

    with pytest.raises(UserError, match="text encoder produced NaN/inf for the caption"):
        cache_text_states(["a"], encode=broken, identity="x", batch_size=1, progress=False)


def test_unreadable_file_during_training_is_a_user_error(tmp_path):
    path = tmp_path / "gone_te_sd.npz"
    path.write_bytes(b"nothing")
    with pytest.raises(UserError, match=f"text-encoder cache {path} became unreadable"):
        load_cached_text_states(path)


def test_cache_only_fills_both_caches_and_summarises(tree):
    subsets, _ = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    plan = build_epoch_plan(
        subsets, resolution=(64, 64), train_batch_size=2, seed=0, max_train_epochs=1, max_train_steps=None,
        enable_bucket=True, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64,
    )  # fmt: skip

    def vae(pixels):
        return torch.nn.functional.avg_pool2d(pixels, 8)

    latents = LatentCacheJob(encode=vae, vae_identity="v", vae_batch_size=2, flip_aug=True)
    text = TextCacheJob(
        captions=[image.record.caption for image in plan.images],
        encode=FakeTextEncoder(),
        identity="t",
        batch_size=4,
    )
    summary, warnings = fill_disk_caches(plan.images, latents=latents, text=text, progress=False)
    assert summary == (
        "cache_only: 4 images: latent caches 4 written, 0 already current; "
        "text-encoder caches 4 written, 0 already current; no training was run"
    )
    assert warnings == []
    assert len(list(tree.concept_dir.glob("*_sd.npz"))) == 8
    summary, _ = fill_disk_caches(plan.images, latents=latents, text=text, progress=False)
    assert "latent caches 0 written, 4 already current" in summary
    assert "text-encoder caches 0 written, 4 already current" in summary
