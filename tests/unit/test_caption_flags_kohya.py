"""`loracraft caption` takes the flags of the three kohya captioning scripts it replaces, with kohya's
defaults, so a guide's `python finetune/tag_images_by_wd14_tagger.py ...` works as `loracraft caption ...`.

KOHYA_FLAGS holds every `add_argument` of sd-scripts' finetune/ captioning scripts (commit 48d368fa, read
from the source's AST): flag -> default (store_true flags: False). DIFFERENCES are the defaults loracraft
changes on purpose, UNSUPPORTED the flags it lacks (each refused in one line by the parser).
"""

import pytest

from kohya_flags import assert_takes_kohya_flags, parser_defaults
from loracraft.caption.model_source import DEFAULT_TAGGER
from loracraft.errors import UserError
from loracraft.tools import caption

KOHYA_FLAGS = {
    "tag_images_by_wd14_tagger.py": {
        "train_data_dir": None, "--repo_id": "SmilingWolf/wd-v1-4-convnext-tagger-v2",
        "--model_dir": "wd14_tagger_model", "--force_download": False, "--batch_size": 1,
        "--max_data_loader_n_workers": None, "--output_path": None, "--caption_extention": None,
        "--caption_extension": ".txt", "--thresh": 0.35, "--general_threshold": None,
        "--character_threshold": None, "--meta_threshold": None, "--model_threshold": None,
        "--copyright_threshold": None, "--artist_threshold": None, "--recursive": False,
        "--remove_underscore": False, "--debug": False, "--undesired_tags": "", "--frequency_tags": False,
        "--onnx": False, "--append_tags": False, "--use_rating_tags": False,
        "--use_rating_tags_as_last_tag": False, "--use_quality_tags": False,
        "--use_quality_tags_as_last_tag": False, "--character_tags_first": False, "--always_first_tags": None,
        "--caption_separator": ", ", "--tag_replacement": None, "--character_tag_expand": False,
    },
    "make_captions.py": {
        "train_data_dir": None,
        "--caption_weights": "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
        "model_large_caption.pth",
        "--caption_extention": None, "--caption_extension": ".caption", "--beam_search": False,
        "--batch_size": 1, "--max_data_loader_n_workers": None, "--num_beams": 1, "--top_p": 0.9,
        "--max_length": 75, "--min_length": 5, "--seed": 42, "--debug": False, "--recursive": False,
    },
    "make_captions_by_git.py": {
        "train_data_dir": None, "--caption_extension": ".caption", "--model_id": "microsoft/git-large-textcaps",
        "--batch_size": 1, "--max_data_loader_n_workers": None, "--max_length": 50, "--remove_words": False,
        "--debug": False, "--recursive": False,
    },
}  # fmt: skip
# The one parser serves the three scripts: where their defaults differ, ours is named here.
DIFFERENCES = {
    # --model (alias --repo_id) unset means kohya's tagger, DEFAULT_TAGGER (checked below).
    ("tag_images_by_wd14_tagger.py", "--repo_id"): None,
    # kohya's BLIP and GIT write .caption; its tagger, the kohya_ss GUI and most guides use .txt.
    ("make_captions.py", "--caption_extension"): ".txt",
    ("make_captions_by_git.py", "--caption_extension"): ".txt",
    # unset: the kind's kohya default, BLIP 75 and GIT 50 (transformers_captioner.DEFAULT_MAX_LENGTH).
    ("make_captions.py", "--max_length"): None,
    ("make_captions_by_git.py", "--max_length"): None,
    # --model_id is --model: a hub id or folder of any kind; unset means the tagger.
    ("make_captions_by_git.py", "--model_id"): None,
    # The aliases are stored under --caption_extension, whose default they show.
    ("tag_images_by_wd14_tagger.py", "--caption_extention"): ".txt",
    ("make_captions.py", "--caption_extention"): ".txt",
}
UNSUPPORTED = {
    # kohya's tags to a metadata JSON for fine-tuning, not caption files; loracraft trains LoRAs from folders.
    "--output_path",
    # kohya's cl_tagger (a different tag list format); SmilingWolf's WD14 taggers have no such categories.
    "--meta_threshold", "--model_threshold", "--copyright_threshold", "--artist_threshold",
    "--use_quality_tags", "--use_quality_tags_as_last_tag",
    # BLIP's original .pth checkpoint for kohya's bundled BLIP code; --model takes transformers' BLIP.
    "--caption_weights",
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(KOHYA_FLAGS))
def test_every_kohya_flag_is_taken_with_kohya_s_default(script):
    ours = parser_defaults(caption.make_parser())
    assert_takes_kohya_flags(script, ours, KOHYA_FLAGS[script], DIFFERENCES, UNSUPPORTED)


def test_the_default_model_is_kohya_s_tagger():
    assert DEFAULT_TAGGER == KOHYA_FLAGS["tag_images_by_wd14_tagger.py"]["--repo_id"]


def test_the_kohya_aliases_set_our_flags():
    args = caption.make_parser().parse_args(
        ["d", "--repo_id", "a/b", "--caption_extention", ".tags", "--append_tags", "--postfix", "x"]
    )
    assert (args.model, args.caption_extension, args.append, args.suffix) == ("a/b", ".tags", True, "x")
    assert (
        caption.make_parser().parse_args(["d", "--model_id", "microsoft/git-base"]).model
        == "microsoft/git-base"
    )


@pytest.mark.parametrize("flag", sorted(UNSUPPORTED))
def test_an_unsupported_kohya_flag_is_one_line(flag):
    with pytest.raises(UserError, match=rf"^caption: unrecognized arguments: {flag}"):
        caption.make_parser().parse_args(["d", flag] if flag.startswith("--use_") else ["d", flag, "1"])
