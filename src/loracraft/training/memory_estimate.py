"""A run's peak memory on its device, estimated before it starts (`loracraft plan`).

peak = the frozen weights the device holds (the U-Net, the text encoders unless their outputs are cached,
the VAE unless the latents are) in the run's dtypes (`precision.py`: --mixed_precision, float8 with
--fp8_base), counted from the built model's own tensors
     + the LoRA weights and their gradients
     + the optimizer's state (`optimizer/state_size.py`, from each optimizer's code)
     + the step's activations: one step at the largest bucket and its batch size, simulated on fake
       tensors (`activation_memory.py`): what autograd saves, the transients, the VAE encoding the batch
       when latents are not cached, the text encoders' forward when their outputs are not cached; with
       and without gradient checkpointing.

On a GPU that is the memory the allocator hands out (torch.cuda.max_memory_allocated); CUDA's own
context (a few hundred MiB) and the allocator's fragmentation come on top. On the CPU it is the RAM the
tensors take, on top of the program and its libraries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import psutil
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from loracraft.config.fields import options_of
from loracraft.config.loss_options import LossOptions
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan
from loracraft.models.bundle import ModelBundle
from loracraft.models.text_encoding import (
    encode_captions,
    encode_sdxl_captions,
    encode_weighted_captions,
)
from loracraft.training.activation_memory import (
    StepPeak,
    autocast_forward,
    fake_weights,
    simulate_step,
)
from loracraft.training.diffusion_model import LoRADiffusionModel, takes_size_conditioning
from loracraft.training.optimizer.state_size import optimizer_state_size
from loracraft.training.precision import WEIGHT_DTYPES
from loracraft.training.step import StepModels, diffusion_loss
from loracraft.training.throughput_record import largest_bucket, largest_bucket_batch_size
from loracraft.training.timesteps import training_noise_scheduler

CAPTION = "a photo"  # captions are padded to the token length, so their words do not change the sizes


@dataclass(frozen=True)
class WeightPart:
    name: str
    bytes: int
    dtypes: str
    """The dtypes its bytes are in, largest share first ("float8_e4m3fn + bfloat16")."""


@dataclass(frozen=True)
class MemoryEstimate:
    device: torch.device
    capacity: int | None
    """The device's total memory (the machine's RAM for the CPU), when known."""
    bucket: tuple[int, int]
    batch_size: int
    weights: tuple[WeightPart, ...]
    """The frozen models the device holds while training."""
    held_elsewhere: tuple[str, ...]
    """The frozen models parked off the device (their outputs are cached)."""
    adapters: WeightPart
    gradients: int
    optimizer_state: int
    optimizer_known: bool
    activations: dict[bool, int]
    """Keyed by gradient checkpointing on (True) or off (False)."""
    checkpointing: bool
    """The run's --gradient_checkpointing."""

    def total(self, checkpointing: bool) -> int:
        fixed = sum(part.bytes for part in self.weights) + self.adapters.bytes
        return fixed + self.gradients + self.optimizer_state + self.activations[checkpointing]


def storage_bytes(tensors: Iterable[torch.Tensor]) -> Counter[torch.dtype]:
    """Bytes per dtype of the distinct storages behind `tensors` (a tied weight counts once)."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in tensors:
        seen.setdefault(tensor.untyped_storage().data_ptr() or id(tensor), tensor)
    sizes: Counter[torch.dtype] = Counter()
    for tensor in seen.values():
        sizes[tensor.dtype] += tensor.untyped_storage().nbytes()
    return sizes


def weight_part(name: str, modules: Iterable[nn.Module]) -> WeightPart:
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
    sizes = storage_bytes(tensors)
    dtypes = " + ".join(str(dtype).removeprefix("torch.") for dtype, _ in sizes.most_common())
    return WeightPart(name, sum(sizes.values()), dtypes)


def device_capacity(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        return psutil.virtual_memory().total
    return None


def resident_weights(
    config: TrainConfig, bundle: ModelBundle, model: LoRADiffusionModel, device: torch.device
) -> tuple[tuple[WeightPart, ...], tuple[str, ...]]:
    """The frozen models on the device while training, and those parked off it (trainer.py's
    `release_cached_encoders`: cached encoders stay on the CPU, on the device only with --lowram)."""
    on_device = device.type == "cpu" or config.lowram
    parts = [weight_part("U-Net", [model.unet])]
    elsewhere = []
    text_encoders = "text encoders" if len(bundle.text_encoders) > 1 else "text encoder"
    if not config.cache_text_encoder_outputs or on_device:
        parts.append(weight_part(text_encoders, bundle.text_encoders))
    else:
        elsewhere.append(f"{text_encoders} (outputs cached)")
    if not config.cache_latents or on_device:
        parts.append(weight_part("VAE", [bundle.vae]))
    else:
        elsewhere.append("VAE (latents cached)")
    return tuple(parts), tuple(elsewhere)


class _StepInputs:
    """One batch of the largest bucket, made as the loader makes it, on fake tensors when called inside
    the simulation."""

    def __init__(self, config: TrainConfig, bundle: ModelBundle, bucket: tuple[int, int], batch_size: int):
        self.config, self.bundle, self.batch_size = config, bundle, batch_size
        width, height = bucket
        scale = 2 ** (len(bundle.vae.config.block_out_channels) - 1)
        channels = bundle.unet.config.in_channels
        self.latent_shape = (batch_size, channels, height // scale, width // scale)
        self.pixel_shape = (batch_size, 3, height, width)
        self.size = (height, width)
        self.text_shapes = self._cached_text_shapes() if config.cache_text_encoder_outputs else None

    def _cached_text_shapes(self) -> list[tuple[int, ...]]:
        """The shapes of the cached text-encoder outputs (states, and SDXL's pooled output)."""
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        captions = [CAPTION] * self.batch_size
        bundle, config = self.bundle, self.config
        with fake_weights(bundle.text_encoders, mode, torch.device("cpu")), mode, torch.no_grad():
            if bundle.family == "sdxl":
                outputs = encode_sdxl_captions(
                    bundle.tokenizers,
                    bundle.text_encoders,
                    captions,
                    config.token_length,
                    config.weighted_captions,
                )
            else:
                encode = encode_weighted_captions if config.weighted_captions else encode_captions
                outputs = (
                    encode(
                        bundle.tokenizer, bundle.text_encoder, captions, config.token_length, config.clip_skip
                    ),
                )
        return [tuple(output.shape) for output in outputs]

    def batch(self) -> dict:
        batch = {
            "captions": [CAPTION] * self.batch_size,
            "loss_weights": torch.ones(self.batch_size),
            "original_sizes_hw": torch.tensor([self.size] * self.batch_size),
            "crop_top_lefts": torch.zeros(self.batch_size, 2, dtype=torch.int64),
            "target_sizes_hw": torch.tensor([self.size] * self.batch_size),
        }
        if self.config.cache_latents:
            batch["latents"] = torch.zeros(self.latent_shape)
        else:
            batch["pixels"] = torch.zeros(self.pixel_shape)
        if self.text_shapes is not None:
            batch["text_states"] = torch.zeros(self.text_shapes[0])
            if len(self.text_shapes) > 1:
                batch["text_pooled"] = torch.zeros(self.text_shapes[1])
        return batch


def step_activations(
    config: TrainConfig,
    bundle: ModelBundle,
    model: LoRADiffusionModel,
    inputs: _StepInputs,
    device: torch.device,
) -> StepPeak:
    """The simulated peak of one training step (forward, loss, backward) of `model` as it is set up."""
    vae = bundle.vae
    encode = None
    if not config.cache_latents:
        # As the run's step encodes: the whole batch at once, outside the precision context.
        def encode(pixels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return vae.encode(pixels.to(device, vae.dtype)).latent_dist.sample().float()

    compute = WEIGHT_DTYPES[config.mixed_precision]
    models = StepModels(
        model=autocast_forward(model, device, compute if compute != torch.float32 else None),
        noise_scheduler=training_noise_scheduler(config.zero_terminal_snr),
        vae_scaling_factor=vae.config.scaling_factor,
        encode_images=encode,
        options=options_of(LossOptions, config),
        size_conditioned=takes_size_conditioning(bundle.unet),
    )
    model.train()
    trained = [p for p in model.network.parameters() if p.requires_grad]
    names = {id(p): name for name, p in model.network.named_parameters()}

    def trained_fakes() -> list[torch.Tensor]:
        fakes = dict(model.network.named_parameters())
        return [fakes[names[id(p)]] for p in trained]

    return simulate_step(
        lambda: diffusion_loss(models, inputs.batch(), device),
        [model, vae],
        trained_fakes,
        device,
    )


def estimate_memory(
    config: TrainConfig,
    plan: DatasetPlan,
    bundle: ModelBundle,
    model: LoRADiffusionModel,
    device: torch.device,
) -> MemoryEstimate:
    """The run's peak memory on `device`. `model` is `trainer.build_model`'s, built without gradient
    checkpointing (so both settings can be simulated; it is left with checkpointing on) and with its
    parameter groups made (`network.param_groups`), so the weights that train require gradients."""
    if model.gradient_checkpointing:
        raise ValueError("estimate_memory needs a model built without gradient checkpointing")
    bucket, batch_size = largest_bucket(plan), largest_bucket_batch_size(plan)
    inputs = _StepInputs(config, bundle, bucket, batch_size)
    without = step_activations(config, bundle, model, inputs, device)
    model.enable_gradient_checkpointing()
    with_checkpointing = step_activations(config, bundle, model, inputs, device)
    trained = [p for p in model.network.parameters() if p.requires_grad]
    state = optimizer_state_size(config, trained)
    weights, elsewhere = resident_weights(config, bundle, model, device)
    return MemoryEstimate(
        device=device,
        capacity=device_capacity(device),
        bucket=bucket,
        batch_size=batch_size,
        weights=weights,
        held_elsewhere=elsewhere,
        adapters=weight_part("LoRA", [model.network]),
        gradients=sum(storage_bytes(trained).values()),
        optimizer_state=state.bytes,
        optimizer_known=state.known,
        activations={False: without.activations, True: with_checkpointing.activations},
        checkpointing=config.gradient_checkpointing,
    )


def size_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_memory(estimate: MemoryEstimate, device_label: str, optimizer: str) -> list[str]:
    """Console lines: each part, the total for the run's setting, and the other setting's."""
    width, height = estimate.bucket
    capacity = f" with {size_text(estimate.capacity)}" if estimate.capacity else ""
    lines = [
        f"Memory (estimated peak on {device_label}{capacity}; largest bucket {width}x{height}, "
        f"batch {estimate.batch_size})"
    ]
    rows = [(part.name, part.bytes, part.dtypes) for part in estimate.weights]
    rows.append(("LoRA weights", estimate.adapters.bytes, estimate.adapters.dtypes))
    rows.append(("LoRA gradients", estimate.gradients, ""))
    guessed = "" if estimate.optimizer_known else " (not known: counted as AdamW's 2 states)"
    rows.append(("optimizer state", estimate.optimizer_state, optimizer + guessed))
    setting = "with" if estimate.checkpointing else "without"
    activations = estimate.activations[estimate.checkpointing]
    rows.append(("activations", activations, f"one step {setting} gradient checkpointing"))
    lines += [f"  {name:<22} {size_text(size):>10}  {detail}".rstrip() for name, size, detail in rows]
    total = estimate.total(estimate.checkpointing)
    share = f"  of {size_text(estimate.capacity)}" if estimate.capacity else ""
    lines.append(f"  {'total':<22} {size_text(total):>10}{share}")
    other = not estimate.checkpointing
    lines.append(
        f"  {'with' if other else 'without'} --gradient_checkpointing: activations "
        f"{size_text(estimate.activations[other])}, total {size_text(estimate.total(other))}"
    )
    if estimate.held_elsewhere:
        lines.append(f"  kept off the device: {', '.join(estimate.held_elsewhere)}")
    if estimate.capacity and total > estimate.capacity:
        lines.append(
            f"  warning: this is more than the device's {size_text(estimate.capacity)}: "
            + ("turn on --gradient_checkpointing, " if not estimate.checkpointing else "")
            + "lower --train_batch_size or the resolution, or cache latents and text-encoder outputs"
        )
    return lines
