"""The one interface every captioner offers the caption run, and the choice of captioner for a command.

A captioner takes a batch of decoded images and gives, per image, its caption or the exception that
image met (the run names the image and goes on). An exception raised for the whole batch is a failure of
each image in it; a `UserError` raised by a captioner (an endpoint that cannot be reached, a model that
cannot run) stops the run in its one line, with what was written so far kept.

Which captioner: `--endpoint` asks an OpenAI-compatible server; otherwise `--model` (a folder or a hub id;
kohya's tagger default when none is given) is found by `model_source` and its files say what it is: an
ONNX tagger with its selected_tags.csv, or a transformers model whose config names BLIP, BLIP-2, GIT or
Florence-2.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from PIL import Image


class Captioner(Protocol):
    #: How many images the run hands over at once (--batch_size; an endpoint's --concurrency).
    batch_size: int

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        """One caption (or the exception it met) per image, in order."""
        ...


def open_captioner(args: argparse.Namespace) -> Captioner:
    """The captioner the parsed `loracraft caption` flags ask for, ready to run."""
    if args.endpoint:
        from loracraft.caption.endpoint import open_endpoint_captioner

        return open_endpoint_captioner(args)
    from loracraft.caption.model_source import ModelKind, find_model

    model = find_model(args)
    if model.kind is ModelKind.TAGGER:
        from loracraft.caption.wd14 import open_tagger

        return open_tagger(model.folder, args)
    from loracraft.caption.transformers_captioner import open_transformers_captioner

    return open_transformers_captioner(model.folder, model.kind, args)
