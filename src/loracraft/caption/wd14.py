"""WD14-family taggers (SmilingWolf's wd-v1-4 and wd-*-v3 and their kin) run with ONNX Runtime.

A tagger folder holds `model.onnx` and `selected_tags.csv` (columns tag_id,name,category,count; one row
per score the model gives). Images are prepared as kohya's `finetune/tag_images_by_wd14_tagger.py`
prepares them: padded to a white square (centred), resized to the model's input size (read from the
ONNX input: 448 for the v1.4 and v3 taggers, other sizes for others; the box filter when shrinking, like
kohya's cv2 INTER_AREA, Lanczos when enlarging), channels in BGR order, float32 0..255, NHWC. The scores
become caption lines by kohya's rules (`tag_rules.py`).

ONNX Runtime comes with the `loracraft[caption]` extra; its CUDA provider with `onnxruntime-gpu`.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from loracraft.caption.model_source import TAGGER_MODEL, TAGGER_TAGS
from loracraft.caption.tag_rules import (
    ImageTags,
    TagRules,
    frequency_lines,
    output_names,
    parse_tag_replacement,
    select_tags,
    split_tag_list,
)
from loracraft.data.images import resize_image
from loracraft.errors import UserError

_CSV_HEADER = ["tag_id", "name", "category"]
_WHITE = (255, 255, 255)
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class TagList:
    """selected_tags.csv: each score's tag name and category, in the model's output order."""

    names: list[str]
    categories: list[int]


@dataclass(frozen=True)
class InputLayout:
    """What the ONNX model takes: its input's name, the square side, and a batch size it fixes (or None)."""

    name: str
    size: int
    fixed_batch: int | None


NO_TAGS = "no tag reached the thresholds; lower --general_threshold (or --thresh) to tag it"


@dataclass
class Tagger:
    """A Captioner: a batch of images -> the tag line kohya's flags make from each image's scores."""

    session: Any
    layout: InputLayout
    tags: TagList
    rules: TagRules
    folder: Path
    batch_size: int
    debug: bool = False
    show_frequencies: bool = False
    frequencies: Counter[str] = field(default_factory=Counter)

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        batch = np.stack([prepare_image(image, self.layout.size) for image in images])
        scores = self._scores(batch)[: len(images)]
        captions: list[str | Exception] = []
        for image, image_scores in zip(images, scores, strict=True):
            # As Python floats, the float32 scores meet the thresholds as under kohya_ss' NumPy 1.x.
            found = select_tags(image_scores.tolist(), self.tags.names, self.tags.categories, self.rules)
            self.frequencies.update(found.counted())
            if self.debug:
                _print_debug(image, found, self.rules.separator)
            if found.tags:
                captions.append(self.rules.separator.join(found.tags))
            else:  # kohya writes an empty caption file, which would train on no words at all
                captions.append(ValueError(NO_TAGS))
        return captions

    def _scores(self, batch: np.ndarray) -> np.ndarray:
        if self.layout.fixed_batch and len(batch) < self.layout.fixed_batch:
            # A model built for a fixed batch takes only whole ones: the last is padded with blank images.
            padding = np.zeros((self.layout.fixed_batch - len(batch), *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, padding])
        scores = self.session.run(None, {self.layout.name: batch})[0]
        if scores.shape[-1] != len(self.tags.names):
            raise UserError(
                f"--model {self.folder}: the ONNX model gives {scores.shape[-1]} scores but {TAGGER_TAGS} "
                f"lists {len(self.tags.names)} tags; the two files come from different taggers"
            )
        return scores

    def report(self) -> list[str]:
        """kohya's `--frequency_tags` table (most frequent first), when asked for."""
        return frequency_lines(self.frequencies) if self.show_frequencies else []


def _print_debug(image: Image.Image, found: ImageTags, separator: str) -> None:
    # tqdm.write keeps the run's progress bar below the lines.
    tqdm.write(f"{image.info.get('path', 'image')}:")
    tqdm.write(f"  rating tags: {found.rating or ''}")
    tqdm.write(f"  character tags: {separator.join(found.characters)}")
    tqdm.write(f"  general tags: {separator.join(found.generals)}")


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """kohya's tagger input for an RGB image: white-padded square, resized, BGR, float32 (size, size, 3)."""
    side = max(image.size)
    square = Image.new("RGB", (side, side), _WHITE)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    pixels = np.asarray(resize_image(square, (size, size)), dtype=np.float32)
    return np.ascontiguousarray(pixels[:, :, ::-1])


def open_tagger(folder: Path, args: argparse.Namespace) -> Tagger:
    """The tagger in `folder` on the device `--device` asks for, with kohya's tag flags applied."""
    ort = _import_onnxruntime()
    model_file = _model_file(folder)
    session = _session(ort, model_file, args.device, folder)
    layout = input_layout(session, folder)
    tags = named_as_asked(read_tag_list(folder / TAGGER_TAGS), args)
    if layout.fixed_batch and layout.fixed_batch != args.batch_size:
        print(f"the tagger's model takes batches of {layout.fixed_batch} images: using that for --batch_size")
    return Tagger(
        session,
        layout,
        tags,
        tag_rules(args),
        folder,
        batch_size=layout.fixed_batch or args.batch_size,
        debug=args.debug,
        show_frequencies=args.frequency_tags,
    )


def named_as_asked(tags: TagList, args: argparse.Namespace) -> TagList:
    """The tag list with the names kohya's flags ask for (character tags expanded, underscores, replacements)."""
    names = output_names(
        tags.names,
        tags.categories,
        expand_characters=args.character_tag_expand,
        remove_underscore=args.remove_underscore,
        replacements=parse_tag_replacement(args.tag_replacement) if args.tag_replacement else (),
        separator=args.caption_separator,
    )
    return TagList(names, tags.categories)


def tag_rules(args: argparse.Namespace) -> TagRules:
    """kohya's tagger flags as rules (a threshold not given is --thresh)."""
    separator = args.caption_separator
    return TagRules(
        general_threshold=args.thresh if args.general_threshold is None else args.general_threshold,
        character_threshold=args.thresh if args.character_threshold is None else args.character_threshold,
        undesired=frozenset(split_tag_list(args.undesired_tags, separator)),
        always_first=tuple(split_tag_list(args.always_first_tags or "", separator)),
        rating_first=args.use_rating_tags,
        rating_last=args.use_rating_tags_as_last_tag,
        characters_first=args.character_tags_first,
        separator=separator,
    )


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "loracraft caption's taggers need ONNX Runtime: pip install 'loracraft[caption]'"
        ) from None
    return onnxruntime


def _model_file(folder: Path) -> Path:
    """`model.onnx`, or the folder's one other ONNX file."""
    if (folder / TAGGER_MODEL).is_file():
        return folder / TAGGER_MODEL
    found = sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        names = ", ".join(path.name for path in found)
        raise UserError(
            f"--model {folder} holds several ONNX models ({names}); keep the tagger's as {TAGGER_MODEL}"
        )
    return found[0]


def providers_for(device: str | None, available: list[str]) -> list:
    """ONNX Runtime's providers for `--device`: CUDA when asked (or, with no --device, when it has one)."""
    match = _DEVICE.match(device or "")
    if device and not match:
        raise UserError(f"--device {device}: the tagger runs on cpu, cuda or cuda:N")
    if device and match.group(1) == "cpu":
        return [_CPU]
    if _CUDA not in available:
        if device:
            raise UserError(
                f"--device {device}: this ONNX Runtime has no CUDA provider; "
                "pip uninstall onnxruntime && pip install onnxruntime-gpu, or use --device cpu"
            )
        return [_CPU]
    options = {"device_id": int(match.group(2))} if match and match.group(2) else {}
    return [(_CUDA, options), _CPU]


def _session(ort, model_file: Path, device: str | None, folder: Path):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

    providers = providers_for(device, ort.get_available_providers())
    try:
        return ort.InferenceSession(str(model_file), providers=providers)
    except (Fail, InvalidGraph, InvalidProtobuf) as error:
        reason = str(error).splitlines()[0]
        raise UserError(
            f"--model {folder}: ONNX Runtime cannot load {model_file.name} ({reason}); download the tagger again"
        ) from None


def input_layout(session, folder: Path) -> InputLayout:
    """The model's input as WD14 taggers take it, (batch, size, size, 3); anything else is one line."""
    model_input = session.get_inputs()[0]
    shape = list(model_input.shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise UserError(
            f"--model {folder}: its ONNX model takes {shape}, not a WD14 tagger's (batch, size, size, 3) "
            "images; pass a WD14 tagger folder"
        )
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return InputLayout(model_input.name, shape[1], fixed_batch)


def read_tag_list(path: Path) -> TagList:
    """selected_tags.csv's names and categories; another kind of file is one line naming it."""
    try:
        with path.open(encoding="utf-8", newline="") as file:
            rows = list(csv.reader(file))
    except UnicodeDecodeError:
        rows = []
    if not rows or rows[0][:3] != _CSV_HEADER:
        raise UserError(
            f"{path} is not a WD14 tag list (its first line should be tag_id,name,category,count); "
            "download the tagger's selected_tags.csv again"
        )
    try:
        return TagList([row[1] for row in rows[1:]], [int(row[2]) for row in rows[1:]])
    except (IndexError, ValueError):
        raise UserError(
            f"{path}: a row without a name and a whole-number category; download the tagger's "
            f"{TAGGER_TAGS} again"
        ) from None
