"""The memory a training step's forward and backward pass need beyond the weights, measured without
running them for real.

The step (`step.diffusion_loss`, then backward) runs on fake tensors: torch's FakeTensorMode gives every
tensor its shape, dtype and device, and the device's own choices (its attention kernel, its autocast
rules), but no memory and no arithmetic. The model's weights are swapped for fakes of the same kind for
the duration. Meanwhile `LiveBytes` watches every storage the step creates, from its creation until
Python and autograd free it, as the allocator would: what autograd saves for the backward pass, the
transients of each operation, gradient checkpointing's recomputation, the gradients. Its peak is the
step's peak above the weights. Not seen: scratch memory a kernel allocates inside itself (cuDNN's
convolution workspaces, oneDNN's buffers) and the allocator's rounding and fragmentation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

# The CUDA caching allocator hands out blocks in multiples of 512 bytes.
CUDA_BLOCK = 512


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that operations create while they are alive, and their peak.

    Only storages on `device`'s type count (a GPU run's batch is made in RAM first). A storage seen
    first as an operation's input (a weight, an input made before) existed before and is not counted.
    `created` numbers the operations, so storages made before the peak can be told apart.
    """

    def __init__(self, device: torch.device):
        super().__init__()
        self.device_type = device.type
        self.block = CUDA_BLOCK if device.type == "cuda" else 1
        self.live = 0
        self.peak = 0
        self.operations = 0
        self.peak_at = 0
        self._watched: dict[int, weakref.ref] = {}
        self.created: dict[int, tuple[int, int]] = {}
        """storage key -> (operation number, bytes) for every counted storage, alive or freed."""

    def _forget(self, key: int, size: int) -> None:
        self._watched.pop(key, None)
        self.live -= size

    def _watch(self, tensor: torch.Tensor, counted: bool) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._watched:
            return
        if not counted or tensor.device.type != self.device_type:
            self._watched[key] = weakref.ref(storage, lambda _, key=key: self._watched.pop(key, None))
            return
        size = -(-storage.nbytes() // self.block) * self.block
        self._watched[key] = weakref.ref(storage, lambda _, key=key, size=size: self._forget(key, size))
        self.created[key] = (self.operations, size)
        self.live += size
        if self.live > self.peak:
            self.peak, self.peak_at = self.live, self.operations

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for tensor in _tensors((args, kwargs)):
            self._watch(tensor, counted=False)
        self.operations += 1
        result = func(*args, **(kwargs or {}))
        for tensor in _tensors(result):
            self._watch(tensor, counted=True)
        return result

    def counted_before_peak(self, tensors: Iterable[torch.Tensor]) -> int:
        """The bytes of those of `tensors` that this count created before its peak (and so were part of it)."""
        total = 0
        for tensor in tensors:
            made = self.created.get(tensor.untyped_storage()._cdata)
            if made is not None and made[0] <= self.peak_at:
                total += made[1]
        return total


def _tensors(value: object) -> Iterator[torch.Tensor]:
    """The tensors in an operation's arguments or results (nested tuples, lists and dicts); a plain
    walk, several times faster than torch's general pytree flattening on the hot path."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


@contextmanager
def fake_weights(modules: Iterable[nn.Module], mode: FakeTensorMode, device: torch.device) -> Iterator[None]:
    """Inside, every parameter and buffer of `modules` is a fake tensor on `device` (same shape, dtype
    and requires_grad); on leaving, the real ones are back. Nothing is copied."""
    slots = []
    for module in {id(m): m for root in modules for m in root.modules()}.values():
        for store in (module._parameters, module._buffers):
            slots += [(store, name, tensor) for name, tensor in store.items() if tensor is not None]
    fakes: dict[int, torch.Tensor] = {}
    with mode, torch.no_grad():
        for _, _, tensor in slots:
            if id(tensor) not in fakes:
                fake = mode.from_tensor(tensor).to(device)
                if isinstance(tensor, nn.Parameter):
                    fake = nn.Parameter(fake, requires_grad=tensor.requires_grad)
                fakes[id(tensor)] = fake
    for store, name, tensor in slots:
        store[name] = fakes[id(tensor)]
    try:
        yield
    finally:
        for store, name, tensor in slots:
            store[name] = tensor


@dataclass(frozen=True)
class StepPeak:
    """A simulated step's peak above the weights, split into what the adapters' gradients held at that
    moment and the rest (activations, saved tensors, transients)."""

    activations: int
    gradients: int


def simulate_step(
    step: Callable[[], torch.Tensor],
    modules: Iterable[nn.Module],
    trained: Callable[[], Iterable[torch.Tensor]],
    device: torch.device,
) -> StepPeak:
    """Run `step()` (which returns the loss) and its backward pass on fakes of `modules`' weights on
    `device`; `trained()` lists the parameters whose gradients count as gradients (it is called while the
    fakes are in place)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    live = LiveBytes(device)
    with fake_weights(modules, mode, device), mode, live:
        step().backward()
        gradients = [param.grad for param in trained() if param.grad is not None]
        held = live.counted_before_peak(gradients)
    return StepPeak(activations=live.peak - held, gradients=held)


def autocast_forward(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> Callable:
    """`model` called under autocast to `dtype` (None: as it is), as accelerate's prepared model runs
    under --mixed_precision; the loss around it is computed outside, as in the run."""
    if dtype is None:
        return model

    def forward(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            return model(*args, **kwargs)

    return forward
