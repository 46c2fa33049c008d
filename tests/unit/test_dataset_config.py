import json
from pathlib import Path

import pytest

from loracraft.config.dataset_config import load_dataset_config, read_dataset_config
from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.fields import options_of
from loracraft.config.load import build_config
from loracraft.config.schema import TrainConfig
from loracraft.config.subset_options import SubsetOptions, parse_face_crop_range
from loracraft.errors import UserError

# kohya's README example, trimmed to DreamBooth subsets.
KOHYA_EXAMPLE = """
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1

[[datasets]]
resolution = 512
batch_size = 4
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = 'hoge'
  class_tokens = 'hoge girl'

  [[datasets.subsets]]
  image_dir = 'fuga'
  class_tokens = 'fuga boy'
  keep_tokens = 3

  [[datasets.subsets]]
  is_reg = true
  image_dir = 'reg'
  class_tokens = 'human'
  keep_tokens = 1

[[datasets]]
resolution = [768, 640]
batch_size = 2

  [[datasets.subsets]]
  image_dir = 'piyo'
  num_repeats = 5
"""


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **flags):
    return load_dataset_config(write(tmp_path, text), TrainConfig(**flags))


def error_of(tmp_path: Path, text: str, **flags) -> str:
    with pytest.raises(UserError) as info:
        load(tmp_path, text, **flags)
    message = str(info.value)
    assert "\n" not in message
    return message


def one_subset(body: str = "", subset: str = "", general: str = "") -> str:
    return f"[general]\n{general}\n[[datasets]]\n{body}\n[[datasets.subsets]]\nimage_dir = 'a'\n{subset}\n"


def test_kohya_example_resolves_with_precedence(tmp_path):
    first, second = load(tmp_path, KOHYA_EXAMPLE, caption_extension=".caption", flip_aug=True)
    assert (first.options.resolution, first.options.train_batch_size) == ((512, 512), 4)
    assert (second.options.resolution, second.options.train_batch_size) == (
        (768, 640), 2
    )  # fmt: skip
    hoge, fuga, reg = first.subsets
    assert [s.options.keep_tokens for s in (hoge, fuga, reg)] == [2, 3, 1]  # dataset, subset, subset
    assert second.subsets[0].options.keep_tokens == 1  # [general]
    assert all(s.options.caption_extension == ".txt" for s in (hoge, fuga, reg))  # [general] beats the flag
    assert hoge.options.shuffle_caption and hoge.options.flip_aug  # [general]; the flag
    assert (hoge.class_tokens, hoge.num_repeats, hoge.is_reg) == ("hoge girl", 1, False)  # kohya defaults
    assert (reg.is_reg, reg.image_dir) == (True, Path("reg"))
    assert (second.subsets[0].num_repeats, second.subsets[0].class_tokens) == (5, None)
    assert first.label.endswith("x.toml [[datasets]][0]")
    assert fuga.label.endswith("x.toml [[datasets]][0].subsets[1]")


@pytest.mark.parametrize(
    ("general", "dataset", "subset", "expected"),
    [
        ("", "", "", 0.0),  # the schema default
        ("caption_dropout_rate = 0.1", "", "", 0.1),
        ("caption_dropout_rate = 0.1", "caption_dropout_rate = 0.2", "", 0.2),
        ("caption_dropout_rate = 0.1", "caption_dropout_rate = 0.2", "caption_dropout_rate = 0.3", 0.3),
        ("", "", "caption_dropout_rate = 0.0", 0.0),  # a subset's 0 still wins over the flag below
    ],
)
def test_precedence_subset_dataset_general_flag(tmp_path, general, dataset, subset, expected):
    (blueprint,) = load(tmp_path, one_subset(dataset, subset, general), caption_dropout_rate=0.05)
    flag_only = not (general or dataset or subset)
    assert blueprint.subsets[0].options.caption_dropout_rate == (0.05 if flag_only else expected)


def test_dataset_keys_fall_back_to_flags(tmp_path):
    flags = dict(resolution="640,512", train_batch_size=3, enable_bucket=False, min_bucket_reso=320)
    (blueprint,) = load(tmp_path, one_subset(), **flags)
    assert blueprint.options == DatasetOptions(
        resolution=(640, 512), train_batch_size=3, enable_bucket=False, min_bucket_reso=320
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("512", (512, 512)), ("[768, 512]", (768, 512)), ('"640,448"', (640, 448))]
)
def test_resolution_spellings(tmp_path, value, expected):
    (blueprint,) = load(tmp_path, one_subset(f"resolution = {value}"))
    assert blueprint.options.resolution == expected


def test_flags_alone_give_the_plain_folder_options():
    config = TrainConfig(shuffle_caption=True, keep_tokens=2, caption_prefix="photo", flip_aug=True,
                         face_crop_aug_range="2.0,4.0", alpha_mask=True, cache_latents=False)  # fmt: skip
    assert options_of(SubsetOptions, config) == SubsetOptions(
        shuffle_caption=True, keep_tokens=2, caption_prefix="photo", flip_aug=True,
        face_crop_aug_range=(2.0, 4.0), alpha_mask=True,
    )  # fmt: skip


def test_subset_face_crop_range_and_alpha_mask(tmp_path):
    text = one_subset(subset="face_crop_aug_range = [1.5, 3]\nalpha_mask = true")
    (blueprint,) = load(tmp_path, text, cache_latents=False)
    assert blueprint.subsets[0].options == SubsetOptions(face_crop_aug_range=(1.5, 3.0), alpha_mask=True)


@pytest.mark.parametrize(
    ("key", "flags", "message"),
    [
        ("color_aug = true", {"cache_latents": True}, "color_aug changes the pixels every epoch, so latents cannot be cached: "
         "drop color_aug or set --cache_latents false"),
        ("random_crop = true", {"cache_latents": True}, "random_crop changes the pixels every epoch"),
        # The flag check once forgot face crop here, and such a subset was silently centre-cropped.
        ("face_crop_aug_range = [2.0, 4.0]", {"cache_latents": True}, "face_crop_aug_range changes the pixels every epoch"),
        ("shuffle_caption = true", {"cache_text_encoder_outputs": True, "network_train_unet_only": True},
         "--cache_text_encoder_outputs needs captions that never change, but shuffle_caption changes them"),
        ("caption_tag_dropout_rate = 0.1", {"cache_text_encoder_outputs": True, "network_train_unet_only": True},
         "--cache_text_encoder_outputs needs captions that never change, but caption_tag_dropout_rate"),
    ],
)  # fmt: skip
def test_cache_rules_apply_to_every_subset(tmp_path, key, flags, message):
    """The flags' cache rules, in the subset's own words: one rule serves both."""
    expected = f"{tmp_path / 'x.toml'} [[datasets]][0].subsets[0]: {message}"
    assert error_of(tmp_path, one_subset(subset=key), **flags).startswith(expected)


def test_json_dataset_config(tmp_path):
    data = {"datasets": [{"batch_size": 2, "subsets": [{"image_dir": "a", "num_repeats": 3}]}]}
    path = write(tmp_path, json.dumps(data), "x.json")
    (blueprint,) = load_dataset_config(path, TrainConfig())
    assert (blueprint.options.train_batch_size, blueprint.subsets[0].num_repeats) == (2, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            one_subset() + "[[datasets.subsets]]\nimage_dir = 'b'\nnum_repeat = 3\n",
            "x.toml [[datasets]][0].subsets[1]: unknown key 'num_repeat' (did you mean num_repeats?)",
        ),
        (
            one_subset("batchsize = 2"),
            "x.toml [[datasets]][0]: unknown key 'batchsize' (did you mean batch_size?)",
        ),
        (
            one_subset(general="shuffle_captions = true"),
            "x.toml [general]: unknown key 'shuffle_captions' (did you mean shuffle_caption?)",
        ),
        ("[[dataset]]\nresolution = 512\n", "x.toml: unknown key 'dataset' (did you mean datasets?)"),
        (
            one_subset(subset="colour = 1"),
            "x.toml [[datasets]][0].subsets[0]: unknown key 'colour' (did you mean color_aug?)",
        ),
        (
            one_subset("image_dir = 'b'"),
            "x.toml [[datasets]][0]: 'image_dir' belongs in a [[datasets.subsets]] table",
        ),
        (
            one_subset(subset="resolution = 512"),
            "x.toml [[datasets]][0].subsets[0]: 'resolution' is a dataset key; put it in [[datasets]] or [general]",
        ),
        (
            one_subset(general="prior_loss_weight = 0.5"),
            "x.toml [general]: 'prior_loss_weight' is a command-line setting, not a dataset key; "
            "pass --prior_loss_weight",
        ),
        (
            one_subset("network_multiplier = 0.5"),
            "x.toml [[datasets]][0]: kohya key 'network_multiplier' is not supported by loracraft; remove it",
        ),
    ],
)
def test_unknown_and_misplaced_keys_name_the_table(tmp_path, text, expected):
    assert error_of(tmp_path, text) == str(tmp_path / expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (one_subset(subset="num_repeats = 0"), "[[datasets]][0].subsets[0]: num_repeats: Input should be greater than or equal to 1 (got 0)"),
        (one_subset(subset="num_repeats = 'ten'"), "[[datasets]][0].subsets[0]: num_repeats: Input should be a valid integer"),
        (one_subset("batch_size = 0"), "[[datasets]][0]: batch_size: Input should be greater than or equal to 1 (got 0)"),
        (one_subset(general="caption_dropout_rate = 1.5"), "[general]: caption_dropout_rate: Input should be less than or equal to 1 (got 1.5)"),
        (one_subset("resolution = 500"), "[[datasets]][0]: resolution sides must be multiples of 8, got 500,500"),
        (one_subset("resolution = 'big'"), "[[datasets]][0]: resolution: resolution 'big' is not 'SIZE' or 'WIDTH,HEIGHT'"),
        (one_subset("bucket_reso_steps = 0"), "[[datasets]][0]: bucket_reso_steps: Input should be greater than or equal to 32 (got 0)"),
        (one_subset(subset="zzz = 1"), "[[datasets]][0].subsets[0]: unknown key 'zzz'"),
        (one_subset("bucket_reso_steps = 100"), "[[datasets]][0]: bucket_reso_steps: Input should be a multiple of 32 (got 100)"),
        (one_subset(subset="face_crop_aug_range = [3.0, 2.0]"), "[[datasets]][0].subsets[0]: face_crop_aug_range: face_crop_aug_range needs 0 < LOW <= HIGH, got 3.0,2.0"),
        (one_subset(subset="shuffle_caption = 'maybe'"), "[[datasets]][0].subsets[0]: shuffle_caption: Input should be a valid boolean"),
        (one_subset(subset="caption_separator = ''"), "[[datasets]][0].subsets[0]: caption_separator: String should have at least 1 character"),
    ],
)  # fmt: skip
def test_bad_values_name_the_table_and_key(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(f"{tmp_path / 'x.toml'} {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nnum_repeats = 2\n",
         "x.toml [[datasets]][0].subsets[0]: missing image_dir; every [[datasets.subsets]] needs the folder of its images"),
        ("[general]\nkeep_tokens = 1\n", "x.toml: no [[datasets]] table; add one with an image_dir"),
        ("[[datasets]]\nresolution = 512\n", "x.toml [[datasets]][0]: no [[datasets.subsets]] table; add one with an image_dir"),
        ("datasets = []\n", "x.toml: no [[datasets]] table; add one with an image_dir"),
    ],
)  # fmt: skip
def test_missing_parts(tmp_path, text, expected):
    assert error_of(tmp_path, text) == str(tmp_path / expected)


def test_min_bucket_above_max_names_the_dataset(tmp_path):
    text = one_subset("min_bucket_reso = 1024\nmax_bucket_reso = 512")
    assert error_of(tmp_path, text) == (
        f"{tmp_path / 'x.toml'} [[datasets]][0]: min_bucket_reso 1024 is larger than max_bucket_reso 512"
    )


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match=r"^--dataset_config .*nope.toml does not exist$"):
        read_dataset_config(tmp_path / "nope.toml")
    broken = write(tmp_path, "[[datasets]\nresolution = 512\n")
    with pytest.raises(UserError, match=r"^--dataset_config .*x.toml cannot be read: .*line 1"):
        read_dataset_config(broken)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2,4", (2.0, 4.0)), ([1.5, 1.5], (1.5, 1.5)), (None, None), ("", None)],
)
def test_face_crop_range_parsing(value, expected):
    assert parse_face_crop_range(value) == expected


@pytest.mark.parametrize("value", ["2", "a,b", [0, 1], "4,2"])
def test_face_crop_range_rejects(value):
    with pytest.raises(ValueError, match="face_crop_aug_range"):
        parse_face_crop_range(value)


def test_bad_face_crop_flag_is_a_user_error():
    with pytest.raises(
        UserError, match=r"^--face_crop_aug_range: face_crop_aug_range 'wide' is not 'LOW,HIGH'"
    ):
        build_config({}, {"face_crop_aug_range": "wide", "cache_latents": False})
