"""BLIP, BLIP-2, GIT and Florence-2 captioners: a transformers model and its processor, read from a folder.

Generation follows kohya's `finetune/make_captions.py`: `--beam_search` searches `--num_beams` beams,
otherwise nucleus sampling with `--top_p` (and kohya's repetition penalty of 1.1 for it), except GIT, which
decodes greedily without --beam_search as kohya's `make_captions_by_git.py` does; the torch seed
is set once to `--seed` when the model is ready, as kohya seeds once per run, so a run is repeatable.
`--max_length` and `--min_length` count the caption's own tokens (kohya's also counted its BLIP prompt and
start token): kohya's defaults, BLIP 75 and GIT 50 (`make_captions_by_git.py`), and 256 for the others.

`--prompt` is text the model continues (BLIP conditional captioning, BLIP-2, GIT); the caption is what
the model writes after it. BLIP continues kohya's prompt, "a picture of ", when none is given (kohya's
BLIP did, and cut it off the caption); `--prompt ""` captions unconditionally. Florence-2 takes its
`--task` instead, and its processor turns the answer into text (`post_process_generation`).
`--remove_words` cuts the phrases kohya's GIT captioner removes ("with the words ...", "that says ...").
A caption is written on one line, since kohya trains on a caption file's first line only.

The images of a batch go through the processor and `generate` together, on `--device` (the GPU when there
is one) in fp16 on CUDA. Florence-2 is native in transformers 4.56 and newer; the original
remote-code release (microsoft/Florence-2-*) is refused by model_source, since it would run the
repository's code.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loracraft.caption.model_source import ModelKind
from loracraft.errors import UserError
from loracraft.tools.tool_parser import compute_device

KOHYA_BLIP_PROMPT = "a picture of "
DEFAULT_MAX_LENGTH = {ModelKind.BLIP: 75, ModelKind.GIT: 50, ModelKind.BLIP2: 256, ModelKind.FLORENCE2: 256}
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
# Florence2ForConditionalGeneration arrived in transformers 4.56.0.
FLORENCE_TRANSFORMERS = "4.56"
# kohya's make_captions.py samples with this repetition penalty.
SAMPLING_REPETITION_PENALTY = 1.1
_MODEL_CLASSES = {
    ModelKind.BLIP: "BlipForConditionalGeneration",
    ModelKind.BLIP2: "Blip2ForConditionalGeneration",
    ModelKind.GIT: "GitForCausalLM",
    ModelKind.FLORENCE2: "Florence2ForConditionalGeneration",
}
# kohya's make_captions_by_git.py: GIT reads made-up text off signs; these phrases are cut from captions.
_SIGN_TEXT = [
    re.compile(r'(has|with|and) the (words?|letters?|name) (" ?[^"]*"|\w+)( ?(is )?(on|in) (the |her |their |him )?\w+)?'),
    re.compile(r'(with a sign )?that says ?(" ?[^"]*"|\w+)( ?on it)?'),
    re.compile(r"(with a sign )?that says ?(' ?(i'm)?[^']*'|\w+)( ?on it)?"),
    re.compile(r"with the number \d+ on (it|\w+ \w+)"),
    re.compile(r'with the words "'),
    re.compile(r"word \w+ on it"),
    re.compile(r"that says the word \w+ on it"),
    re.compile("that says'the word \"( on it)?"),
]  # fmt: skip


@dataclass(frozen=True)
class Generation:
    """How captions are generated: kohya's beam search or nucleus sampling, and the caption's length."""

    beam_search: bool
    num_beams: int
    top_p: float
    max_new_tokens: int
    min_new_tokens: int

    sample: bool = True

    def generate_kwargs(self) -> dict[str, Any]:
        length = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens}
        if self.beam_search:
            return {**length, "do_sample": False, "num_beams": self.num_beams}
        if not self.sample:
            return {**length, "do_sample": False, "num_beams": 1}
        # num_beams=1: a model's own generation config (Florence-2's asks for 3) would make it beam sampling.
        return {
            **length,
            "do_sample": True,
            "top_p": self.top_p,
            "num_beams": 1,
            "repetition_penalty": SAMPLING_REPETITION_PENALTY,
        }


def generation_from_flags(args: argparse.Namespace, kind: ModelKind) -> Generation:
    """The generation the flags ask for, each value that cannot work refused in one line."""
    max_length = DEFAULT_MAX_LENGTH[kind] if args.max_length is None else args.max_length
    if max_length < 1:
        raise UserError(f"--max_length {max_length}: use 1 or more (tokens in a caption)")
    if args.min_length < 0:
        raise UserError(f"--min_length {args.min_length}: use 0 or more")
    if not args.beam_search and not 0 < args.top_p <= 1:
        raise UserError(f"--top_p {args.top_p:g}: use a share above 0 and at most 1 (kohya's default 0.9)")
    # The default --min_length 5 with a short --max_length asks for no more than the caption may hold.
    # kohya's make_captions_by_git.py decodes greedily (it has no sampling flags); its BLIP script samples.
    sample = kind is not ModelKind.GIT
    return Generation(
        args.beam_search, args.num_beams, args.top_p, max_length, min(args.min_length, max_length), sample
    )


def remove_sign_text(caption: str) -> str:
    """`caption` without the phrases kohya's GIT captioner removes (`--remove_words`)."""
    for pattern in _SIGN_TEXT:
        caption = pattern.sub("", caption)
    return caption.strip()


@dataclass
class TransformersCaptioner:
    """One loaded captioning model, its processor and the generation settings of the run."""

    kind: ModelKind
    processor: Any
    model: Any
    device: torch.device
    dtype: torch.dtype
    generation: Generation
    prompt: str | None
    task: str
    remove_words: bool
    batch_size: int

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        inputs = self._inputs(images)
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **self.generation.generate_kwargs())
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"the GPU ran out of memory captioning {len(images)} images at once; lower --batch_size "
                "or use --device cpu"
            ) from None
        texts = self._decode(output, inputs, images)
        return [remove_sign_text(text) if self.remove_words else text for text in texts]

    def _inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """The model's inputs for a batch: the images, and the prompt (or Florence-2's task) for each."""
        if self.kind is ModelKind.FLORENCE2:
            inputs = self.processor(images=images, text=[self.task] * len(images), return_tensors="pt")
        elif self.kind is ModelKind.GIT:
            inputs = self.processor(images=images, return_tensors="pt")
            if self.prompt:
                inputs["input_ids"] = self._git_prompt_ids(len(images))
        else:
            text = [self.prompt] * len(images) if self.prompt else None
            inputs = self.processor(images=images, text=text, return_tensors="pt")
        return {
            name: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            for name, value in inputs.items()
        }

    def _git_prompt_ids(self, count: int) -> torch.Tensor:
        """GIT continues its start token and the prompt, with no end-of-text mark after it (as GIT's own
        question answering does)."""
        tokenizer = self.processor.tokenizer
        ids = [tokenizer.cls_token_id, *tokenizer(self.prompt, add_special_tokens=False).input_ids]
        return torch.tensor([ids] * count)

    def _decode(
        self, output: torch.Tensor, inputs: dict[str, torch.Tensor], images: list[Image.Image]
    ) -> list[str]:
        if self.kind is ModelKind.FLORENCE2:
            texts = self.processor.batch_decode(output, skip_special_tokens=True)
            return [
                self.processor.post_process_generation(text, task=self.task, image_size=image.size)[self.task]
                for text, image in zip(texts, images, strict=True)
            ]
        written = _without_echo(output, self._echoed_prefix(inputs))
        return self.processor.batch_decode(written, skip_special_tokens=True)

    def _echoed_prefix(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The tokens a decoder-only generation starts its output with: what the model was fed."""
        input_ids = inputs.get("input_ids")
        if input_ids is None or self.kind is not ModelKind.BLIP:
            return input_ids
        # BLIP's generate feeds its text decoder the prompt with its start token in place of [CLS] and
        # without the closing [SEP].
        fed = input_ids[:, :-1].clone()
        fed[:, 0] = self.model.config.text_config.bos_token_id
        return fed


def _without_echo(output: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """The tokens the model wrote: `output` without the prompt it repeats at its start. Older
    transformers' BLIP-2 (4.44) returns only the new tokens after a start token, so the prompt is cut
    only where the output does begin with it."""
    if prefix is None or output.shape[1] < prefix.shape[1]:
        return output
    if torch.equal(output[:, : prefix.shape[1]], prefix.to(output.device)):
        return output[:, prefix.shape[1] :]
    return output


def open_transformers_captioner(
    folder: Path, kind: ModelKind, args: argparse.Namespace
) -> TransformersCaptioner:
    """The `kind` model in `folder` loaded on the flags' device, ready to caption."""
    name = args.model or str(folder)
    generation = generation_from_flags(args, kind)
    prompt, task = _prompt_and_task(kind, args)
    device = compute_device(args.device) if args.device else _default_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    processor, model = _load(folder, kind, name, dtype)
    try:
        model.to(device)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"--model {name} does not fit in the memory of {device}; use --device cpu") from None
    torch.manual_seed(args.seed)
    return TransformersCaptioner(
        kind, processor, model, device, dtype, generation, prompt, task, args.remove_words, args.batch_size
    )


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prompt_and_task(kind: ModelKind, args: argparse.Namespace) -> tuple[str | None, str]:
    """The text the model continues (None: none) and Florence-2's task, refused in one line if unusable."""
    if kind is ModelKind.FLORENCE2:
        if args.prompt:
            raise UserError(
                f"--prompt is not used by Florence-2, which takes --task ({', '.join(FLORENCE_TASKS)}); "
                "leave --prompt out"
            )
        if args.task not in FLORENCE_TASKS:
            raise UserError(
                f"--task {args.task}: a caption comes from {', '.join(FLORENCE_TASKS)}; use one of them"
            )
        return None, args.task
    prompt = KOHYA_BLIP_PROMPT if kind is ModelKind.BLIP and args.prompt is None else args.prompt
    return (prompt if prompt and prompt.strip() else None), args.task


def _load(folder: Path, kind: ModelKind, name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The processor and model in `folder`; a folder that does not load is one line naming it."""
    import transformers

    model_class = getattr(transformers, _MODEL_CLASSES[kind], None)
    # Only Florence-2's class is missing from a transformers loracraft installs with.
    if model_class is None:
        raise UserError(
            f"--model {name} is {kind.value}, which needs transformers {FLORENCE_TRANSFORMERS} or newer "
            f"(this is {transformers.__version__}): pip install -U transformers"
        )
    dtype_keyword = "torch_dtype" if _older_than(transformers.__version__, "4.56") else "dtype"
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder)
        model = model_class.from_pretrained(folder, **{dtype_keyword: dtype})
    except Exception as error:  # noqa: BLE001 - any failure reading the folder means its files are broken
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--model {name}: the {kind.value} model in {folder} does not load ({reason}); download it "
            "again (--force_download for a hub id)"
        ) from None
    return processor, model.eval()


def _older_than(version: str, minimum: str) -> bool:
    from packaging.version import Version

    return Version(version) < Version(minimum)
