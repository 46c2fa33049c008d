"""Does training teach? A LoRA on the shipped tiny model must learn the demo's new word.

The demo dataset binds the made-up word "zxq" to magenta, a colour the tiny model's VAE can draw but its
U-Net never heard named. Before training, "a zxq circle on a white background" is drawn in magenta in
about none of the probe images; after training it must be in most of them, while prompts without the
trigger keep their named colours. bench/RESULTS.md records the measured rates and the runs with a broken
target and a zero learning rate that fail this test, which is how the thresholds were chosen.

To check another training option, add its flags to TRAINING_VARIANTS: every variant must pass.
"""

import pytest
import torch

from learning_thresholds import learnt
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.models.tiny import shipped
from loracraft.tools.demo import DemoConcept, probe_lora, train_demo_lora
from loracraft.training.optimizer import check_optimizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shipped.CHECKPOINT.exists(), reason="loracraft-tiny is not built"),
]


V_PREDICTION = {
    "pretrained_model_name_or_path": str(shipped.VPRED_CHECKPOINT),
    "v_parameterization": True,
    "zero_terminal_snr": True,
}
RESTARTS = {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 2}


def optimizer(name: str, lr: float) -> dict:
    """kohya's optimizer `name` with one learning rate for every part."""
    return {"optimizer_type": name, **dict.fromkeys(("learning_rate", "unet_lr", "text_encoder_lr"), lr)}


# The options the guides teach, spread over few runs (each run costs a training): every variant must pass.
# The plain demo run (AdamW, constant rate, 10 epochs) is checked by test_demo_command.py, which trains it.
TRAINING_VARIANTS = {
    "prodigy-cosine_with_restarts": {**optimizer("Prodigy", 1.0), **RESTARTS},
    "lion-cosine_with_restarts-noise_offset": {**optimizer("Lion", 5e-4), **RESTARTS, "noise_offset": 0.05},
    "adamw8bit-cosine_with_restarts-min_snr-huber": {
        **optimizer("AdamW8bit", 2e-3),
        **RESTARTS,
        "min_snr_gamma": 5.0,
        "loss_type": "huber",
    },
    # On the v-prediction tiny model; the probe samples it as v-prediction.
    "v-prediction": V_PREDICTION,
}
EPOCHS = 10
# Epochs where a variant differs from EPOCHS, as measured (seed 0, one thread; trigger prompts in magenta
# / prompts without the trigger in magenta): v-prediction 83%/17% at 6 epochs (83%/21% at 10; the same
# model trained on the noise target, without --v_parameterization, 0%; with min_snr_gamma 5 and huber
# 28%/8%: min-SNR's v weight min(SNR, 5)/(SNR+1) shrinks its loss). At 8 epochs: Prodigy 89%/17%, Lion
# with noise_offset 0.05 78%/25% (at 6 epochs 78%/33%), AdamW8bit with min_snr_gamma 5 and huber 67%/17%
# (alone 78%/17%), Prodigy with min_snr_gamma 5 and huber 61%/17%, and with noise_offset too 61%/25%.
# noise_offset slows learning a colour (a shift of the latents' mean, which offset noise teaches the model
# to treat as noise): with AdamW at 10 epochs, huber 94%/21%, min_snr_gamma 5 94%/17%, noise_offset
# 56%/17%. bench/learning_controls.py --optimizers measures the optimizers alone.
VARIANT_EPOCHS = {
    "v-prediction": 6,
    **dict.fromkeys(set(TRAINING_VARIANTS) - {"v-prediction"}, 8),
}


def runs_here(overrides: dict) -> bool:
    """False for an 8-bit optimizer that bitsandbytes cannot run on this machine (no CPU kernels in its
    older releases); the GPU tests cover it there."""
    if "8bit" not in overrides.get("optimizer_type", ""):
        return True
    try:
        check_optimizer(TrainConfig(**overrides), torch.device("cpu"), echo=lambda _: None)
    except UserError:
        return False
    return True


@pytest.mark.parametrize("variant", sorted(TRAINING_VARIANTS))
def test_trigger_prompts_move_to_the_concept_and_the_others_much_less(variant, tmp_path):
    # One test per training (not one per assertion), so parallel test workers never train a variant twice.
    overrides = TRAINING_VARIANTS[variant]
    if not runs_here(overrides):
        pytest.skip(f"{overrides['optimizer_type']} cannot run on this machine's CPU")
    concept = DemoConcept()
    result, _ = train_demo_lora(tmp_path, concept, VARIANT_EPOCHS.get(variant, EPOCHS), **overrides)
    v_prediction = overrides.get("v_parameterization", False)
    before, after = probe_lora(concept, result.lora_file, 0.0, 1.0, v_prediction=v_prediction)

    rates = (before.trigger_rate, after.trigger_rate, before.control_concept_rate, after.control_concept_rate)
    assert learnt(*rates), (before, after)
