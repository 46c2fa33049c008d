"""Several processes without launching them: how accelerate splits the batch loader (each batch on one
process, buckets intact, kohya's step arithmetic), skipping batches for a resume, the printed plan, and
the DDP and DeepSpeed settings made from kohya's flags."""

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader, skip_first_batches

from loracraft.config.schema import TrainConfig
from loracraft.data.dataset import BucketBatchDataset, batch_loader
from loracraft.data.plan import build_epoch_plan, count_steps, epoch_batches
from loracraft.data.records import ImageRecord, Subset
from loracraft.data.summary import format_plan
from loracraft.errors import UserError
from loracraft.training.accelerator import main_process_echo, make_accelerator, seed_step_draws
from loracraft.training.distributed import deepspeed_plugin, process_kwargs


def mixed_bucket_plan(**options):
    """5 square, 2 landscape and 1 portrait image in batches of 2: 3 + 1 + 1 = 5 batches over 3 buckets."""
    sizes = [(512, 512)] * 5 + [(1000, 600)] * 2 + [(600, 1000)]
    folder = Path("/data/img/1_toy")
    records = tuple(
        ImageRecord(folder / f"{i:02d}.png", "toy", w, h, is_reg=False, subset="1_toy")
        for i, (w, h) in enumerate(sizes)
    )
    settings = dict(resolution=(512, 512), enable_bucket=True, train_batch_size=2, seed=3, max_train_epochs=2)
    return build_epoch_plan(
        [Subset(folder, "toy", 1, False, records)], max_train_steps=None, **{**settings, **options}
    )


def latent_dataset(plan) -> BucketBatchDataset:
    """Items without image files: each image's cached latents are filled with its index."""
    latents = [
        torch.full((4, image.choice.bucket[1] // 8, image.choice.bucket[0] // 8), float(index))
        for index, image in enumerate(plan.images)
    ]
    return BucketBatchDataset(plan, latents=latents)


def image_indices(item: dict) -> tuple[int, ...]:
    return tuple(int(latents[0, 0, 0]) for latents in item["latents"])


def process_loaders(dataset: BucketBatchDataset, processes: int):
    make_accelerator("no", 1)  # accelerate 0.33 reads its state while preparing a loader
    loader = batch_loader(dataset, num_workers=0)
    return [
        prepare_data_loader(loader, num_processes=processes, process_index=index, put_on_device=False)
        for index in range(processes)
    ]


def epoch_items(loader, epoch: int) -> list[dict]:
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_processes_share_each_epoch_in_whole_single_bucket_batches(epoch):
    plan = mixed_bucket_plan()
    assert (plan.batches_per_epoch, len(plan.buckets)) == (5, 3)
    order = epoch_batches(plan, epoch)
    shares = [
        [image_indices(item) for item in epoch_items(loader, epoch)]
        for loader in process_loaders(latent_dataset(plan), 2)
    ]
    # kohya's arithmetic: each process runs ceil(5 / 2) = 3 batches; one batch from the epoch's start
    # runs twice (accelerate's even_batches), so both processes step together.
    assert [len(share) for share in shares] == [3, 3]
    loaded = shares[0] + shares[1]
    assert sorted(loaded) == sorted(order + order[:1])
    for batch in loaded:
        assert len({plan.images[i].choice.bucket for i in batch}) == 1


def test_every_batch_runs_once_when_the_processes_divide_the_epoch():
    plan = mixed_bucket_plan(train_batch_size=1)  # 8 batches
    shares = [
        [image_indices(item) for item in epoch_items(loader, 1)]
        for loader in process_loaders(latent_dataset(plan), 2)
    ]
    assert sorted(shares[0] + shares[1]) == sorted(epoch_batches(plan, 1))
    assert len(shares[0]) == len(shares[1]) == 4


def test_one_process_gets_the_epoch_exactly_as_the_dataset_orders_it():
    plan = mixed_bucket_plan()
    (loader,) = process_loaders(latent_dataset(plan), 1)
    reference = latent_dataset(plan)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        expected = [image_indices(item) for item in reference]
        assert [image_indices(item) for item in epoch_items(loader, epoch)] == expected
        assert expected == epoch_batches(plan, epoch)


class CountingDataset(BucketBatchDataset):
    def __init__(self, plan, loaded: list[int]):
        super().__init__(plan, latents=latent_dataset(plan).latents)
        self.loaded = loaded

    def __getitem__(self, index: int) -> dict:
        self.loaded.append(index)
        return super().__getitem__(index)


def test_skipping_batches_to_resume_never_loads_them():
    plan = mixed_bucket_plan()
    loaded: list[int] = []
    (loader,) = process_loaders(CountingDataset(plan, loaded), 1)
    skipped = skip_first_batches(loader, 3)
    # accelerate 0.33 starts the new loader at epoch 0: the epoch is set on the loader that is iterated.
    skipped.set_epoch(1)
    items = [image_indices(item) for item in skipped]
    assert loaded == [3, 4]
    assert items == epoch_batches(plan, 1)[3:]


@pytest.mark.parametrize(
    ("batches", "processes", "accumulation"),
    [(5, 2, 1), (5, 2, 2), (7, 3, 2), (8, 4, 3), (1, 2, 1), (12, 2, 4), (9, 1, 2)],
)
def test_planned_steps_are_the_prepared_loaders_length_over_accumulation(batches, processes, accumulation):
    """kohya (reference §5.1): steps per epoch = ceil(len(prepared loader) / accumulation)."""
    sampler = torch.utils.data.BatchSampler(range(batches), batch_size=1, drop_last=False)
    prepared_length = len(BatchSamplerShard(sampler, num_processes=processes, process_index=0))
    assert prepared_length == math.ceil(batches / processes)
    steps = count_steps(
        batches,
        gradient_accumulation_steps=accumulation,
        num_processes=processes,
        max_train_epochs=1,
        max_train_steps=None,
    )
    assert steps.steps_per_epoch == math.ceil(prepared_length / accumulation)


def test_the_printed_plan_shows_each_process_share_and_the_global_batch():
    plan = mixed_bucket_plan(num_processes=2, gradient_accumulation_steps=2)
    text = format_plan(plan)
    for line in [
        "  8 samples in batches of 2 = 5 batches per epoch (each bucket rounds up on its own)",
        "  5 batches / 2 processes = 3 batches per process per epoch (1 batch from the epoch's start run "
        "twice, so every process has as many)",
        "  global batch: batch size 2 x 2 processes x grad accumulation 2 = 8 images per optimizer step",
        "  3 batches / grad accumulation 2 = 2 optimizer steps per epoch",
        "  2 epochs x 2 = 4 optimizer steps",
    ]:
        assert line in text.splitlines()


def test_one_process_prints_no_process_lines():
    text = format_plan(mixed_bucket_plan(gradient_accumulation_steps=2))
    assert "5 batches / grad accumulation 2 = 3 optimizer steps per epoch" in text
    assert "process" not in text and "global batch" not in text


def test_only_the_main_process_echoes():
    lines: list[str] = []
    main_process_echo(SimpleNamespace(is_main_process=True), lines.append)("plan")
    main_process_echo(SimpleNamespace(is_main_process=False), lines.append)("plan")
    assert lines == ["plan"]


def test_processes_after_the_first_draw_their_own_noise():
    draws = []
    for index in (0, 1, 2):
        torch.manual_seed(5)
        torch.rand(3)  # the LoRA's initialisation
        seed_step_draws(5, SimpleNamespace(process_index=index))
        draws.append(torch.randn(4))
    torch.manual_seed(5)
    torch.rand(3)
    assert torch.equal(draws[0], torch.randn(4))  # process 0 draws as a one-process run
    torch.manual_seed(6)
    assert torch.equal(draws[1], torch.randn(4))
    assert not torch.equal(draws[1], draws[2])


def ddp_kwargs(config: TrainConfig) -> dict:
    (handler,) = [h for h in process_kwargs(config) if type(h).__name__ == "DistributedDataParallelKwargs"]
    return handler.to_kwargs()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, {"find_unused_parameters": True}),  # text-encoder adapters after --clip_skip get no gradient
        ({"network_train_unet_only": True}, {}),
        (
            {"ddp_static_graph": True, "ddp_gradient_as_bucket_view": True},
            {"static_graph": True, "gradient_as_bucket_view": True},
        ),
    ],
)
def test_ddp_looks_for_unused_adapters_only_where_there_can_be_some(settings, expected):
    assert ddp_kwargs(TrainConfig(**settings)) == expected


def test_one_process_takes_no_process_group_settings(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert [type(h).__name__ for h in process_kwargs(TrainConfig(ddp_timeout=90))] == [
        "DistributedDataParallelKwargs"
    ]


def test_several_processes_take_the_timeout_in_minutes_and_gloo_without_cuda(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (group,) = [h for h in process_kwargs(TrainConfig(ddp_timeout=90)) if hasattr(h, "timeout")]
    assert group.backend == "gloo" and group.timeout.total_seconds() == 90 * 60


def test_a_static_graph_cannot_stop_the_text_encoder_mid_run(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainConfig(ddp_static_graph=True, stop_text_encoder_training=10)
    with pytest.raises(UserError) as error:
        process_kwargs(config)
    assert str(error.value) == (
        "--ddp_static_graph assumes the same weights train at every step, but --stop_text_encoder_training "
        "freezes the text encoder's LoRA mid-run; drop one of them"
    )


def pretend_deepspeed_is(installed: bool, monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: (
            (object() if installed else None) if name == "deepspeed" else find_spec(name, *args)
        ),
    )


def test_deepspeed_without_the_package_is_one_line_with_the_install_command(monkeypatch):
    pretend_deepspeed_is(False, monkeypatch)
    assert deepspeed_plugin(TrainConfig()) is None
    with pytest.raises(UserError) as error:
        deepspeed_plugin(TrainConfig(deepspeed=True))
    assert str(error.value) == (
        "--deepspeed needs the deepspeed package: install it with `DS_BUILD_OPS=0 pip install deepspeed`"
    )


def test_deepspeed_takes_kohyas_settings(monkeypatch):
    pretend_deepspeed_is(True, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "4")
    config = TrainConfig(
        deepspeed=True,
        train_batch_size=3,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
        mixed_precision="fp16",
        offload_optimizer_device="cpu",
        fp16_master_weights_and_gradients=True,
    )
    settings = deepspeed_plugin(config).deepspeed_config
    assert settings["zero_optimization"]["stage"] == 2
    assert settings["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert (settings["train_micro_batch_size_per_gpu"], settings["train_batch_size"]) == (3, 3 * 2 * 4)
    assert (settings["gradient_accumulation_steps"], settings["gradient_clipping"]) == (2, 0.5)
    assert settings["fp16"]["enabled"] and settings["fp16"]["initial_scale_power"] == 0
    assert settings["fp16"]["fp16_master_weights_and_grads"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"zero_stage": 3},
            "--zero_stage 3 splits the LoRA's weights across the processes and loracraft does not gather "
            "them to save the file; use --zero_stage 2 (the LoRA's optimizer state and gradients are split)",
        ),
        (
            {"fp16_master_weights_and_gradients": True, "mixed_precision": "fp16"},
            "--fp16_master_weights_and_gradients works only with --mixed_precision fp16, --zero_stage 2 and "
            "--offload_optimizer_device cpu (DeepSpeed's CPU Adam); add them or drop it",
        ),
    ],
)
def test_deepspeed_settings_it_cannot_honour_are_refused(monkeypatch, settings, message):
    pretend_deepspeed_is(True, monkeypatch)
    with pytest.raises(UserError) as error:
        deepspeed_plugin(TrainConfig(deepspeed=True, **settings))
    assert str(error.value) == message
