"""Does training teach? A LoRA on the shipped tiny model must learn the demo's new word.

The demo dataset binds the made-up word "zxq" to magenta, a colour the tiny model's VAE can draw but its
U-Net never heard named. Before training, "a zxq circle on a white background" is drawn in magenta in
about none of the probe images; after training it must be in most of them, while prompts without the
trigger keep their named colours. bench/RESULTS.md records the measured rates and the runs with a broken
target and a zero learning rate that fail this test, which is how the thresholds were chosen.

To check another training option, add its flags to TRAINING_VARIANTS: every variant must pass.
"""

from pathlib import Path

import pytest

from loracraft.models.tiny import shipped
from loracraft.tools.concept_probe import ProbeResult
from loracraft.tools.demo import DemoConcept, probe_lora, train_demo_lora

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shipped.CHECKPOINT.exists(), reason="loracraft-tiny is not built"),
]

# Thresholds (bench/RESULTS.md, "Learning test"): the working trainer moves the trigger prompts from 0%
# to about 80% magenta, the prompts without the trigger far less; a broken target or a zero learning
# rate leaves the trigger prompts at 0%.
MIN_TRIGGER_GAIN = 0.5
MAX_CONTROL_SHARE_OF_GAIN = 0.5

TRAINING_VARIANTS = {
    "adamw-constant": {},
}
EPOCHS = 10


@pytest.fixture(scope="module", params=sorted(TRAINING_VARIANTS))
def learned(request, tmp_path_factory) -> tuple[ProbeResult, ProbeResult]:
    root: Path = tmp_path_factory.mktemp(f"learn-{request.param}")
    concept = DemoConcept()
    result, _ = train_demo_lora(root, concept, EPOCHS, **TRAINING_VARIANTS[request.param])
    before, after = probe_lora(concept, result.lora_file, 0.0, 1.0)
    return before, after


def test_trigger_prompts_move_to_the_concept(learned):
    before, after = learned
    assert after.trigger_rate - before.trigger_rate >= MIN_TRIGGER_GAIN, (before, after)


def test_prompts_without_trigger_move_much_less(learned):
    before, after = learned
    trigger_gain = after.trigger_rate - before.trigger_rate
    control_gain = after.control_concept_rate - before.control_concept_rate
    assert control_gain <= MAX_CONTROL_SHARE_OF_GAIN * trigger_gain, (before, after)
