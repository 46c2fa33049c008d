"""v-prediction end to end: the shipped v-prediction tiny model, and `loracraft train` with the noise and
loss options, recording them as kohya does (ss_* keys, ss_base_model_version sd_v1_v, modelspec v)."""

import pytest
from diffusers import DDIMScheduler
from safetensors import safe_open

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.models.loading import load_model_bundle
from loracraft.models.tiny import shipped
from loracraft.models.tiny.architecture import SD15_SCHEDULER_CONFIG, VPRED_SCHEDULER_CONFIG
from loracraft.models.tiny.evaluate import evaluate
from loracraft.models.tiny.generate import tiny_pipeline
from loracraft.models.tiny.vpred import VPredRecipe, finetune_to_vpred, save_vpred_checkpoint

pytestmark = pytest.mark.slow

NOISE_AND_LOSS_FLAGS = {
    "--v_parameterization": None,
    "--zero_terminal_snr": None,
    "--min_snr_gamma": "5",
    "--noise_offset": "0.05",
    "--noise_offset_random_strength": None,
    "--multires_noise_iterations": "3",
    "--ip_noise_gamma": "0.1",
    "--loss_type": "huber",
    "--huber_schedule": "exponential",
    "--debiased_estimation_loss": None,
    "--scale_v_pred_loss_like_noise_pred": None,
    "--min_timestep": "100",
}
RECORDED = {
    "ss_zero_terminal_snr": "True",
    "ss_min_snr_gamma": "5.0",
    "ss_noise_offset": "0.05",
    "ss_noise_offset_random_strength": "True",
    "ss_multires_noise_iterations": "3",
    "ss_multires_noise_discount": "0.3",
    "ss_adaptive_noise_scale": "None",
    "ss_ip_noise_gamma": "0.1",
    "ss_ip_noise_gamma_random_strength": "False",
    "ss_loss_type": "huber",
    "ss_huber_schedule": "exponential",
    "ss_huber_c": "0.1",
    "ss_huber_scale": "1.0",
    "ss_debiased_estimation": "True",
    "ss_base_model_version": "sd_v1_v",
    "modelspec.prediction_type": "v",
}


def own_prompts_score(scheduler_config: dict) -> float:
    bundle = load_model_bundle(shipped.VPRED_CHECKPOINT, tokenizer_path=shipped.TOKENIZER_DIR)
    pipeline = tiny_pipeline(bundle.unet, bundle.vae, bundle.text_encoder, bundle.tokenizer)
    pipeline.scheduler = DDIMScheduler.from_config(scheduler_config)
    return evaluate(pipeline).colour_and_background


@pytest.mark.skipif(not shipped.VPRED_CHECKPOINT.exists(), reason="loracraft-tiny-vpred is not built")
def test_shipped_vpred_model_draws_its_prompts_only_as_v_prediction():
    assert own_prompts_score(VPRED_SCHEDULER_CONFIG) >= 0.8
    # Read as a noise predictor it draws far less of what it is asked for: it really predicts v.
    assert own_prompts_score(SD15_SCHEDULER_CONFIG) <= 0.5


def train_argv(tiny_sd1, tmp_path, *extra: str) -> list[str]:
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    flags = [item for flag, value in NOISE_AND_LOSS_FLAGS.items() for item in (flag, value) if item]
    return [
        "train", "--pretrained_model_name_or_path", str(tiny_sd1.single_file), "--train_data_dir",
        str(tree.train_dir), "--output_dir", str(tmp_path / "out"), "--output_name", "v", "--caption_extension",
        ".txt", "--resolution", "64,64", "--network_dim", "4", "--learning_rate", "1e-3", "--seed", "1",
        *flags, *extra,
    ]  # fmt: skip


def test_train_with_v_prediction_and_the_loss_options_records_them(tiny_sd1, tmp_path, capsys):
    assert main(train_argv(tiny_sd1, tmp_path, "--max_train_steps", "3")) == 0
    with safe_open(tmp_path / "out" / "v.safetensors", "pt") as f:
        metadata = f.metadata()
    assert {key: metadata[key] for key in RECORDED} == RECORDED
    out = capsys.readouterr().out
    assert "note: min_snr_gamma and debiased_estimation_loss both weight the loss" in out


@pytest.mark.gpu
def test_every_noise_and_loss_option_runs_on_the_gpu(tiny_sd1, tmp_path):
    """Each draw and table lookup stays on the training device (a CPU tensor in the step fails here)."""
    assert main(train_argv(tiny_sd1, tmp_path, "--max_train_steps", "2", "--mixed_precision", "bf16")) == 0


def test_short_vpred_build_is_deterministic_and_loads_like_the_shipped_file(tmp_path):
    """The build script's recipe with a few steps (the full one is ~4.5 minutes, models/tiny/README.md)."""
    short = VPredRecipe(images=16, steps=2, batch=4)
    files = []
    for name in ("a", "b"):
        bundle = load_model_bundle(shipped.CHECKPOINT, tokenizer_path=shipped.TOKENIZER_DIR)
        lines: list[str] = []
        finetune_to_vpred(bundle, short, lines.append)
        (tmp_path / name).mkdir()
        files.append(save_vpred_checkpoint(bundle, tmp_path / name))
    assert files[0].read_bytes() == files[1].read_bytes()
    assert any(line.startswith("unet v step 2/2") for line in lines)
    with safe_open(files[0], "pt") as built, safe_open(shipped.VPRED_CHECKPOINT, "pt") as shipped_file:
        assert set(built.keys()) == set(shipped_file.keys())
        assert built.metadata() == shipped_file.metadata()
    assert load_model_bundle(files[0], tokenizer_path=shipped.TOKENIZER_DIR).family == "sd1"
