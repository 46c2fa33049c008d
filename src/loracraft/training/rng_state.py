"""Every random generator a step draws from, captured and restored, as JSON (no pickle to load).

A step draws its noise, timesteps and dropout from torch's generators; augmentations and the data order
draw from `random.Random`s seeded per sample and per epoch (`data/dataset.py`, `data/plan.py`), so the
position in the data restores those. Python's and NumPy's global generators are kept too, for any
library that draws from them.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch


def _encode_bytes(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    """This process's generators, as JSON-ready values."""
    version, internal, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": _encode_bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_encode_bytes(device_state) for device_state in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set this process's generators to a `capture_rng` result."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            np.array(numpy_state["keys"], dtype=np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(_decode_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        device_states = [_decode_bytes(text) for text in state["cuda"]]
        # A state saved on more GPUs than this machine has restores the ones it has.
        for device, device_state in enumerate(device_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)
