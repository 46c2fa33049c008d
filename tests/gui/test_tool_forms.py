"""The tool forms generated from argparse parsers: each kind of action becomes its control with its
default and help, the controls' values become the argv a person would type (only what changed), and the
round trips hold: values -> argv -> parsed -> values, and a guide's command line -> parsed -> values ->
argv -> the same parsed flags. On a parser built here with every kind of action and on the tools' own
parsers (sample, dataset prepare)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from loracraft.errors import UserError
from loracraft.gui.form_fields import CHECKBOX, DROPDOWN, INTEGER, LIST, NOT_SET, NUMBER, TEXT
from loracraft.gui.tool_forms import form_values, tool_argv, tool_fields
from loracraft.tools import dataset_prepare, sample
from loracraft.tools.tool_parser import ToolParser


def comma_floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))


def every_kind_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="loracraft toy", description="A tool with every kind of flag.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="Files to read.")
    parser.add_argument("--model", required=True, help="The LoRA.")
    parser.add_argument("--save_to", type=Path, help="Where it goes.")
    parser.add_argument("--new_rank", type=int, default=4, help="Rank [%(default)s].")
    parser.add_argument("--dynamic_param", type=float, help="A share.")
    parser.add_argument("--method", choices=("sv_ratio", "sv_fro"), help="How ranks are chosen.")
    parser.add_argument("--precision", choices=("float", "fp16"), default="float", help="Saved as.")
    parser.add_argument("--ratios", type=float, nargs="*", default=[1.0], help="One a model.")
    parser.add_argument("--models", nargs="+", help="More LoRAs.")
    parser.add_argument("--tag", action="append", help="One flag a tag.")
    parser.add_argument("--lora", nargs="+", action="extend", help="Extends.")
    parser.add_argument("--weights", type=comma_floats, default=(0.7, 1.0), help="Comma-separated.")
    parser.add_argument("--link", nargs="?", const="hard", choices=("hard", "symlink"), help="Link.")
    parser.add_argument("--verbose", "-v", action="count", default=0, help="More lines.")
    parser.add_argument("--overwrite", action="store_true", help="Replace.")
    parser.add_argument("--no_half", dest="half", action="store_false", help="Keep float32.")
    parser.add_argument("--mode", action="store_const", const="fast", help="The fast mode.")
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    return parser


def by_name(fields):
    return {field.name: field for field in fields}


def test_each_kind_of_action_becomes_its_control_with_its_default_and_help():
    fields = tool_fields(every_kind_parser())
    assert [field.name for field in fields] == [
        "FILE", "--model", "--save_to", "--new_rank", "--dynamic_param", "--method", "--precision", "--ratios",
        "--models", "--tag", "--lora", "--weights", "--link", "--verbose", "--overwrite", "--no_half", "--mode",
    ]  # fmt: skip
    shown = {field.name: (field.kind, field.initial) for field in fields}
    assert shown == {
        "FILE": (LIST, ""),
        "--model": (TEXT, ""),
        "--save_to": (TEXT, ""),
        "--new_rank": (INTEGER, 4),
        "--dynamic_param": (NUMBER, None),
        "--method": (DROPDOWN, NOT_SET),
        "--precision": (DROPDOWN, "float"),
        "--ratios": (LIST, "1.0"),
        "--models": (LIST, ""),
        "--tag": (LIST, ""),
        "--lora": (LIST, ""),
        "--weights": (TEXT, ""),
        "--link": (DROPDOWN, NOT_SET),
        "--verbose": (INTEGER, 0),
        "--overwrite": (CHECKBOX, False),
        "--no_half": (CHECKBOX, False),
        "--mode": (CHECKBOX, False),
    }
    field = by_name(fields)
    assert field["--new_rank"].label == "New rank (--new_rank)" and field["--new_rank"].info == "Rank [4]."
    assert field["FILE"].label == "Files (FILE)" and field["FILE"].info == "Required. Files to read."
    assert field["--model"].info == "Required. The LoRA." and not field["--save_to"].required
    assert field["--weights"].default_hint == "0.7,1.0"  # a parsed default the text box cannot show
    assert field["--precision"].choices == ("float", "fp16")
    assert (field["--ratios"].item_type, field["--models"].item_type) == (float, str)


def test_values_become_the_argv_a_person_types_only_what_changed():
    parser = every_kind_parser()
    fields = tool_fields(parser)
    names = [field.name for field in fields]
    values = dict(zip(names, [field.initial for field in fields], strict=True))
    values.update({"FILE": "a.safetensors 'my lora.safetensors'", "--model": "m.safetensors"})
    assert tool_argv(fields, list(values.values())) == [
        "a.safetensors", "my lora.safetensors", "--model", "m.safetensors",
    ]  # fmt: skip
    values.update({
        "--save_to": "out/b.safetensors", "--new_rank": 8.0, "--dynamic_param": -0.5, "--method": "sv_fro",
        "--ratios": "0.5, 1.5", "--models": "x y", "--tag": "t1 t2", "--lora": "l1", "--weights": "0.5,1",
        "--link": "hard", "--verbose": 2, "--overwrite": True, "--no_half": True, "--mode": True,
    })  # fmt: skip
    argv = tool_argv(fields, list(values.values()))
    assert argv == [
        "a.safetensors", "my lora.safetensors", "--model", "m.safetensors", "--save_to", "out/b.safetensors",
        "--new_rank", "8", "--dynamic_param=-0.5", "--method", "sv_fro", "--ratios", "0.5", "1.5",
        "--models", "x", "y", "--tag", "t1", "--tag", "t2", "--lora", "l1", "--weights", "0.5,1",
        "--link", "hard", "--verbose", "--verbose", "--overwrite", "--no_half", "--mode",
    ]  # fmt: skip
    parsed = vars(parser.parse_args(argv))
    assert parsed == {
        "files": ["a.safetensors", "my lora.safetensors"], "model": "m.safetensors",
        "save_to": Path("out/b.safetensors"), "new_rank": 8, "dynamic_param": -0.5, "method": "sv_fro",
        "precision": "float", "ratios": [0.5, 1.5], "models": ["x", "y"], "tag": ["t1", "t2"], "lora": ["l1"],
        "weights": (0.5, 1.0), "link": "hard", "verbose": 2, "overwrite": True, "half": False, "mode": "fast",
        "secret": None,
    }  # fmt: skip
    # And back: the parsed flags as the controls' values give the same command.
    assert vars(parser.parse_args(tool_argv(fields, form_values(fields, parsed)))) == parsed


def test_a_value_at_its_default_or_empty_is_left_out_and_a_bad_list_is_one_line():
    fields = tool_fields(every_kind_parser())
    values = [field.initial for field in fields]
    assert tool_argv(fields, values) == []
    # The default typed again (a number that Gradio returns as a float) is still the default.
    field = by_name(fields)
    values[fields.index(field["--new_rank"])] = 4.0
    values[fields.index(field["--precision"])] = "float"
    values[fields.index(field["--ratios"])] = "1.0"
    assert tool_argv(fields, values) == []
    # A number without a default sits in a text box (Gradio's number box sends 0 for empty): its text.
    at = fields.index(field["--dynamic_param"])
    assert tool_argv(fields, [*values[:at], " 0.25 ", *values[at + 1 :]]) == ["--dynamic_param", "0.25"]
    assert tool_argv(fields, [*values[:at], " ", *values[at + 1 :]]) == []
    bad = {
        ("--models", "'unclosed.safetensors"): '--models: No closing quotation in "\'unclosed.safetensors"',
        ("--dynamic_param", "a lot"): "--dynamic_param: 'a lot' is not a number",
        ("--new_rank", "2.5"): "--new_rank: '2.5' is not a whole number",
    }
    for (name, text), message in bad.items():
        wrong = list(values)
        wrong[fields.index(field[name])] = text
        with pytest.raises(UserError) as refused:
            tool_argv(fields, wrong)
        assert str(refused.value) == message


GUIDE_COMMANDS = {
    sample.make_parser: [
        "--pretrained_model_name_or_path 'base model.safetensors' --lora a.safetensors b.safetensors "
        "--prompts p.txt --multiplier 0.5 1 --sampler euler_a --clip_skip 2 --v_parameterization",
        "--pretrained_model_name_or_path m --lora a --prompts p.txt --mixed_precision fp16 --output_dir out",
    ],
    dataset_prepare.make_parser: [
        "--instance_prompt sks --class_prompt dog --train_images photos --repeats 10 --output tree --link",
        "--instance_prompt 'sks cat' --train_images p --output t --reg_images r --reg_repeats 2 --link symlink "
        "--caption_extension .caption",
    ],
    every_kind_parser: [
        "one.safetensors --model m -v --weights 0.4,1 --ratios 0.3 --tag x --no_half",
        "a b c --model=-dash --save_to s --dynamic_param 0.25 --mode --link",
    ],
}


@pytest.mark.parametrize(
    ("make_parser", "command"),
    [(make_parser, command) for make_parser, commands in GUIDE_COMMANDS.items() for command in commands],
)
def test_a_command_line_through_the_form_parses_to_the_same_flags(make_parser, command):
    """A guide's command line, loaded into the form and run from it, is the same command."""
    parser = make_parser()
    fields = tool_fields(parser)
    parsed = vars(parser.parse_args(shlex.split(command)))
    values = form_values(fields, parsed)
    argv = tool_argv(fields, values)
    assert vars(parser.parse_args(argv)) == parsed
    assert form_values(fields, vars(parser.parse_args(argv))) == values


def test_the_tools_own_parsers_give_their_forms():
    field = by_name(tool_fields(sample.make_parser()))
    assert field["--lora"].kind == LIST and field["--lora"].required
    assert (field["--multiplier"].kind, field["--multiplier"].initial, field["--multiplier"].item_type) == (
        LIST, "1.0", float
    )  # fmt: skip
    assert (field["--sampler"].kind, field["--sampler"].initial) == (DROPDOWN, "ddim")
    assert field["--v_parameterization"].kind == CHECKBOX and field["--clip_skip"].kind == INTEGER
    field = by_name(tool_fields(dataset_prepare.make_parser()))
    assert (field["--repeats"].kind, field["--repeats"].initial) == (INTEGER, 40)
    assert (field["--link"].kind, field["--link"].choices) == (DROPDOWN, ("hard", "symlink"))
    assert field["--caption_extension"].initial == ".txt" and field["--train_images"].required


def test_an_action_without_a_control_is_named():
    parser = argparse.ArgumentParser()
    parser.add_argument("--flags", action="append_const", const=1)
    with pytest.raises(ValueError, match=r"^--flags: argparse's _AppendConstAction has no form control$"):
        tool_fields(parser)
