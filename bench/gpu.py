"""GPU benchmark: loracraft's training step on SD1.5- and SDXL-shaped models (step time, images/s, MFU,
peak memory).

Each model is built with random weights from the shipped diffusers config (`config_inference.base_config`)
and goes through the trainer's own pieces: `trainer.build_model` (frozen U-Net cast to the
`--mixed_precision` dtype, kohya's default LoRA targets through `build_lora_network`, LoRA weights in
float32, `LoRADiffusionModel`), the run's Accelerator (`make_accelerator`: autocast), `build_optimizer`
(AdamW), `build_lr_scheduler`, `StepModels` + `step.diffusion_loss`, and `loop.run_epochs` (backward,
gradient clipping at 1.0, optimizer and schedule step, the progress log's loss read-back every 10 steps).
Only the data loader is replaced: one batch of cached latents and cached text-encoder outputs (random
tensors of the real shapes: SD1.5 states (B, 77, 768); SDXL states (B, 77, 2048), pooled (B, 1280) and the
size conditioning), already on the device, is served every step.

Timing: `--warmup` steps, then `torch.cuda.synchronize()`, `reset_peak_memory_stats()`, `--steps` timed
steps, `synchronize()` again; the peak is `max_memory_allocated()` over the timed steps (weights, LoRA,
AdamW state and activations; not the allocator's cache). A batch that runs out of memory is reported as
OOM and the benchmark goes on.

FLOPs per image (the training step, U-Net only, latents and text outputs cached), from
`shared/reference/perf-anchors.md` §1 ("LoRA r32 on 8 module types, fwd+bwd"): SD1.5 at 512 px 1.781 TF,
SDXL at 1024 px 14.619 TF (2.2 x the 6.761 TF forward). They are model FLOPs: gradient checkpointing's
recomputation is not counted, as MFU conventionally does not. `--count_flops` also counts one step's
FLOPs with `torch.utils.flop_counter` on the run's own model (matmul, conv and attention only, like
§1), after the timed steps, and prints them beside the constant; the tiny models, and any `--latent`
other than the model's own, use the counted figure. Checked on the CPU: full-size SD1.5 at 64x64
counts 1.7806 TF per image through this step (192 LoRA modules, 13.57 M parameters); SDXL's LoRA has
722 modules and 85.11 M parameters, the count perf-anchors.md §1 gives for "r32 (+proj_in/out, ff)".

MFU = FLOPs per image x images/s / `--peak_tflops`. The default peak is 790 TFLOP/s: the "790 TFLOP/s
(bf16 dense)" perf-anchors.md uses for its ideal step times (§2) and targets (§6), so our MFU reads
against those tables. It is what a bf16 8192^3 matmul reaches through PyTorch on the H200 we are lent
(769-798 TFLOP/s measured, .library/device/KINDS.md), not NVIDIA's datasheet figure: the H200 SXM
datasheet lists 1,979 TFLOP/s BF16 with sparsity, ~989 dense; `--peak_tflops 989` gives MFU against
that (x 0.80).

On CUDA, LyCORIS (>= 4) runs the adapters through its own kernels: fused Triton ops for Linear adapters
(tuned once per shape on first use) and a torch.compile'd op for Conv2d ones (SD1's 1x1 proj_in/out),
so the first steps of each batch size compile and tune; the warm-up absorbs it and each batch's first
step time is printed. `LYCORIS_KERNEL_BACKEND=torch` in the environment times eager adapters instead.

    python bench/gpu.py                                  # SD1.5 512 + SDXL 1024, batch 1/4/8, on CUDA
    python bench/gpu.py --models sdxl --batches 4 --gradient_checkpointing --json out.json
    python bench/gpu.py --device cpu --tiny              # tiny SD1/SDXL-topology models on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from loracraft.training.progress import TrainingLog

PEAK_TFLOPS_DEFAULT = 790.0  # perf-anchors.md §2/§6: "790 TFLOP/s (bf16 dense)", H200-class
RANK, ALPHA = 32, 16


@dataclass(frozen=True)
class Model:
    family: str  # loracraft's family name: the shipped config folder and kohya's LoRA names
    latent: int  # latent side at the benchmark's resolution (pixels / 8)
    flops_per_image: float  # training step, perf-anchors.md §1


MODELS = {
    "sd15": Model("sd1", 64, 1.781e12),
    "sdxl": Model("sdxl", 128, 14.619e12),
}

# Tiny widths on the real block layouts (SD1: 4 levels, attention in the first three; SDXL: 3 levels,
# plain first level, 1/2/10 transformer layers, linear projections, the text_time add-embedding).
TINY_LATENT = 16
TINY = {
    "sd1": {
        "block_out_channels": [32, 32, 64, 64],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,  # SD1's config counts heads here: 8 heads of 4 and 8 channels
    },
    "sdxl": {
        "block_out_channels": [32, 64, 64],
        "cross_attention_dim": 64,  # TE1 32 + TE2 32
        "attention_head_dim": [2, 4, 4],
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 32 + 6 * 8,  # TE2's pooled output + six size values
    },
}
SIZE_VALUES = 6  # SDXL time_ids: original h, w; crop top, left; target h, w


@dataclass
class Row:
    model: str
    resolution: int
    latent: int
    batch: int
    status: str  # "ok", "OOM", or "error: ..."
    ms_per_step: float | None = None
    images_per_s: float | None = None
    tflops_per_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    flops_per_image: float | None = None
    """The FLOPs behind TF/s and MFU: perf-anchors.md §1's, or the counted ones for the tiny models."""
    counted_flops_per_image: float | None = None
    """One step's FLOPs as torch's flop counter saw them (--count_flops, --tiny)."""
    build_s: float | None = None
    """Seconds to build the model, its LoRA, optimizer and accelerator (once per model)."""
    first_step_s: float | None = None
    """The batch size's first (warm-up) step: set-up and kernel compiles."""
    non_finite_loss: bool = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--batches", default="1,4,8", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny SD1/SDXL-topology models (CPU smoke runs)")
    parser.add_argument("--latent", type=int, help="latent side instead of 64/128 (tiny: 16)")
    parser.add_argument(
        "--mixed_precision",
        choices=("bf16", "no"),
        help="default bf16 on CUDA; no (float32) on the CPU, whose bf16 matmuls are ~10x slower",
    )
    parser.add_argument("--sdpa", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--torch_compile", action="store_true", help="accelerate's inductor compile")
    parser.add_argument("--count_flops", action="store_true", help="also count one step's FLOPs")
    parser.add_argument("--peak_tflops", type=float, help=f"default {PEAK_TFLOPS_DEFAULT:g} on CUDA")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the settings and rows here")
    args = parser.parse_args(argv)
    args.model_names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in args.model_names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.warmup < 1 or args.steps < 1 or not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--warmup, --steps and every batch size must be at least 1")
    if args.mixed_precision is None:
        args.mixed_precision = "bf16" if args.device == "cuda" else "no"
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = PEAK_TFLOPS_DEFAULT
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks: accelerate then picks the CPU
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA GPU here; run with --device cpu --tiny")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(machine_line(args), flush=True)
    print(settings_line(args), flush=True)
    rows: list[Row] = []
    for name in args.model_names:
        for row in bench_model(name, args):
            rows.append(row)
            if args.json:  # after every row: a run stopped at its time limit keeps what it measured
                write_json(args, rows)
    print()
    print(settings_line(args))
    print()
    print(markdown_table(rows))
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        write_json(args, rows)
    return rows


def bench_model(name: str, args: argparse.Namespace) -> Iterator[Row]:
    """The model's rows, one per batch size, each as soon as it is measured (FLOPs and rates filled in
    at the end when they are counted)."""
    spec = MODELS[name]
    latent = args.latent or (TINY_LATENT if args.tiny else spec.latent)
    label = f"{name}-tiny" if args.tiny else name
    started = time.perf_counter()
    try:
        run = Run.build(spec.family, args)
    except Exception as err:  # noqa: BLE001 - the next model still runs
        status = failure(err)
        free_memory()
        print(f"{label}: {status}", flush=True)
        for batch in args.batch_sizes:
            yield Row(label, latent * 8, latent, batch, status)
        return
    build_s = time.perf_counter() - started
    print(
        f"{label}: built in {build_s:.1f} s "
        f"({run.frozen_params / 1e6:.1f} M frozen, {run.lora_params / 1e6:.2f} M LoRA parameters, "
        f"{run.lora_modules} LoRA modules; lycoris kernels: {lycoris_backend(run.device)})",
        flush=True,
    )
    # perf-anchors' FLOPs hold for the full-size models at their own resolution; other shapes use the
    # counted FLOPs, which come after the timed steps.
    known_flops = spec.flops_per_image if not args.tiny and latent == spec.latent else None
    rows = []
    for batch in args.batch_sizes:
        row = Row(label, latent * 8, latent, batch, "ok", build_s=build_s)
        measure(run, row, args)
        # The OOM's traceback (and the step's tensors it holds) is gone once the except block ends.
        free_memory()
        rates(row, known_flops, args.peak_tflops)
        print(f"{label}: batch {batch}: {row_summary(row)}", flush=True)
        rows.append(row)
        if known_flops:
            yield row
    if not known_flops or args.count_flops:
        # After the timed steps: the counter's dispatch mode must not change how the steps run
        # (LyCORIS picks, and may demote, its kernels per call).
        counted = None
        try:
            counted = run.count_flops(latent)
        except Exception as err:  # noqa: BLE001 - the timing does not need it
            print(f"{label}: counting FLOPs failed: {failure(err)}", flush=True)
        if counted is not None:
            print(
                f"{label}: counted {counted / 1e12:.4g} TF per image, fwd+bwd at {latent}x{latent} latents "
                f"(perf-anchors.md §1, full size at {spec.latent}x{spec.latent}: "
                f"{spec.flops_per_image / 1e12:.4g} TF)",
                flush=True,
            )
        for row in rows:
            row.counted_flops_per_image = counted
            if not known_flops:
                rates(row, counted, args.peak_tflops)
    if not known_flops:
        yield from rows
    run.close()
    del run
    free_memory()


def measure(run: Run, row: Row, args: argparse.Namespace) -> None:
    from loracraft.training.loop import NonFiniteLoss

    try:
        timing = run.time_steps(row.batch, row.latent, args.warmup, args.steps)
    except NonFiniteLoss as err:  # raised only after the timed steps (TimedLog keeps going)
        row.status = f"error: non-finite loss ({err})"
    except Exception as err:  # noqa: BLE001 - one failing batch must not end the benchmark
        row.status = failure(err)
    else:
        row.ms_per_step = timing.seconds_per_step * 1000
        row.images_per_s = row.batch / timing.seconds_per_step
        row.first_step_s = timing.first_step_s
        row.peak_gib = None if timing.peak_bytes is None else timing.peak_bytes / 2**30
        row.non_finite_loss = timing.non_finite


def rates(row: Row, flops_per_image: float | None, peak_tflops: float | None) -> None:
    row.flops_per_image = flops_per_image
    if row.images_per_s is None or not flops_per_image:
        return
    row.tflops_per_s = flops_per_image * row.images_per_s / 1e12
    if peak_tflops:
        row.mfu = row.tflops_per_s / peak_tflops


def lycoris_backend(device: torch.device) -> str:
    """Which kernels LyCORIS runs the adapters with on `device` (its per-call choice: fused Triton for
    Linear adapters on CUDA where Triton is installed, a torch.compile'd op for conv adapters, eager
    on the CPU)."""
    try:
        from lycoris.kernels.dispatch import available_backends, resolve_backend
    except ImportError:
        return "eager (no lycoris.kernels)"
    if device.type != "cuda":
        return "eager (CPU)"
    try:
        chosen = resolve_backend(None, device)
        asked = os.environ.get("LYCORIS_KERNEL_BACKEND", "auto")
        return f"{asked} -> {chosen} first (installed: {', '.join(available_backends(device))})"
    except Exception as err:  # noqa: BLE001 - informational only
        return f"unknown ({type(err).__name__})"


@dataclass(frozen=True)
class Timing:
    seconds_per_step: float
    first_step_s: float
    """The first step alone: allocations, cuDNN/cuBLAS set-up, Triton and inductor compiles."""
    peak_bytes: int | None
    """max_memory_allocated over the timed steps; None on the CPU."""
    non_finite: bool


class Run:
    """One model's accelerator, prepared LoRA model, optimizer and schedule, as `setup_training` makes
    them, reused for every batch size."""

    @classmethod
    def build(cls, family: str, args: argparse.Namespace) -> Run:
        from accelerate.utils import set_seed
        from diffusers import UNet2DConditionModel

        from loracraft.config.fields import options_of
        from loracraft.config.loss_options import LossOptions
        from loracraft.config.schema import TrainConfig
        from loracraft.models.attention import attention_for, set_attention
        from loracraft.models.bundle import ModelBundle
        from loracraft.models.config_inference import base_config, model_kwargs
        from loracraft.training.accelerator import make_accelerator
        from loracraft.training.diffusion_model import takes_size_conditioning
        from loracraft.training.optimizer import build_optimizer
        from loracraft.training.schedule import build_lr_scheduler
        from loracraft.training.step import StepModels
        from loracraft.training.timesteps import training_noise_scheduler
        from loracraft.training.trainer import build_model

        config = TrainConfig(
            pretrained_model_name_or_path=f"random-{family}",
            output_dir="bench-gpu-unused",
            mixed_precision=args.mixed_precision,
            cache_latents=True,
            cache_text_encoder_outputs=True,
            network_train_unet_only=True,
            network_dim=RANK,
            network_alpha=ALPHA,
            optimizer_type="AdamW",
            learning_rate=1e-4,
            gradient_checkpointing=args.gradient_checkpointing,
            sdpa=args.sdpa,
            torch_compile=args.torch_compile,
            seed=0,
        )
        accelerator = make_accelerator(
            config.mixed_precision,
            1,
            dynamo_backend=config.dynamo_backend if config.torch_compile else "no",
        )
        device = accelerator.device
        set_seed(0)
        unet_config = model_kwargs(base_config(family, "unet"))
        if args.tiny:
            unet_config |= TINY[family]
        # Random init straight on the device (SDXL's 2.6 B float32 weights initialise in seconds there);
        # then frozen and in eval mode, as a loaded ModelBundle's U-Net is.
        with torch.device(device):
            unet = UNet2DConditionModel(**unet_config)
        unet.eval().requires_grad_(False)
        attention, note = attention_for(mem_eff_attn=False, xformers=False, sdpa=config.sdpa)
        if note:
            print(f"note: {note}")
        set_attention(unet, None, attention)
        bundle = ModelBundle(
            family=family,
            unet=unet,
            text_encoder=None,  # cached text-encoder outputs: build_model leaves the encoders out
            tokenizer=None,
            vae=None,  # cached latents
            scheduler_config=base_config(family, "scheduler"),
            source=Path(f"random-{family}"),
        )
        frozen_params = sum(p.numel() for p in unet.parameters())
        model = build_model(config, bundle)
        network = model.network
        param_groups = network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lrs)
        optimizer = build_optimizer(config, param_groups)
        # As setup_training builds them; the schedule long enough for every batch size's timed runs.
        lr_scheduler = build_lr_scheduler(config, optimizer, 1_000_000, 1)
        model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        step_models = StepModels(
            model=model,
            noise_scheduler=training_noise_scheduler(config.zero_terminal_snr),
            vae_scaling_factor=base_config(family, "vae")["scaling_factor"],
            encode_images=None,
            options=options_of(LossOptions, config),
            size_conditioned=takes_size_conditioning(unet),
        )
        run = cls()
        run.config, run.accelerator, run.device = config, accelerator, device
        run.unet, run.unet_config, run.attention = unet, unet.config, attention
        run.model, run.optimizer, run.lr_scheduler, run.step_models = (
            model,
            optimizer,
            lr_scheduler,
            step_models,
        )
        run.frozen_params = frozen_params
        run.lora_params = sum(p.numel() for p in network.parameters())
        run.lora_modules = network.num_unet_modules
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the float32 copies build_model cast away
        return run

    def batch(self, size: int, latent: int) -> dict:
        return cached_batch(self.unet_config, size, latent, self.device)

    def count_flops(self, latent: int) -> float:
        """One step's forward and backward FLOPs for one image (matmul, conv, attention).

        Counted with diffusers' classic attention (the same math as SDPA in explicit matmuls): torch's
        flop counter does not see SDPA's CPU kernel (the tiny SD1 model: 0.74 GF with SDPA, 0.93 GF
        classic), while it does see the CUDA ones."""
        from torch.utils.flop_counter import FlopCounterMode

        from loracraft.models.attention import set_attention
        from loracraft.training.step import diffusion_loss

        batch = self.batch(1, latent)
        self.model.train()
        set_attention(self.unet, None, "classic")
        try:
            counter = FlopCounterMode(display=False)
            with counter:
                loss = diffusion_loss(self.step_models, batch, device=self.device)
                self.accelerator.backward(loss)
        finally:
            set_attention(self.unet, None, self.attention)
            self.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def time_steps(self, size: int, latent: int, warmup: int, steps: int) -> Timing:
        """`steps` optimizer steps of `loop.run_epochs` after `warmup` steps."""
        from functools import partial

        from loracraft.data.plan import StepCount
        from loracraft.training.loop import LoopHooks, TrainingParts, run_epochs
        from loracraft.training.step import diffusion_loss

        total = warmup + steps
        loader = RepeatedBatch(self.batch(size, latent), total)
        parts = TrainingParts(self.model, loader, self.optimizer, self.lr_scheduler)
        log = TimedLog(total, warmup, self.device)
        loss_of = partial(diffusion_loss, self.step_models, device=self.device)
        try:
            run_epochs(
                self.accelerator,
                parts,
                loss_of,
                StepCount(steps_per_epoch=total, num_epochs=1, max_train_steps=total),
                self.config.max_grad_norm,
                log,
                LoopHooks(),
            )
        finally:
            log.close()
            self.optimizer.zero_grad(set_to_none=True)
        return Timing((log.end - log.start) / steps, log.first - log.began, log.peak, log.saw_non_finite)

    def close(self) -> None:
        self.accelerator.free_memory()
        for name in ("model", "unet", "optimizer", "lr_scheduler", "step_models", "accelerator"):
            setattr(self, name, None)


def cached_batch(unet_config, size: int, latent: int, device) -> dict:
    """A batch as the loader gives it with latents and text-encoder outputs cached (`data/dataset.py`),
    random values of the real shapes, on `device`."""
    generator = torch.Generator().manual_seed(size)
    pixels = latent * 8
    batch = {
        "latents": torch.randn(size, unet_config.in_channels, latent, latent, generator=generator),
        "text_states": torch.randn(size, 77, unet_config.cross_attention_dim, generator=generator),
        "captions": ["a photo"] * size,
        "loss_weights": torch.ones(size),
        "original_sizes_hw": torch.tensor([[pixels, pixels]] * size),
        "crop_top_lefts": torch.zeros(size, 2, dtype=torch.long),
        "target_sizes_hw": torch.tensor([[pixels, pixels]] * size),
    }
    if unet_config.addition_embed_type == "text_time":
        pooled = (
            unet_config.projection_class_embeddings_input_dim
            - SIZE_VALUES * unet_config.addition_time_embed_dim
        )
        batch["text_pooled"] = torch.randn(size, pooled, generator=generator)
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
    }


class RepeatedBatch:
    """Stands in for the prepared loader: the same cached batch, `count` times an epoch."""

    def __init__(self, batch: dict, count: int):
        self.batch, self.count = batch, count

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.count):
            yield self.batch


class TimedLog(TrainingLog):
    """The loop's real progress log (no bar), also marking the start and end of the timed steps.
    A NaN/inf loss is recorded instead of stopping the loop: random weights time the same."""

    def __init__(self, total: int, warmup: int, device: torch.device):
        super().__init__(total, show_bar=False)
        self.total, self.warmup, self.device = total, warmup, device
        self.start = self.end = self.first = math.nan
        self.began = time.perf_counter()
        self.peak: int | None = None
        self.saw_non_finite = False

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, step, epoch, loss, lrs, max_norm=None) -> bool:
        flushed = super().step(step, epoch, loss, lrs, max_norm)
        if step == 1:
            self._sync()
            self.first = time.perf_counter()
        if step == self.warmup:
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self.start = time.perf_counter()
        elif step == self.total:
            self._sync()
            self.end = time.perf_counter()
            if self.device.type == "cuda":
                self.peak = torch.cuda.max_memory_allocated(self.device)
        return flushed

    def flush(self) -> float:
        average = super().flush()
        if self.non_finite is not None:
            self.saw_non_finite, self.non_finite = True, None
        return average


def failure(err: Exception) -> str:
    """A row's status for a batch that failed: OOM, or the error (its traceback goes to stderr)."""
    text = str(err)
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text:
        return "OOM"
    traceback.print_exc()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"error: {type(err).__name__}: {first[:100]}"


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def machine_line(args: argparse.Namespace) -> str:
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (
            f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, peak {args.peak_tflops:g} TFLOP/s for MFU"
        )
    return (
        f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}"
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"LoRA rank {RANK} alpha {ALPHA} on kohya's default U-Net targets, mixed_precision "
        f"{args.mixed_precision}, AdamW, cached latents and text-encoder outputs, "
        f"{'SDPA' if args.sdpa else 'classic'} attention, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}{', torch.compile' if args.torch_compile else ''}; "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def fmt_tflops(value: float | None) -> str:
    """TF/s: one decimal on a GPU, three significant digits for the tiny models' small figures."""
    return fmt(value, ".1f" if value is not None and value >= 10 else ".3g")


def fmt_mfu(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def row_summary(row: Row) -> str:
    if row.status != "ok":
        return row.status
    return (
        f"{row.ms_per_step:.1f} ms/step, {row.images_per_s:.2f} img/s, {fmt_tflops(row.tflops_per_s)} TF/s, "
        f"MFU {fmt_mfu(row.mfu)}, peak {fmt(row.peak_gib, '.2f')} GiB; first step {row.first_step_s:.1f} s"
        + (" (non-finite loss seen)" if row.non_finite_loss else "")
    )


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| model | res | batch | ms/step | img/s | TF/s | MFU | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.status != "ok":
            cells = [row.status] + ["-"] * 4
        else:
            cells = [
                f"{row.ms_per_step:.1f}",
                f"{row.images_per_s:.2f}",
                fmt_tflops(row.tflops_per_s),
                fmt_mfu(row.mfu),
                fmt(row.peak_gib, ".2f"),
            ]
        lines.append(f"| {row.model} | {row.resolution} | {row.batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(args: argparse.Namespace, rows: list[Row]) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report(args, rows), indent=2) + "\n")


def report(args: argparse.Namespace, rows: list[Row]) -> dict:
    return {
        "machine": machine_line(args),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name(),
        "settings": {
            "models": args.model_names,
            "batches": args.batch_sizes,
            "steps": args.steps,
            "warmup": args.warmup,
            "tiny": args.tiny,
            "mixed_precision": args.mixed_precision,
            "sdpa": args.sdpa,
            "gradient_checkpointing": args.gradient_checkpointing,
            "torch_compile": args.torch_compile,
            "rank": RANK,
            "alpha": ALPHA,
            "peak_tflops": args.peak_tflops,
            "threads": torch.get_num_threads(),
        },
        "rows": [asdict(row) for row in rows],
    }


if __name__ == "__main__":
    main()
