"""`loracraft plan`'s memory estimate against the CUDA allocator's peak in real training steps (skipped
without CUDA). The model is the tiny SD1 model (SD1's exact topology, narrower) at 512x512, so the
attention runs over SD1's 4096 latent positions; bf16 as most GPU runs are."""

import pytest
import torch

from data_helpers import make_kohya_dataset
from loracraft.config.load import build_config
from loracraft.tools.plan import plan_run
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.progress import TrainingLog
from loracraft.training.step import diffusion_loss
from run_helpers import set_up

pytestmark = pytest.mark.gpu


def test_the_estimate_is_within_a_quarter_of_cuda_peak_memory(tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setenv("LORACRAFT_CACHE", str(tmp_path / "cache"))
    data = make_kohya_dataset(tmp_path / "data", sizes=((512, 512),) * 2, formats=("png", "png"), reg_count=0)
    config = build_config(
        {},
        {
            "pretrained_model_name_or_path": str(tiny_sd1.single_file), "train_data_dir": str(data.train_dir),
            "output_dir": str(tmp_path / "out"), "caption_extension": ".txt", "resolution": "512,512",
            "network_dim": 8, "train_batch_size": 2, "max_train_steps": 4, "mixed_precision": "bf16",
            "seed": 3, "max_data_loader_n_workers": 0,
        },
    )  # fmt: skip
    memory = plan_run(config, lambda _: None).memory
    assert memory.device.type == "cuda"

    start, setup, _ = set_up(config)
    device = start.accelerator.device
    model = start.accelerator.unwrap_model(setup.parts.model)
    peaks: dict[bool, int] = {}

    def after_step(position) -> None:
        # Step 2 runs without gradient checkpointing, step 3 with it; each is measured from the state the
        # step before left (weights, LoRA, optimizer state on the device; gradients freed).
        torch.cuda.synchronize(device)
        if position.step >= 2:
            peaks[position.step == 3] = torch.cuda.max_memory_allocated(device)
        if position.step == 2:
            model.enable_gradient_checkpointing()
            model.train()
        torch.cuda.reset_peak_memory_stats(device)

    log = TrainingLog(start.plan.steps.max_train_steps, show_bar=False)
    loss_of = lambda batch: diffusion_loss(setup.step_models, batch, device)  # noqa: E731
    run_epochs(
        start.accelerator, setup.parts, loss_of, start.plan.steps, 1.0, log, LoopHooks(after_step=after_step)
    )

    for checkpointing in (False, True):
        # The estimate counts tensors; the allocator also holds cuDNN's convolution workspaces and
        # rounds every block: a quarter either way.
        estimated = memory.total(checkpointing)
        assert estimated == pytest.approx(peaks[checkpointing], rel=0.25), (checkpointing, estimated, peaks)
    assert peaks[True] < peaks[False]
