"""Sample prompt files read as kohya reads them (tests/data/kohya/sample_prompts.json holds what kohya's
line_to_prompt_dict, load_prompts and sample_image_inference make of the same text), and one-line errors."""

import json
from pathlib import Path

import pytest

from loracraft.config.sample_options import SampleOptions
from loracraft.errors import UserError
from loracraft.sampling.prompts import SamplePrompt, check_sample_prompts, line_values, read_prompts

KOHYA = json.loads((Path(__file__).parents[1] / "data" / "kohya" / "sample_prompts.json").read_text("utf-8"))


def as_kohya_draws(prompt: SamplePrompt, run_sampler: str = "ddim") -> dict:
    """What kohya's sample_image_inference draws with, in its names."""
    return {
        "prompt": prompt.prompt,
        "negative_prompt": prompt.negative_prompt,
        "sample_steps": prompt.steps,
        "width": prompt.width,
        "height": prompt.height,
        "scale": prompt.scale,
        "seed": prompt.seed,
        "sample_sampler": prompt.sampler or run_sampler,
    }


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", KOHYA["txt_lines"], ids=lambda case: case["line"][:24])
def test_a_line_reads_as_kohyas_line_to_prompt_dict(case):
    values, unknown = line_values(case["line"])
    kohya = {key: str(value) for key, value in case["prompt_dict"].items()}
    written = {key: value for key, value in values.items() if value}  # kohya drops a bare "--n"
    assert unknown == []
    # Values as written; kohya converts them (and clamps --s), which the next test compares.
    assert written.keys() == kohya.keys()
    assert written["prompt"] == kohya["prompt"]


def test_txt_prompts_draw_what_kohya_draws(tmp_path):
    lines = [case["line"] for case in KOHYA["txt_lines"]]
    path = write(tmp_path, "prompts.txt", "# comment\n\n" + "\n".join(lines) + "\n")
    read = read_prompts(path)
    assert [as_kohya_draws(prompt) for prompt in read.prompts] == [
        case["inference"] for case in KOHYA["txt_lines"]
    ]
    assert [prompt.index for prompt in read.prompts] == list(range(len(lines)))
    portrait = f"{path} line 6"  # the --g --fs --cn --ctr --rcfg line, after the comment and blank line
    assert read.notes == (
        f"{portrait}: --g sets FLUX's embedded guidance, which SD1/SD2/SDXL do not have; ignored",
        f"{portrait}: --fs sets a flow-matching shift, which SD1/SD2/SDXL do not have; ignored",
        f"{portrait}: --cn sets a ControlNet image, which SD1/SD2/SDXL do not have; ignored",
        f"{portrait}: --ctr sets Lumina's CFG truncation, which SD1/SD2/SDXL do not have; ignored",
        f"{portrait}: --rcfg sets Lumina's CFG renormalisation, which SD1/SD2/SDXL do not have; ignored",
    )


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_toml_and_json_prompts_draw_what_kohya_draws(tmp_path, kind):
    path = write(tmp_path, f"prompts.{kind}", KOHYA[kind]["text"])
    read = read_prompts(path)
    assert [as_kohya_draws(prompt) for prompt in read.prompts] == KOHYA[kind]["inference"]
    assert read.notes == ()


def test_toml_entries_override_the_defaults(tmp_path):
    """kohya stops with a TypeError when [prompt] and an entry set the same key; the entry wins here."""
    path = write(
        tmp_path,
        "prompts.toml",
        '[prompt]\nwidth = 640\nsample_steps = 20\n[[prompt.subset]]\nprompt = "a"\nwidth = 256\n',
    )
    (prompt,) = read_prompts(path).prompts
    assert (prompt.width, prompt.steps, prompt.height) == (256, 20, 512)


def test_a1111_random_seed_and_unknown_options(tmp_path):
    path = write(tmp_path, "p.txt", "a cat --d -1 --am 0.5 --w 64\n")
    read = read_prompts(path)
    assert (read.prompts[0].seed, read.prompts[0].width) == (None, 64)
    assert read.notes == (
        f"{path} line 1: --am 0.5 is not one of kohya's sample options (--n --w --h --d --s --l --ss); ignored",
    )
    path = write(tmp_path, "p.json", '[{"prompt": "a", "sample_step": 3}]')
    assert read_prompts(path).notes == (
        f"{path} entry 1: 'sample_step' is not one of kohya's prompt keys (did you mean sample_steps?); ignored",
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "p.txt",
            "a cat --w 7x\n",
            "{path} line 1: --w '7x' is not a whole number of 0 or more; write e.g. --w 768",
        ),
        (
            "p.txt",
            "\na --d x\n",
            "{path} line 2: --d 'x' is not a whole number of -1 (random) or more; write e.g. --d 1234",
        ),
        (
            "p.txt",
            "a --s 2.5\n",
            "{path} line 1: --s '2.5' is not a whole number of 0 or more; write e.g. --s 30",
        ),
        (
            "p.txt",
            "a --l -2\n",
            "{path} line 1: --l '-2' is not a CFG scale (a number of 0 or more); write e.g. --l 7.5",
        ),
        (
            "p.txt",
            "a --ss euler_ancestral\n",
            "{path} line 1: --ss 'euler_ancestral' is not one of kohya's samplers (did you mean euler_a?); use one "
            "of ddim, pndm, lms, euler, euler_a, heun, dpm_2, dpm_2_a, dpmsolver, dpmsolver++, dpmsingle, k_lms, "
            "k_euler, k_euler_a, k_dpm_2, k_dpm_2_a",
        ),
        (
            "p.toml",
            '[prompt]\nheight = 512.5\n[[prompt.subset]]\nprompt = "a"\n',
            "{path} [[prompt.subset]] 1: height 512.5 is not a whole number of 0 or more; write e.g. height = 768",
        ),
        (
            "p.toml",
            '[[prompt]]\nprompt = "a"\n',
            "--sample_prompts {path}: a TOML prompt file holds a [prompt] table (the defaults) and one "
            "[[prompt.subset]] table per prompt",
        ),
        (
            "p.json",
            '{"prompt": "a"}',
            "--sample_prompts {path}: a JSON prompt file holds a list of prompts (strings or tables)",
        ),
        (
            "p.json",
            '["a", 3]',
            "--sample_prompts {path} entry 2: 3 is neither a prompt string nor a table of prompt, "
            "negative_prompt, width, height, seed, sample_steps, scale, sample_sampler",
        ),  # fmt: skip
        ("p.json", '[{"prompt": 3}]', "{path} entry 1: prompt must be text, not 3"),
        (
            "p.txt",
            "# only a comment\n",
            "--sample_prompts {path} holds no prompts; write one prompt a line (lines "
            "starting with # are comments)",
        ),  # fmt: skip
        ("p.yaml", "a", "--sample_prompts {path}: a prompt file is .txt, .toml or .json, not .yaml"),
    ],
)
def test_bad_prompt_files_are_one_line(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(UserError) as caught:
        read_prompts(path)
    assert str(caught.value) == message.format(path=path)


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(UserError) as caught:
        read_prompts(tmp_path / "missing.txt")
    assert str(caught.value) == f"--sample_prompts {tmp_path / 'missing.txt'} does not exist"
    path = write(tmp_path, "p.toml", "[prompt\n")
    with pytest.raises(UserError, match=rf"^--sample_prompts {path} cannot be read: "):
        read_prompts(path)
    with pytest.raises(UserError, match=r"^--prompts .*missing.json does not exist$"):
        read_prompts(tmp_path / "missing.json", flag="--prompts")


def test_the_run_checks_its_prompt_file_only_when_it_samples(tmp_path):
    missing = str(tmp_path / "missing.txt")
    assert check_sample_prompts(SampleOptions(sample_prompts=missing)) is None  # no moment to sample
    with pytest.raises(UserError, match="does not exist"):
        check_sample_prompts(SampleOptions(sample_prompts=missing, sample_every_n_epochs=1))
    path = write(tmp_path, "p.txt", "a cat\n")
    assert (
        check_sample_prompts(SampleOptions(sample_prompts=str(path), sample_at_first=True)).prompts[0].prompt
        == "a cat"
    )
