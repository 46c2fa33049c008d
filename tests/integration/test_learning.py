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

V_PREDICTION = {
    "pretrained_model_name_or_path": str(shipped.VPRED_CHECKPOINT),
    "v_parameterization": True,
    "zero_terminal_snr": True,
}
TRAINING_VARIANTS = {
    "adamw-constant": {},
    "min-snr-noise-offset-huber": {"min_snr_gamma": 5.0, "noise_offset": 0.05, "loss_type": "huber"},
    # On the v-prediction tiny model; the probe samples it as v-prediction.
    "v-prediction": V_PREDICTION,
    # kohya's other optimizers, each with its own learning rate for every part, under cosine_with_restarts.
    "prodigy-cosine_with_restarts": {
        "optimizer_type": "Prodigy",
        **dict.fromkeys(("learning_rate", "unet_lr", "text_encoder_lr"), 1.0),
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 2,
    },
    "lion-cosine_with_restarts": {
        "optimizer_type": "Lion",
        **dict.fromkeys(("learning_rate", "unet_lr", "text_encoder_lr"), 5e-4),
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 2,
    },
    "adamw8bit-cosine_with_restarts": {
        "optimizer_type": "AdamW8bit",
        **dict.fromkeys(("learning_rate", "unet_lr", "text_encoder_lr"), 2e-3),
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 2,
    },
}
EPOCHS = 10
# Epochs where a variant differs from EPOCHS, as measured (seed 0, trigger prompts in magenta / prompts
# without the trigger in magenta): v-prediction 83%/17% at 6 epochs (83%/21% at 10; the same model trained
# on the noise target, without --v_parameterization, 0%). noise_offset 0.05 slows learning a colour (a
# shift of the latents' mean, which offset noise teaches the model to treat as noise): at 10 epochs
# huber 94%/21% and min_snr_gamma 5 94%/17% alone, noise_offset 56%/17%, all three 44%/29% (fails),
# all three at 15 epochs 67%/25%. The optimizer variants at 8 epochs: Prodigy 89%/17%, Lion 67%/21%,
# AdamW8bit 78%/17% (at 6 epochs 56%/21%, 50%/25%, 50%/25%; constant rates at 8 epochs: Prodigy 67%/29%,
# Lion 3e-4 67%/33%, AdamW8bit 61%/17%). bench/learning_controls.py --optimizers measures them.
VARIANT_EPOCHS = {
    "v-prediction": 6,
    "min-snr-noise-offset-huber": 15,
    **dict.fromkeys(
        ("prodigy-cosine_with_restarts", "lion-cosine_with_restarts", "adamw8bit-cosine_with_restarts"), 8
    ),
}


@pytest.fixture(scope="module", params=sorted(TRAINING_VARIANTS))
def learned(request, tmp_path_factory) -> tuple[ProbeResult, ProbeResult]:
    root: Path = tmp_path_factory.mktemp(f"learn-{request.param}")
    concept = DemoConcept()
    overrides = TRAINING_VARIANTS[request.param]
    epochs = VARIANT_EPOCHS.get(request.param, EPOCHS)
    result, _ = train_demo_lora(root, concept, epochs, **overrides)
    v_prediction = overrides.get("v_parameterization", False)
    before, after = probe_lora(concept, result.lora_file, 0.0, 1.0, v_prediction=v_prediction)
    return before, after


def test_trigger_prompts_move_to_the_concept(learned):
    before, after = learned
    assert after.trigger_rate - before.trigger_rate >= MIN_TRIGGER_GAIN, (before, after)


def test_prompts_without_trigger_move_much_less(learned):
    before, after = learned
    trigger_gain = after.trigger_rate - before.trigger_rate
    control_gain = after.control_concept_rate - before.control_concept_rate
    assert control_gain <= MAX_CONTROL_SHARE_OF_GAIN * trigger_gain, (before, after)
