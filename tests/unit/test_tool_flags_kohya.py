"""Each LoRA tool takes the flags of the kohya script it replaces, with kohya's defaults, so a guide's
command line works with `loracraft` in front of it.

KOHYA_FLAGS holds every `add_argument` of sd-scripts' networks/ scripts (commit 48d368fa, read from the
source's AST): flag -> default (store_true flags: False). DIFFERENCES are the defaults loracraft changes
on purpose (README, "Where loracraft deliberately differs from kohya"); UNSUPPORTED the flags it lacks.
"""

import pytest

from kohya_flags import assert_takes_kohya_flags, parser_defaults
from loracraft.tools import epoch_grid, extract_lora, inspect_lora, merge_lora, resize_lora

KOHYA_FLAGS = {
    "resize_lora.py": {
        "--save_precision": None, "--new_rank": 4, "--new_conv_rank": None, "--save_to": None,
        "--model": None, "--device": None, "--verbose": False, "--dynamic_method": None,
        "--dynamic_param": None,
    },
    "merge_lora.py": {
        "--v2": False, "--save_precision": None, "--precision": "float", "--sd_model": None,
        "--save_to": None, "--models": None, "--ratios": None, "--no_metadata": False, "--concat": False,
        "--shuffle": False,
    },
    "sdxl_merge_lora.py": {
        "--save_precision": None, "--precision": "float", "--sd_model": None, "--save_to": None,
        "--models": None, "--ratios": None, "--lbws": None, "--no_metadata": False, "--concat": False,
        "--shuffle": False,
    },
    "svd_merge_lora.py": {
        "--save_precision": None, "--precision": "float", "--save_to": None, "--models": None,
        "--ratios": None, "--lbws": None, "--new_rank": 4, "--new_conv_rank": None, "--device": None,
        "--no_metadata": False,
    },
    "extract_lora_from_models.py": {
        "--v2": False, "--v_parameterization": None, "--sdxl": False, "--load_precision": None,
        "--save_precision": None, "--model_org": None, "--model_tuned": None, "--save_to": None, "--dim": 4,
        "--conv_dim": None, "--device": None, "--clamp_quantile": 0.99, "--min_diff": 0.01,
        "--no_metadata": False, "--load_original_model_to": None, "--load_tuned_model_to": None,
    },
    "check_lora_weights.py": {"file": None, "--show_all_keys": False},
}  # fmt: skip
OURS = {
    "resize_lora.py": resize_lora,
    "merge_lora.py": merge_lora,
    "sdxl_merge_lora.py": merge_lora,
    "svd_merge_lora.py": merge_lora,
    "extract_lora_from_models.py": extract_lora,
    "check_lora_weights.py": inspect_lora,
}
DIFFERENCES = {
    # the exact LoRA sum keeps the inputs' largest rank unless told otherwise (svd_merge_lora: 4)
    ("svd_merge_lora.py", "--new_rank"): None,
}
UNSUPPORTED = {"--lbws"}


@pytest.mark.parametrize("script", sorted(KOHYA_FLAGS))
def test_every_kohya_flag_is_taken_with_kohya_s_default(script):
    ours = parser_defaults(OURS[script].make_parser())
    if script == "check_lora_weights.py":
        ours["file"] = None  # our positional takes several files (FILE...)
        assert "-s" in ours
    assert_takes_kohya_flags(script, ours, KOHYA_FLAGS[script], DIFFERENCES, UNSUPPORTED)


def test_an_unsupported_kohya_flag_is_one_line():
    from loracraft.errors import UserError

    with pytest.raises(UserError, match=r"^merge: unrecognized arguments: --lbws"):
        merge_lora.make_parser().parse_args(
            ["--models", "a.safetensors", "--save_to", "b.safetensors", "--lbws", "x"]
        )


def test_grid_uses_kohya_s_sampler_names():
    from loracraft.config.sample_options import SAMPLERS

    sampler = next(a for a in epoch_grid.make_parser()._actions if a.dest == "sampler")
    assert tuple(sampler.choices) == tuple(SAMPLERS)
