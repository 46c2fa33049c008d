"""Train the demo LoRA with any training settings and probe it as the learning test does, to choose the
learning test's variants and their epochs (bench/RESULTS.md, "the learning test's option variants").

    python bench/learning_variant.py NAME EPOCHS '{"optimizer_type": "Lion", "noise_offset": 0.05}'
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from loracraft.tools.demo import DemoConcept, probe_lora, train_demo_lora


def main() -> None:
    name, epochs, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(1)  # as the test suite runs the tiny model
    with tempfile.TemporaryDirectory() as tmp:
        concept = DemoConcept()
        result, seconds = train_demo_lora(Path(tmp), concept, epochs, **overrides)
        v_prediction = overrides.get("v_parameterization", False)
        before, after = probe_lora(concept, result.lora_file, 0.0, 1.0, v_prediction=v_prediction)
    print(
        f"{name} {epochs} epochs {seconds:.0f} s: trigger {before.trigger_rate:.2f} -> {after.trigger_rate:.2f}, "
        f"without trigger {before.control_concept_rate:.2f} -> {after.control_concept_rate:.2f}"
    )


if __name__ == "__main__":
    main()
