"""`loracraft caption DIR --model FOLDER` with tiny random BLIP, BLIP-2, GIT and Florence-2 models.

Each caption file is checked against the model itself: the test loads the folder with transformers,
seeds torch and calls `generate` with kohya's settings for the flags given (nucleus sampling with top_p
0.9 and repetition penalty 1.1, or beam search), decodes the answer the way each model's documentation
does (Florence-2 through `post_process_generation`) and cuts the prompt off the decoded text, as kohya
cut its BLIP prompt, on one line (kohya trains on a caption file's first line). What the tiny models say means nothing; that it is exactly what `generate` says is
the point. Then the flags' effects (prompt, seed, beams, length, batches, kohya's GIT word removal) and
each bad input: one line, and no caption written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from caption_models import HAS_FLORENCE2, NO_FLORENCE2, save_caption_model, write_images
from loracraft.caption.model_source import ModelKind
from loracraft.caption.transformers_captioner import remove_sign_text
from loracraft.errors import UserError
from loracraft.tools.caption import main

KINDS = [
    ModelKind.BLIP,
    ModelKind.BLIP2,
    ModelKind.GIT,
    pytest.param(ModelKind.FLORENCE2, marks=pytest.mark.skipif(not HAS_FLORENCE2, reason=NO_FLORENCE2)),
]
PROMPTED = [ModelKind.BLIP, ModelKind.BLIP2, ModelKind.GIT]
MODEL_CLASSES = {
    ModelKind.BLIP: "BlipForConditionalGeneration",
    ModelKind.BLIP2: "Blip2ForConditionalGeneration",
    ModelKind.GIT: "GitForCausalLM",
    ModelKind.FLORENCE2: "Florence2ForConditionalGeneration",
}
# kohya's defaults: make_captions.py (BLIP 75, its prompt "a picture of "), make_captions_by_git.py (50).
KOHYA_MAX_LENGTH = {ModelKind.BLIP: 75, ModelKind.GIT: 50, ModelKind.BLIP2: 256, ModelKind.FLORENCE2: 256}
KOHYA_BLIP_PROMPT = "a picture of "
FLORENCE_TASK = "<DETAILED_CAPTION>"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[ModelKind, Path]:
    root = tmp_path_factory.mktemp("caption-models")
    kinds = [kind for kind in MODEL_CLASSES if kind is not ModelKind.FLORENCE2 or HAS_FLORENCE2]
    return {kind: save_caption_model(kind, root / kind.name.lower()) for kind in kinds}


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return write_images(tmp_path / "img")


def run(images: list[Path], model: Path, *flags: str) -> dict[str, str]:
    """`loracraft caption` on the images' folder on the CPU; each image's caption file text."""
    assert main([str(images[0].parent), "--model", str(model), "--device", "cpu", *flags]) == 0
    return {path.name: path.with_suffix(".txt").read_text(encoding="utf-8").strip() for path in images}


def reference(
    kind: ModelKind,
    model_dir: Path,
    images: list[Path],
    *,
    prompt: str | None = None,
    beams: int | None = None,
    max_new_tokens: int | None = None,
    min_new_tokens: int = 5,
    seed: int = 42,
    batch_size: int = 1,
    device: str = "cpu",
) -> dict[str, str]:
    """What transformers' own `generate` writes for each image with the settings the flags stand for
    (on CUDA with the model and the pixels in fp16)."""
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(model_dir).to(device, dtype).eval()
    settings = {"max_new_tokens": max_new_tokens or KOHYA_MAX_LENGTH[kind], "min_new_tokens": min_new_tokens}
    if beams:
        settings |= {"do_sample": False, "num_beams": beams}
    elif kind is ModelKind.GIT:  # kohya's GIT script decodes greedily
        settings |= {"do_sample": False, "num_beams": 1}
    else:
        settings |= {"do_sample": True, "top_p": 0.9, "num_beams": 1, "repetition_penalty": 1.1}
    torch.manual_seed(seed)
    captions = {}
    for start in range(0, len(images), batch_size):
        paths = images[start : start + batch_size]
        pictures = [Image.open(path).convert("RGB") for path in paths]
        with torch.no_grad():
            texts = _generate(kind, processor, model, pictures, prompt, settings, dtype)
        captions |= {path.name: on_one_line(text) for path, text in zip(paths, texts, strict=True)}
    return captions


def on_one_line(text: str) -> str:
    """A caption file's text: whitespace runs (line breaks too) as one space, control characters gone."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda found: " " if found[0].isspace() else "", text)
    return re.sub(r"\s+", " ", text).strip()


def placed(inputs, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The processor's tensors on the model's device, the pixels in its dtype (transformers 4.44's
    BatchEncoding.to takes no dtype)."""
    return {
        name: value.to(device, dtype) if value.is_floating_point() else value.to(device)
        for name, value in inputs.items()
    }


def _generate(kind, processor, model, pictures, prompt, settings, dtype) -> list[str]:
    count = len(pictures)
    if kind is ModelKind.FLORENCE2:
        inputs = processor(images=pictures, text=[FLORENCE_TASK] * count, return_tensors="pt")
        inputs = placed(inputs, model.device, dtype)
        texts = processor.batch_decode(model.generate(**inputs, **settings), skip_special_tokens=True)
        return [
            processor.post_process_generation(text, task=FLORENCE_TASK, image_size=picture.size)[
                FLORENCE_TASK
            ]
            for text, picture in zip(texts, pictures, strict=True)
        ]
    if kind is ModelKind.GIT:
        # GIT's documented prompting: its [CLS] start token, then the prompt's tokens.
        inputs = processor(images=pictures, return_tensors="pt")
        if prompt:
            ids = [
                processor.tokenizer.cls_token_id,
                *processor.tokenizer(prompt, add_special_tokens=False).input_ids,
            ]
            inputs["input_ids"] = torch.tensor([ids] * count)
    else:
        inputs = processor(images=pictures, text=[prompt] * count if prompt else None, return_tensors="pt")
    inputs = placed(inputs, model.device, dtype)
    texts = processor.batch_decode(model.generate(**inputs, **settings), skip_special_tokens=True)
    if not prompt:
        return texts
    # kohya cut its BLIP prompt off the decoded caption; older transformers' BLIP-2 never repeats it.
    said = processor.tokenizer.decode(processor.tokenizer(prompt).input_ids, skip_special_tokens=True).strip()
    return [text.strip().removeprefix(said) for text in texts]


def kohya_prompt(kind: ModelKind) -> str | None:
    return KOHYA_BLIP_PROMPT if kind is ModelKind.BLIP else None


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_each_kind_writes_what_its_generate_writes(kind, models, images, capsys):
    captions = run(images, models[kind])
    assert captions == reference(kind, models[kind], images, prompt=kohya_prompt(kind))
    assert all(captions.values())
    assert "captioned 3 images (3 written)" in capsys.readouterr().out


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_beam_search_searches_num_beams(kind, models, images):
    captions = run(images, models[kind], "--beam_search", "--num_beams", "3", "--max_length", "30")
    expected = reference(kind, models[kind], images, prompt=kohya_prompt(kind), beams=3, max_new_tokens=30)
    assert captions == expected


@pytest.mark.parametrize("kind", PROMPTED, ids=lambda kind: kind.name)
def test_the_prompt_is_continued_and_cut_off_the_caption(kind, models, images):
    greedy = ["--beam_search", "--max_length", "30", "--overwrite"]
    prompted = run(images, models[kind], "--prompt", "a photo of", *greedy)
    assert prompted == reference(kind, models[kind], images, prompt="a photo of", beams=1, max_new_tokens=30)
    # --prompt "" is BLIP's unconditional captioning (kohya's prompt otherwise).
    plain = run(images, models[kind], "--prompt", "", *greedy)
    assert plain == reference(kind, models[kind], images, beams=1, max_new_tokens=30)
    assert prompted != plain


def test_a_seed_repeats_a_run_and_another_seed_changes_it(models, images):
    blip = models[ModelKind.BLIP]
    first = run(images, blip)
    assert run(images, blip, "--overwrite") == first
    other = run(images, blip, "--overwrite", "--seed", "7")
    assert other == reference(ModelKind.BLIP, blip, images, prompt=kohya_prompt(ModelKind.BLIP), seed=7)
    assert other != first


@pytest.mark.parametrize("kind", [ModelKind.BLIP, ModelKind.GIT], ids=lambda kind: kind.name)
def test_max_length_counts_the_caption_tokens(kind, models, images):
    # The default --min_length 5 cannot ask for more than --max_length allows.
    captions = run(images, models[kind], "--max_length", "3")
    expected = reference(
        kind, models[kind], images, prompt=kohya_prompt(kind), max_new_tokens=3, min_new_tokens=3
    )
    assert captions == expected
    tokenizer = transformers.AutoProcessor.from_pretrained(models[kind]).tokenizer
    # Each word of the tiny vocabulary is one token; special tokens the model wrote are not text.
    assert all(
        0 < len(tokenizer(text, add_special_tokens=False).input_ids) <= 3 for text in captions.values()
    )
    longer = run(images, models[kind], "--max_length", "12", "--min_length", "12", "--overwrite")
    assert any(len(tokenizer(text, add_special_tokens=False).input_ids) > 3 for text in longer.values())


@pytest.mark.parametrize(
    "kind",
    [
        ModelKind.BLIP2,
        pytest.param(ModelKind.FLORENCE2, marks=pytest.mark.skipif(not HAS_FLORENCE2, reason=NO_FLORENCE2)),
    ],
    ids=lambda kind: kind.name,
)
def test_a_batch_of_two_goes_through_generate_together(kind, models, images):
    captions = run(images, models[kind], "--batch_size", "2", "--max_length", "24")
    assert captions == reference(kind, models[kind], images, batch_size=2, max_new_tokens=24)


@pytest.mark.parametrize(
    ("caption", "kohya"),
    [
        ('a sign with the words "open late" on it', "a sign"),
        ("a red shirt that says hello on it", "a red shirt"),
        ("a cake with the number 30 on top of it", "a cake  it"),
        ("a woman holding a sign that says 'i'm here'", "a woman holding a sign"),
        ("a book cover with the name john smith in the corner", "a book cover  smith in the corner"),
        ('a poster with the words "', "a poster"),
        ("a sticker and the letters abc on her laptop", "a sticker"),
        ("a blue car parked on a street", "a blue car parked on a street"),
    ],
)
def test_remove_words_cuts_what_kohyas_git_captioner_cuts(caption, kohya):
    # The right-hand sides are kohya's make_captions_by_git.py remove_words() outputs, ends stripped.
    assert remove_sign_text(caption) == kohya


def test_an_unreadable_image_is_named_and_the_others_are_captioned(models, images, capsys):
    (images[0].parent / "broken.png").write_bytes(b"not a png")
    assert main([str(images[0].parent), "--model", str(models[ModelKind.GIT]), "--device", "cpu"]) == 1
    assert all(path.with_suffix(".txt").read_text().strip() for path in images)
    assert not (images[0].parent / "broken.txt").exists()
    captured = capsys.readouterr()
    assert "broken.png" in captured.out
    assert "1 of 4 images could not be captioned (broken.png)" in captured.err


def refused(images: list[Path], model: Path, *flags: str) -> str:
    """The one line `loracraft caption` stops with; no caption file is written."""
    with pytest.raises(UserError) as caught:
        main([str(images[0].parent), "--model", str(model), "--device", "cpu", *flags])
    assert not list(images[0].parent.glob("*.txt"))
    message = str(caught.value)
    assert "\n" not in message
    return message


def broken_copy(model: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "damaged-model"
    shutil.copytree(model, copy)
    damage(copy / "model.safetensors")
    return copy


def test_a_model_whose_weights_are_cut_short_is_named_with_the_fix(models, images, tmp_path):
    def truncate(weights: Path) -> None:
        weights.write_bytes(weights.read_bytes()[:1000])

    folder = broken_copy(models[ModelKind.GIT], tmp_path, truncate)
    message = refused(images, folder)
    assert message.startswith(f"--model {folder}: the GIT model in {folder} does not load (")
    assert message.endswith("download it again (--force_download for a hub id)")


def test_a_model_without_weights_is_named_with_the_fix(models, images, tmp_path):
    folder = broken_copy(models[ModelKind.BLIP], tmp_path, Path.unlink)
    message = refused(images, folder)
    assert f"the BLIP model in {folder} does not load" in message
    assert "download it again" in message


def florence_config(folder: Path, **extra) -> Path:
    """A Florence-2 folder as far as the checks before loading read it: its config.json."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "florence2", **extra}))
    return folder


def test_florence2_on_an_old_transformers_says_which_version_and_how(images, tmp_path, monkeypatch):
    if HAS_FLORENCE2:
        monkeypatch.setattr(transformers, "Florence2ForConditionalGeneration", None)
        monkeypatch.setattr(transformers, "__version__", "4.44.0")
    message = refused(images, florence_config(tmp_path / "florence"))
    assert message == (
        f"--model {tmp_path / 'florence'} is Florence-2, which needs transformers 4.56 or newer "
        f"(this is {transformers.__version__}): pip install -U transformers"
    )


@pytest.mark.skipif(not HAS_FLORENCE2, reason=NO_FLORENCE2)
def test_florence2s_remote_code_release_points_at_its_conversion(images, tmp_path):
    folder = florence_config(
        tmp_path / "florence", auto_map={"AutoConfig": "configuration_florence2.Florence2Config"}
    )
    message = refused(images, folder)
    assert "Florence-2's original release, which runs its own code" in message
    assert "florence-community/Florence-2-large" in message


def test_florence2_takes_only_caption_tasks_and_no_prompt(images, tmp_path):
    folder = florence_config(tmp_path / "florence")
    message = refused(images, folder, "--task", "<OD>")
    assert (
        message
        == "--task <OD>: a caption comes from <CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>; use one of them"
    )
    assert refused(images, folder, "--prompt", "describe").startswith("--prompt is not used by Florence-2")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--max_length", "0"], "--max_length 0: use 1 or more (tokens in a caption)"),
        (["--min_length", "-1"], "--min_length -1: use 0 or more"),
        (["--top_p", "0"], "--top_p 0: use a share above 0 and at most 1 (kohya's default 0.9)"),
    ],
)
def test_generation_values_that_cannot_work_are_refused(flags, expected, models, images):
    assert refused(images, models[ModelKind.GIT], *flags) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_device_on_a_machine_without_one_is_refused(models, images):
    with pytest.raises(UserError, match="--device cuda: this machine has no such CUDA device"):
        main([str(images[0].parent), "--model", str(models[ModelKind.GIT]), "--device", "cuda"])
    assert not list(images[0].parent.glob("*.txt"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_on_cuda_each_kind_runs_in_fp16_as_its_generate_does(kind, models, images):
    # No --device: the GPU is taken when there is one.
    assert main([str(images[0].parent), "--model", str(models[kind]), "--max_length", "24"]) == 0
    captions = {path.name: path.with_suffix(".txt").read_text(encoding="utf-8").strip() for path in images}
    assert all(captions.values())
    expected = reference(
        kind, models[kind], images, prompt=kohya_prompt(kind), max_new_tokens=24, device="cuda"
    )
    assert captions == expected
