"""Per-block options are kohya's: block numbers, lr weights (presets, padding, threshold), block dims and the
per-block learning rates, compared with what kohya's own networks/lora.py returned for the same inputs
(tests/data/kohya/block_weights.json), plus every message a user can get."""

import json
from pathlib import Path

import pytest

from loracraft.errors import UserError
from loracraft.networks.blocks import (
    NUM_BLOCKS,
    BlockDims,
    attention_blocks,
    block_dims,
    block_index,
    block_learning_rates,
    block_lr_weights,
    block_names,
    block_warnings,
)

DATA = json.loads(
    (Path(__file__).parents[1] / "data" / "kohya" / "block_weights.json").read_text(encoding="utf-8")
)
BLOCK_KEYS = {
    "down_lr_weight",
    "mid_lr_weight",
    "up_lr_weight",
    "block_lr_zero_threshold",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
}
SD_LAYOUT = "SD1/SD2 U-Nets have 25 blocks (IN00-IN11, MID, OUT00-OUT11)"
SDXL_LAYOUT = "SDXL U-Nets have 23 blocks (EMB, IN00-IN08, MID00-MID02, OUT00-OUT08, OUT)"


def case_id(case: dict) -> str:
    args = ",".join(f"{key}={value[:20]}" for key, value in case["network_args"].items())
    return f"{case['family']}-{args or 'none'}"


def values(count: int, value: object) -> str:
    return ",".join([str(value)] * count)


# --- block numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_block_index_is_kohyas_for_every_module_kohya_can_target(family: str) -> None:
    for name, _, kohya_index in DATA["modules"][family]:
        assert block_index(name, family) == (None if kohya_index == -1 else kohya_index), name


def test_sd2_numbers_blocks_like_sd1() -> None:
    for name, _, _ in DATA["modules"]["sd1"]:
        assert block_index(name, "sd2") == block_index(name, "sd1"), name


@pytest.mark.parametrize(
    ("name", "family", "expected"),
    [
        ("lora_unet_conv_in", "sd1", None),
        ("lora_unet_time_embedding_linear_1", "sd1", None),
        ("lora_unet_conv_out", "sd2", None),
        ("lora_unet_time_embed_0", "sdxl", 0),
        ("lora_unet_label_emb_0_0", "sdxl", 0),
        ("lora_unet_input_blocks_0_0", "sdxl", 1),
        ("lora_unet_out_2", "sdxl", 22),
        ("lora_unet_down_blocks_1_attentions_0_proj_in", "sdxl", None),
    ],
)
def test_block_index_outside_kohyas_targets(name: str, family: str, expected: int | None) -> None:
    assert block_index(name, family) == expected


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_attention_blocks_are_where_kohya_finds_transformers(family: str) -> None:
    kohya = {index for _, kind, index in DATA["modules"][family] if kind == "attention"}
    assert attention_blocks(family) == kohya


def test_block_names_follow_the_block_numbers() -> None:
    sd, sdxl = block_names("sd2"), block_names("sdxl")
    assert (len(sd), len(sdxl)) == (NUM_BLOCKS["sd2"], NUM_BLOCKS["sdxl"]) == (25, 23)
    assert (sd[0], sd[11], sd[12], sd[13], sd[24]) == ("IN00", "IN11", "MID", "OUT00", "OUT11")
    assert (sdxl[0], sdxl[1], sdxl[10], sdxl[12], sdxl[13], sdxl[22]) == (
        "EMB",
        "IN00",
        "MID00",
        "MID02",
        "OUT00",
        "OUT",
    )


# --- lr weights ------------------------------------------------------------------------------------------

KOHYA_LR_RESULTS = [case for case in DATA["lr_weight_cases"] if "result" in case["kohya"]]


@pytest.mark.parametrize("case", KOHYA_LR_RESULTS, ids=case_id)
def test_lr_weights_are_kohyas(case: dict) -> None:
    expected = case["kohya"]["result"]
    ours = block_lr_weights(case["network_args"], case["family"])
    assert ours == (None if expected is None else pytest.approx(expected, abs=1e-12))


@pytest.mark.parametrize("case", KOHYA_LR_RESULTS, ids=case_id)
def test_lr_weight_warnings_when_kohya_pads_or_cuts(case: dict) -> None:
    log = " ".join(case["kohya"].get("log", []))
    warnings = " ".join(block_warnings(case["network_args"], case["family"], conv_dim=None))
    assert ("train at weight 1.0, as in kohya" in warnings) == ("too short" in log)
    assert ("are ignored, as in kohya" in warnings) == ("too long" in log)


LONG_DOWN = ",".join(str(i / 10) for i in range(14))
PRESETS = "sine, cosine, linear, reverse_linear, zeros"
# Every input kohya stops on (see the data's kohya_traps) with what we do instead: a message, or None: we cut
# the list as kohya does when both down and up lists are given.
KOHYA_FAILURES = [
    ("sd1", {"down_lr_weight": LONG_DOWN}, None),
    ("sdxl", {"down_lr_weight": LONG_DOWN}, None),
    ("sdxl", {"down_lr_weight": values(12, 0.5)}, None),
    *(
        (
            family,
            {"down_lr_weight": "0.5"},
            f"--network_args down_lr_weight=0.5: give one weight per block ({size}), "
            f"separated by commas, or a preset ({PRESETS})",
        )
        for family, size in (("sd1", 12), ("sdxl", 9))
    ),
    *(
        (family, args, message)
        for family in ("sd1", "sdxl")
        for args, message in (
            (
                {"down_lr_weight": "foo"},
                "--network_args down_lr_weight=foo: unknown preset 'foo'; give numbers separated by commas or one "
                f"of {PRESETS}, optionally with +OFFSET (e.g. sine+.5)",
            ),
            ({"down_lr_weight": "sine+"}, "--network_args down_lr_weight: '' is not a number"),
            ({"down_lr_weight": "1,x"}, "--network_args down_lr_weight: 'x' is not a number"),
            ({"mid_lr_weight": "sine"}, "--network_args mid_lr_weight: 'sine' is not a number"),
        )
    ),
]


def test_every_input_kohya_fails_on_has_a_decided_result() -> None:
    def key(family: str, args: dict) -> tuple:
        return family, tuple(sorted(args.items()))

    kohya = {
        key(case["family"], case["network_args"])
        for case in DATA["lr_weight_cases"]
        if "error" in case["kohya"]
    }
    assert kohya == {key(family, args) for family, args, _ in KOHYA_FAILURES}


@pytest.mark.parametrize(
    ("family", "args", "message"), [failure for failure in KOHYA_FAILURES if failure[2] is not None]
)
def test_lr_weight_messages(family: str, args: dict, message: str) -> None:
    with pytest.raises(UserError) as error:
        block_lr_weights(args, family)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("family", "args"), [failure[:2] for failure in KOHYA_FAILURES if failure[2] is None]
)
def test_a_long_down_list_alone_is_cut_where_kohya_stops(family: str, args: dict) -> None:
    given = [float(value) for value in args["down_lr_weight"].split(",")]
    size = 9 if family == "sdxl" else 12
    weights = block_lr_weights(args, family)
    down = weights[1 : size + 1] if family == "sdxl" else weights[:size]
    assert down == pytest.approx(given[:size])
    assert block_warnings(args, family, None) == [
        f"--network_args down_lr_weight has {len(given)} values for {size} blocks: the last {len(given) - size} "
        "are ignored, as in kohya"
    ]


def test_padding_warnings_name_the_key_and_the_count() -> None:
    args = {"down_lr_weight": "0.5,0.5", "mid_lr_weight": "0", "up_lr_weight": values(10, 1)}
    assert block_warnings(args, "sdxl", None) == [
        "--network_args down_lr_weight has 2 values for 9 blocks: the last 7 train at weight 1.0, as in kohya",
        "--network_args mid_lr_weight has 1 values for 3 blocks: the last 2 train at weight 1.0, as in kohya",
        "--network_args up_lr_weight has 10 values for 9 blocks: the last 1 are ignored, as in kohya",
    ]


def test_a_threshold_alone_changes_nothing_and_says_so() -> None:
    args = {"block_lr_zero_threshold": "0.5"}
    assert block_lr_weights(args, "sd1") is None
    assert block_dims(args, "sd1", 8, 4.0, None, None) is None
    assert block_warnings(args, "sd1", None) == [
        "--network_args block_lr_zero_threshold has no effect without down_lr_weight, mid_lr_weight or up_lr_weight"
    ]


def test_a_bad_threshold_is_one_line() -> None:
    with pytest.raises(UserError) as error:
        block_lr_weights({"down_lr_weight": "sine", "block_lr_zero_threshold": "half"}, "sd1")
    assert str(error.value) == "--network_args block_lr_zero_threshold: 'half' is not a number"


def test_empty_values_count_as_not_given() -> None:
    blank = dict.fromkeys(BLOCK_KEYS, " ") | {"block_lr": ""}
    assert block_lr_weights(blank, "sd1") is None
    assert block_dims(blank, "sd1", 8, 4.0, None, None) is None
    assert block_warnings(blank, "sd1", None) == []


# --- block dims ------------------------------------------------------------------------------------------

# Per-block keys kohya ignores unless block_dims or an lr weight is given; we apply them (tested below).
KOHYA_IGNORES = ({"block_alphas"}, {"conv_block_dims", "conv_dim"}, {"conv_block_alphas", "conv_dim"})


def our_modules(case: dict) -> dict:
    """What our block dims give each module kohya can target, summarised like the data's `blocks`."""
    args, family = case["network_args"], case["family"]
    conv_dim = int(args["conv_dim"]) if "conv_dim" in args else None
    conv_alpha = float(args["conv_alpha"]) if "conv_alpha" in args else None
    blocks = {key: value for key, value in args.items() if key in BLOCK_KEYS}
    dims = block_dims(blocks, family, case["network_dim"], case["network_alpha"], conv_dim, conv_alpha)
    if dims is None:  # one rank everywhere, as kohya without per-block keys
        count = NUM_BLOCKS[family]
        conv = None if conv_dim is None else [conv_dim] * count
        conv_alphas = None if conv_dim is None else [1.0 if conv_alpha is None else conv_alpha] * count
        dims = BlockDims(
            (case["network_dim"],) * count, (float(case["network_alpha"]),) * count, conv, conv_alphas
        )
    summary: dict = {}
    for name, kind, _ in DATA["modules"][family]:
        # Without convolution ranks kohya targets only the attention blocks' layers.
        if kind == "text_encoder" or (kind != "attention" and dims.conv_dims is None):
            continue
        index = block_index(name, family)
        rank_alpha = dims.rank_and_alpha(index, conv3x3=kind == "conv3x3")
        if rank_alpha is not None:
            entry = summary.setdefault(str(index), {}).setdefault(
                kind, [rank_alpha[0], float(rank_alpha[1]), 0]
            )
            entry[2] += 1
    return summary


KOHYA_NETWORKS = [
    case
    for case in DATA["network_cases"]
    if "result" in case["kohya"] and set(case["network_args"]) not in KOHYA_IGNORES
]


@pytest.mark.parametrize("case", KOHYA_NETWORKS, ids=case_id)
def test_block_dims_give_every_module_kohyas_rank_and_alpha(case: dict) -> None:
    assert our_modules(case) == case["kohya"]["result"]["blocks"]


@pytest.mark.parametrize("case", KOHYA_NETWORKS, ids=case_id)
def test_block_learning_rates_are_kohyas_optimizer_groups(case: dict) -> None:
    blocks = {key: value for key, value in case["network_args"].items() if key in BLOCK_KEYS}
    rates = block_learning_rates(blocks, case["family"], case["unet_lr"])
    groups = case["kohya"]["result"]["optimizer_groups"]
    if [description for description, _, _ in groups] == ["unet"]:
        assert rates is None
        return
    for description, lr, _ in groups:
        assert rates[int(description.removeprefix("unet_block"))] == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_block_keys_kohya_ignores_alone_are_applied(family: str) -> None:
    count = NUM_BLOCKS[family]
    alphas = block_dims({"block_alphas": values(count, 2)}, family, 8, 4.0, None, None)
    assert alphas == BlockDims((8,) * count, (2.0,) * count, None, None)
    conv = block_dims({"conv_block_dims": values(count, 2)}, family, 8, 4.0, 4, None)
    assert conv == BlockDims((8,) * count, (4.0,) * count, (2,) * count, (1.0,) * count)
    conv_alphas = block_dims({"conv_block_alphas": values(count, 2)}, family, 8, 4.0, 4, 3.0)
    assert conv_alphas == BlockDims((8,) * count, (4.0,) * count, (4,) * count, (2.0,) * count)


def test_conv_block_dims_without_conv_dim_take_conv_alpha() -> None:
    # kohya stops here on the raw conv_alpha string; the alpha meant is conv_alpha.
    dims = block_dims({"conv_block_dims": values(25, 2)}, "sd1", 8, 4.0, None, 3.0)
    assert (dims.conv_dims, dims.conv_alphas) == ((2,) * 25, (3.0,) * 25)


def test_rank_and_alpha_by_layer_kind() -> None:
    dims = BlockDims((0, 4), (1.0, 2.0), (3, 0), (0.5, 1.5))
    assert dims.rank_and_alpha(1, conv3x3=False) == (4, 2.0)
    assert dims.rank_and_alpha(0, conv3x3=False) is None
    assert dims.rank_and_alpha(0, conv3x3=True) == (3, 0.5)
    assert dims.rank_and_alpha(1, conv3x3=True) is None
    assert BlockDims((4,), (1.0,), None, None).rank_and_alpha(0, conv3x3=True) is None


@pytest.mark.parametrize(
    ("family", "layout"), [("sd1", SD_LAYOUT), ("sd2", SD_LAYOUT), ("sdxl", SDXL_LAYOUT)]
)
@pytest.mark.parametrize(
    "key", ["block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr"]
)
def test_a_wrong_count_names_the_count_expected(key: str, family: str, layout: str) -> None:
    count = NUM_BLOCKS[family]
    with pytest.raises(UserError) as error:
        block_dims({key: values(count - 1, 1)}, family, 8, 4.0, 4, None)
    assert str(error.value) == (
        f"--network_args {key} has {count - 1} values; {layout}: give {count} values separated by commas"
    )


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        (
            "block_dims",
            "4.0",
            "--network_args block_dims: '4.0' is not a rank; give whole numbers, 0 or more",
        ),
        (
            "conv_block_dims",
            "-1",
            "--network_args conv_block_dims: '-1' is not a rank; give whole numbers, 0 or more",
        ),
        ("block_alphas", "x", "--network_args block_alphas: 'x' is not a number"),
        ("conv_block_alphas", " ", "--network_args conv_block_alphas: '' is not a number"),
        ("block_lr", "-1e-4", "--network_args block_lr: '-1e-4' is negative; learning rates are 0 or more"),
    ],
)
def test_a_bad_value_is_one_line(key: str, bad: str, message: str) -> None:
    with pytest.raises(UserError) as error:
        block_dims({key: ",".join(["1"] * 24 + [bad])}, "sd1", 8, 4.0, 4, None)
    assert str(error.value) == message


def test_conv_block_alphas_need_a_convolution_rank() -> None:
    with pytest.raises(UserError) as error:
        block_dims({"conv_block_alphas": values(25, 2)}, "sd1", 8, 4.0, None, None)
    assert str(error.value) == (
        "--network_args conv_block_alphas needs conv_dim or conv_block_dims: without them no convolution gets a LoRA"
    )


# --- block_lr --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_block_lr_sets_each_blocks_learning_rate(family: str) -> None:
    count = NUM_BLOCKS[family]
    rates = [0.0 if i % 4 == 0 else i * 1e-5 for i in range(count)]
    blocks = {"block_lr": ",".join(str(rate) for rate in rates), "block_dims": values(count, 8)}
    assert block_learning_rates(blocks, family, unet_lr=1.0) == rates
    assert block_lr_weights(blocks, family) is None
    dims = block_dims(blocks, family, 4, 1.0, 2, None)
    assert dims.dims == tuple(0 if rate == 0 else 8 for rate in rates)
    assert dims.conv_dims == tuple(0 if rate == 0 else 2 for rate in rates)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"mid_lr_weight": "0.5"},
            "--network_args block_lr and down_lr_weight/mid_lr_weight/up_lr_weight both set per-block learning rates: "
            "give block_lr (learning rates) or the lr weights (multiples of --unet_lr), not both",
        ),
        (
            {"block_lr_zero_threshold": "0.1"},
            "--network_args block_lr_zero_threshold applies to the lr weights, not to block_lr: leave it out and give "
            "0 in block_lr to the blocks to leave out",
        ),
    ],
)
def test_block_lr_is_refused_next_to_lr_weights(extra: dict, message: str) -> None:
    blocks = {"block_lr": values(25, 1e-4)} | extra
    for call in (
        lambda: block_learning_rates(blocks, "sd1", 1e-4),
        lambda: block_lr_weights(blocks, "sd1"),
        lambda: block_dims(blocks, "sd1", 8, 4.0, None, None),
    ):
        with pytest.raises(UserError) as error:
            call()
        assert str(error.value) == message


# --- blocks without attention ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "unused"),
    [
        ("sd1", "IN00, IN03, IN06, IN09, IN10, IN11, OUT00, OUT01, OUT02"),
        ("sdxl", "EMB, IN00, IN01, IN02, IN03, IN06, MID00, MID02, OUT06, OUT07, OUT08, OUT"),
    ],
)
def test_ranks_of_blocks_without_attention_are_reported_once(family: str, unused: str) -> None:
    blocks = {"block_dims": values(NUM_BLOCKS[family], 4)}
    assert block_warnings(blocks, family, conv_dim=None) == [
        f"--network_args block_dims: {unused} have no attention layers, so these ranks are not used without "
        "conv_dim or conv_block_dims"
    ]
    assert block_warnings(blocks, family, conv_dim=4) == []
    assert block_warnings(blocks | {"conv_block_dims": values(NUM_BLOCKS[family], 4)}, family, None) == []


def test_zero_ranks_without_attention_need_no_warning() -> None:
    ranks = [0 if i not in attention_blocks("sd1") else 8 for i in range(25)]
    blocks = {"block_dims": ",".join(map(str, ranks)), "block_alphas": values(25, 4)}
    assert block_warnings(blocks, "sd1", conv_dim=None) == []
