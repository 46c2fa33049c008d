import pickle

import pytest
import torch

from data_helpers import make_kohya_dataset
from loracraft.data.dataset import BucketBatchDataset, batch_loader
from loracraft.data.latent_cache import cache_latents_to_disk, encode_latents_in_memory
from loracraft.data.plan import build_epoch_plan, epoch_batches
from loracraft.data.scan import scan_dreambooth_dir


def fake_vae(pixels: torch.Tensor) -> torch.Tensor:
    pooled = torch.nn.functional.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


@pytest.fixture
def plan(tmp_path):
    tree = make_kohya_dataset(tmp_path, repeats=2, reg_count=3)
    train, _ = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    reg, _ = scan_dreambooth_dir(tree.reg_dir, is_reg=True, caption_extension=".txt")
    return build_epoch_plan(
        train + reg,
        resolution=(64, 64),
        train_batch_size=2,
        seed=7,
        max_train_epochs=2,
        max_train_steps=None,
        enable_bucket=True,
        min_bucket_reso=64,
        max_bucket_reso=128,
        bucket_reso_steps=64,
    )


def as_comparable(item: dict) -> dict:
    return {key: value.tolist() if isinstance(value, torch.Tensor) else value for key, value in item.items()}


def test_items_are_whole_single_bucket_batches(plan):
    dataset = BucketBatchDataset(plan, prior_loss_weight=0.5)
    assert len(dataset) == plan.batches_per_epoch == 8  # 8 train + 8 balanced reg samples, batches of 2
    order = epoch_batches(plan, 0)
    for index, item in enumerate(dataset):
        batch = order[index]
        bucket = plan.images[batch[0]].choice.bucket
        assert item["pixels"].shape == (len(batch), 3, bucket[1], bucket[0])
        assert item["pixels"].min() >= -1 and item["pixels"].max() <= 1
        assert item["captions"] == [plan.images[i].record.caption for i in batch]
        assert item["is_reg"].tolist() == [plan.images[i].record.is_reg for i in batch]
        assert item["loss_weights"].tolist() == [0.5 if reg else 1.0 for reg in item["is_reg"].tolist()]
        assert item["target_sizes_hw"].tolist() == [[bucket[1], bucket[0]]] * len(batch)
        assert item["original_sizes_hw"].tolist() == [
            [plan.images[i].record.height, plan.images[i].record.width] for i in batch
        ]
        assert item["crop_top_lefts"].shape == (len(batch), 2)


def test_epochs_are_deterministic_and_differ(plan):
    first, second = BucketBatchDataset(plan), BucketBatchDataset(plan)
    epoch0 = [as_comparable(item) for item in first]
    assert epoch0 == [as_comparable(item) for item in second]
    first.set_epoch(1)
    assert [item["paths"] for item in first] != [item["paths"] for item in epoch0]


def test_latents_from_memory_and_from_files_agree(plan):
    in_memory = encode_latents_in_memory(plan.images, encode=fake_vae, vae_batch_size=4, progress=False)
    files, _ = cache_latents_to_disk(
        plan.images, encode=fake_vae, vae_identity="fake", vae_batch_size=4, progress=False
    )
    from_memory, from_files = (
        BucketBatchDataset(plan, latents=in_memory),
        BucketBatchDataset(plan, latent_files=files),
    )
    for a, b in zip(from_memory, from_files, strict=True):
        assert "pixels" not in a
        assert a["latents"].shape[1] == 4
        assert torch.equal(a["latents"], b["latents"])


def test_dataset_pickles_without_open_handles(plan):
    dataset = BucketBatchDataset(plan)
    dataset.set_epoch(1)
    copy = pickle.loads(pickle.dumps(dataset))
    assert as_comparable(copy[0]) == as_comparable(dataset[0])


def test_two_persistent_workers_follow_set_epoch(plan):
    reference = BucketBatchDataset(plan)
    expected = []
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        expected.append([as_comparable(item) for item in reference])

    dataset = BucketBatchDataset(plan)
    loader = batch_loader(dataset, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        assert [as_comparable(item) for item in loader] == expected[epoch]
